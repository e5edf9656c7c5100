"""MAR-style per-token diffusion head (SimpleMLPAdaLN + DiffLoss) and the MLP-head ablation."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from timar_model.model.diffusion import MOTION_PARTS, create_diffusion


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(N,) timesteps -> (N, dim) sinusoidal embedding, cos half then sin half."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.freq_dim))


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.in_ln = nn.LayerNorm(channels, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(channels, channels), nn.SiLU(), nn.Linear(channels, channels))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 3 * channels))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(modulate(self.in_ln(x), shift, scale))


class FinalLayer(nn.Module):
    def __init__(self, channels: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(channels, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(channels, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 2 * channels))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class SimpleMLPAdaLN(nn.Module):
    """net(x (N, in), t (N,), c (N, z)) -> (N, out)."""

    def __init__(
        self, in_channels: int, model_channels: int, out_channels: int, z_channels: int, num_res_blocks: int
    ):
        super().__init__()
        self.time_embed = TimestepEmbedder(model_channels)
        self.cond_embed = nn.Linear(z_channels, model_channels)
        self.input_proj = nn.Linear(in_channels, model_channels)
        self.res_blocks = nn.ModuleList([ResBlock(model_channels) for _ in range(num_res_blocks)])
        self.final_layer = FinalLayer(model_channels, out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.time_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.time_embed.mlp[2].weight, std=0.02)
        for block in self.res_blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for lin in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        x = self.input_proj(x)  # (N, w)
        y = self.time_embed(t) + self.cond_embed(c)  # (N, w)
        for block in self.res_blocks:
            x = block(x, y)
        return self.final_layer(x, y)  # (N, out)


class DiffLoss(nn.Module):
    """Diffusion loss / sampler over `target_channels` conditioned on z (N, z_channels)."""

    def __init__(
        self,
        target_channels: int,
        z_channels: int,
        depth: int,
        width: int,
        num_sampling_steps: str = "5",
        noise_schedule: str = "cosine",
        clamp_variance: bool = False,
    ):
        super().__init__()
        self.in_channels = target_channels
        self.net = SimpleMLPAdaLN(target_channels, width, 2 * target_channels, z_channels, depth)
        self.train_diffusion = create_diffusion("", noise_schedule)
        self.gen_diffusion = create_diffusion(num_sampling_steps, noise_schedule, clamp_variance=clamp_variance)
        self.noise_schedule = noise_schedule

    def forward(
        self,
        target: torch.Tensor,
        z: torch.Tensor,
        mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        # target (N, C), z (N, Dz), mask (N,) float/bool: 1 where the loss counts
        t = torch.randint(
            0,
            self.train_diffusion.num_timesteps,
            (target.shape[0],),
            device=target.device,
            generator=generator,
        )
        noise = torch.randn(target.shape, device=target.device, generator=generator)
        loss = self.train_diffusion.training_losses(self.net, target, t, z, noise=noise)["loss"]  # (N,)
        if mask is not None:
            mask = mask.to(loss.dtype)
            return (loss * mask).sum() / mask.sum().clamp(min=1.0)
        return loss.mean()

    @torch.no_grad()
    def sample(
        self,
        z: torch.Tensor,
        temperature: float = 1.0,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        diffusion=None,
    ) -> torch.Tensor:
        """z (N, Dz) -> x0 (N, C). noise: explicit draws (steps + 1, N, C)."""
        diffusion = diffusion or self.gen_diffusion
        return diffusion.p_sample_loop(
            self.net, z, self.in_channels, noise=noise, generator=generator, temperature=temperature
        )


class MLPHead(nn.Sequential):
    """Ablation: Linear(width -> width/2), GELU, Linear(-> 56); loss = MSE(exp) + MSE(jaw) + MSE(pose).
    Parameter names `mlp_head.{0,2}.*` as in the public code."""

    def __init__(self, width: int, out_channels: int):
        super().__init__(nn.Linear(width, width // 2), nn.GELU(), nn.Linear(width // 2, out_channels))

    def loss(self, z: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # z (N, Dz), target (N, C), mask (N,) bool
        pred, gt = self(z[mask]), target[mask]
        if pred.shape[1] == sum(b - a for a, b in MOTION_PARTS):
            return sum(F.mse_loss(pred[:, a:b], gt[:, a:b]) for a, b in MOTION_PARTS)
        return F.mse_loss(pred, gt)
