"""Improved-DDPM Gaussian diffusion as used by MAR / TIMAR.

Cosine schedule, the network predicts x0 (first C outputs) and a learned-range variance (last C outputs),
loss = part-wise MSE on x0 + variational bound, sampling respaced to a few steps ("5" keeps original steps
0, 250, 500, 749, 999; the network sees the original index). Coefficients are float64 numpy arrays that are
gathered and cast to float32, as in the public code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from timar_model.motion import PARTS

# net(x_t (N, C), t (N,) original step index, c (N, Dz)) -> (N, 2C)
NetFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

# x0 loss parts of a 56-d motion frame: expression, jaw, head rotation
MOTION_PARTS = tuple(PARTS.values())


def cosine_betas(num_steps: int, max_beta: float = 0.999) -> np.ndarray:
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array(
        [
            min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta)
            for i in range(num_steps)
        ],
        dtype=np.float64,
    )


def linear_betas(num_steps: int) -> np.ndarray:
    scale = 1000 / num_steps
    return np.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=np.float64)


def space_timesteps(num_steps: int, section_counts: str | Sequence[int]) -> list[int]:
    """Original step indices kept by respacing (IDDPM `space_timesteps`)."""
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired = int(section_counts[len("ddim") :])
            for stride in range(1, num_steps):
                if len(range(0, num_steps, stride)) == desired:
                    return sorted(range(0, num_steps, stride))
            raise ValueError(f"cannot create exactly {desired} steps with an integer stride")
        section_counts = [int(x) for x in section_counts.split(",")] if section_counts else [num_steps]
    size_per = num_steps // len(section_counts)
    extra = num_steps % len(section_counts)
    start_idx = 0
    all_steps: set[int] = set()
    for i, section_count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < section_count:
            raise ValueError(f"cannot divide section of {size} steps into {section_count}")
        frac_stride = 1 if section_count <= 1 else (size - 1) / (section_count - 1)
        cur_idx = 0.0
        for _ in range(section_count):
            all_steps.add(start_idx + round(cur_idx))
            cur_idx += frac_stride
        start_idx += size
    return sorted(all_steps)


def normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + ((mean1 - mean2) ** 2) * torch.exp(-logvar2)
    )


def _approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


class GaussianDiffusion:
    """x0-predicting, learned-range-variance diffusion over `len(timestep_map)` (respaced) steps."""

    def __init__(
        self, base_betas: np.ndarray, use_timesteps: Sequence[int] | None = None, clamp_variance: bool = False
    ):
        self.clamp_variance = clamp_variance  # sampling: learned-range output clamped to [-1, 1]
        base_alphas_cumprod = np.cumprod(1.0 - base_betas)
        if use_timesteps is None:
            use_timesteps = range(len(base_betas))
        self.timestep_map = sorted(use_timesteps)  # respaced index -> original index
        last, betas = 1.0, []
        for i in self.timestep_map:
            betas.append(1 - base_alphas_cumprod[i] / last)
            last = base_alphas_cumprod[i]
        betas = np.array(betas, dtype=np.float64)
        self.betas = betas
        self.num_timesteps = len(betas)
        ac = np.cumprod(1.0 - betas)
        ac_prev = np.append(1.0, ac[:-1])
        self.alphas_cumprod = ac
        self.sqrt_alphas_cumprod = np.sqrt(ac)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - ac)
        self.posterior_variance = betas * (1.0 - ac_prev) / (1.0 - ac)
        self.posterior_log_variance_clipped = (
            np.log(np.append(self.posterior_variance[1], self.posterior_variance[1:]))
            if self.num_timesteps > 1
            else np.log(betas)
        )
        self.posterior_mean_coef1 = betas * np.sqrt(ac_prev) / (1.0 - ac)
        self.posterior_mean_coef2 = (1.0 - ac_prev) * np.sqrt(1.0 - betas) / (1.0 - ac)
        self.log_betas = np.log(betas)
        self._map = torch.tensor(self.timestep_map, dtype=torch.long)
        # per device: the coefficient tables (and _map) copied there once, not at every sampling step (a host
        # to GPU copy per call waits for the GPU)
        self._on_device: dict[tuple[int, torch.device], tuple[object, torch.Tensor]] = {}

    def _table(self, arr: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
        key = (id(arr), device)
        hit = self._on_device.get(key)
        if hit is None or hit[0] is not arr:  # (the identity check makes a reused id harmless)
            hit = (arr, (torch.from_numpy(arr) if isinstance(arr, np.ndarray) else arr).to(device))
            self._on_device[key] = hit
        return hit[1]

    def _extract(self, arr: np.ndarray, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # (N,) float64 coefficients at t -> float32 (N, 1, ...) broadcastable to x
        res = self._table(arr, t.device)[t].float()
        return res.view(-1, *([1] * (x.dim() - 1)))

    def original_t(self, t: torch.Tensor) -> torch.Tensor:
        return self._table(self._map, t.device)[t]

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return (
            self._extract(self.sqrt_alphas_cumprod, t, x_start) * x_start
            + self._extract(self.sqrt_one_minus_alphas_cumprod, t, x_start) * noise
        )

    def q_posterior(self, x_start, x_t, t):
        mean = (
            self._extract(self.posterior_mean_coef1, t, x_t) * x_start
            + self._extract(self.posterior_mean_coef2, t, x_t) * x_t
        )
        return mean, self._extract(self.posterior_log_variance_clipped, t, x_t)

    def output_to_mean_variance(self, model_output: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> dict:
        # model_output: (N, 2C) = [x0 | v in [-1, 1]] -> p(x_{t-1} | x_t) statistics (no clipping of x0)
        C = x.shape[1]
        pred_xstart, var_values = model_output.float().split(C, dim=1)
        min_log = self._extract(self.posterior_log_variance_clipped, t, x)
        max_log = self._extract(self.log_betas, t, x)
        frac = (var_values + 1) / 2
        log_variance = frac * max_log + (1 - frac) * min_log
        mean, _ = self.q_posterior(pred_xstart, x, t)
        return {
            "mean": mean,
            "variance": torch.exp(log_variance),
            "log_variance": log_variance,
            "pred_xstart": pred_xstart,
        }

    def p_mean_variance(self, net: NetFn, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> dict:
        """t: (N,) respaced step indices; the net is called with the original indices. With clamp_variance the
        variance output is limited to [-1, 1] (sampling only; training_losses never clamps)."""
        out = net(x, self.original_t(t), c)
        if self.clamp_variance:
            C = x.shape[1]
            out = torch.cat([out[:, :C], out[:, C:].clamp(-1.0, 1.0)], dim=1)
        return self.output_to_mean_variance(out, x, t)

    def training_losses(
        self,
        net: NetFn,
        x_start: torch.Tensor,
        t: torch.Tensor,
        c: torch.Tensor,
        noise: torch.Tensor | None = None,
    ) -> dict:
        """Per-row loss (N,) = sum of part-wise x0 MSEs + VB (bits) with the mean prediction frozen."""
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise)
        out = net(x_t, self.original_t(t), c)
        C = x_start.shape[1]
        pred_xstart, var_values = out.split(C, dim=1)
        frozen = self.output_to_mean_variance(torch.cat([pred_xstart.detach(), var_values], dim=1), x_t, t)
        true_mean, true_log_var = self.q_posterior(x_start, x_t, t)
        kl = normal_kl(true_mean, true_log_var, frozen["mean"], frozen["log_variance"]).mean(1) / math.log(
            2.0
        )
        nll = -discretized_gaussian_log_likelihood(
            x_start, frozen["mean"], 0.5 * frozen["log_variance"]
        ).mean(1) / math.log(2.0)
        vb = torch.where(t == 0, nll, kl)
        if C == sum(b - a for a, b in MOTION_PARTS):
            mse = sum(((x_start[:, a:b] - pred_xstart[:, a:b]) ** 2).mean(1) for a, b in MOTION_PARTS)
        else:
            mse = ((x_start - pred_xstart) ** 2).mean(1)
        return {"loss": mse + vb, "mse": mse, "vb": vb}

    @torch.no_grad()
    def p_sample_loop(
        self,
        net: NetFn,
        c: torch.Tensor,
        channels: int,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """Ancestral sampling. noise: (num_timesteps + 1, N, C) explicit draws [x_T, one per step] or None
        (then drawn from `generator`, in that same order). Returns x_0 (N, C)."""
        N = c.shape[0]
        steps = self.num_timesteps
        if noise is not None and noise.shape != (steps + 1, N, channels):
            raise ValueError(
                f"p_sample_loop: noise must be ({steps + 1}, {N}, {channels}), got {tuple(noise.shape)}"
            )

        if noise is not None:
            noise = noise.to(device=c.device, dtype=torch.float32)  # one copy, not one per step

        def draw(i: int) -> torch.Tensor:
            if noise is not None:
                return noise[i]
            return torch.randn(
                N, channels, generator=generator, device=c.device if generator is None else generator.device
            ).to(c.device)

        x = draw(0)
        for k, i in enumerate(reversed(range(steps))):
            t = torch.full((N,), i, dtype=torch.long, device=c.device)
            out = self.p_mean_variance(net, x, t, c)
            eps = draw(k + 1)
            if i > 0:
                x = out["mean"] + torch.exp(0.5 * out["log_variance"]) * eps * temperature
            else:
                x = out["mean"]
        return x


def create_diffusion(
    timestep_respacing: str | Sequence[int] = "",
    noise_schedule: str = "cosine",
    diffusion_steps: int = 1000,
    clamp_variance: bool = False,
) -> GaussianDiffusion:
    if noise_schedule == "cosine":
        betas = cosine_betas(diffusion_steps)
    elif noise_schedule == "linear":
        betas = linear_betas(diffusion_steps)
    else:
        raise ValueError(f"create_diffusion: unknown noise_schedule {noise_schedule!r}")
    if timestep_respacing in ("", None):
        timestep_respacing = [diffusion_steps]
    return GaussianDiffusion(betas, space_timesteps(diffusion_steps, timestep_respacing), clamp_variance)
