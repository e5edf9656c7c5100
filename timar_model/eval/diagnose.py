"""`timar diagnose`: what a trained TIMAR reads from its backbone, and how its diffusion head samples (the
model card's diagnostics). On `--windows` test windows of the model's length (every agent-motion position
masked, as in streaming):

- spread of the backbone output z across frames after the final LayerNorm (per channel, averaged), and the
  largest per-channel constant before it: a collapsed z is one vector for every frame;
- ridge probe z -> ground-truth jaw opening (fit on half the frames, R on the other half): is the jaw there?
- the head: its x0 prediction at the last training timestep (R with the jaw), the range of its learned-range
  variance output, and temperature-1 samples with and without clamp_variance (jaw spread / data spread,
  R with the jaw).

    timar diagnose models/timar-small-synth [--data data/synth/test] [--windows 24]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from timar_model.eval.metrics import pcc
from timar_model.motion import JAW, MOTION_DIM

JAW_OPENING = JAW.start  # the jaw's rotation about x: how far the mouth opens
RIDGE = 0.1  # ridge penalty of the z -> jaw probe
VARIANCE_STEPS = (0.0, 0.25, 0.5, 0.75, 1.0)  # where on the training schedule the variance output is read


def model_windows(model, data: Path):
    """The split's windows of the model's length, one after the other (no overlap)."""
    from timar_model.data.dualtalk import DualTalkWindows

    turns = model.config.context_turns
    return DualTalkWindows(data, window_turns=turns, audio_norm=model.config.audio_norm, stride_turns=turns)


def masked_backbone_outputs(model, windows, indices) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """At every agent frame of the windows `indices`, every agent-motion position masked: the backbone output
    z (N, Wz), the input of its final LayerNorm (N, Wz) and the agent's raw ground-truth motion (N, 56)."""
    from timar_model.model.timar import AGENT_MOTION

    captured: list[torch.Tensor] = []
    hook = model.encoder_norm.register_forward_hook(lambda mod, inputs, out: captured.append(inputs[0][0]))
    z, pre_norm, motion = [], [], []
    try:
        for i in indices:
            b = {k: v[None] for k, v in windows[int(i)].items()}
            tokens = model.interleave(
                model.encode_speech(b["user_speech"]), model.encode_motion(b["user_motion"]),
                model.encode_speech(b["agent_speech"]), model.encode_motion(b["agent_motion"]))
            agent = model.window_types(tokens.shape[1]) == AGENT_MOTION
            z.append(model.forward_backbone(tokens, agent)[0][agent])
            pre_norm.append(captured[-1][agent])
            captured.clear()
            motion.append(b["agent_motion"][0])
    finally:
        hook.remove()
    return torch.cat(z), torch.cat(pre_norm), torch.cat(motion)


def last_timestep(model) -> int:
    """The last timestep of the diffusion head's training schedule, where x_t is pure noise."""
    return model.diffloss.train_diffusion.num_timesteps - 1


def head_regression(model, z: torch.Tensor) -> torch.Tensor:
    """The diffusion head's x0 prediction at the last timestep: its own estimate of E[x | z], in the model's
    motion space (N, 56)."""
    t = torch.full((len(z),), last_timestep(model))
    return model.diffloss.net(torch.randn(len(z), MOTION_DIM), t, z)[:, :MOTION_DIM]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="model directory (config.json + model.safetensors)")
    parser.add_argument("--data", type=Path, default=Path("data/synth/test"), help="split (DualTalk layout)")
    parser.add_argument("--windows", type=int, default=24, help="windows spread evenly over the split")


@torch.no_grad()
def run(args: argparse.Namespace) -> int:
    from timar_model.model.checkpoint import load_pretrained
    from timar_model.model.diffusion import create_diffusion

    torch.manual_seed(0)
    m = load_pretrained(args.model).float().eval()
    windows = model_windows(m, args.data)
    indices = np.linspace(0, len(windows) - 1, min(args.windows, len(windows))).astype(int)
    Z, P, motion = masked_backbone_outputs(m, windows, indices)
    Y = m.motion_to_model(motion)
    print(f"backbone: per-channel spread across frames after the final norm {m.encoder_norm(P).std(0).mean():.3f}; "
          f"largest per-channel constant before it {P.mean(0).abs().max():.1f}")
    n = len(Z)
    zb = np.c_[Z.numpy(), np.ones(n)]
    half = n // 2
    w = np.linalg.solve(zb[:half].T @ zb[:half] + RIDGE * np.eye(zb.shape[1]),
                        zb[:half].T @ Y[:half, JAW_OPENING].numpy())
    print(f"ridge probe z -> jaw: R {pcc(zb[half:] @ w, Y[half:, JAW_OPENING]):.2f}")
    if m.config.head != "diffusion":
        print(f"MLP head: R with the jaw {pcc(m.mlp_head(Z)[:, JAW_OPENING], Y[:, JAW_OPENING]):.2f}")
        return 0
    x0 = head_regression(m, Z)
    last = last_timestep(m)
    print(f"head x0 at t={last}: R with the jaw {pcc(x0[:, JAW_OPENING], Y[:, JAW_OPENING]):.2f}")
    for t in (round(f * last) for f in VARIANCE_STEPS):
        v = m.diffloss.net(torch.randn(n, MOTION_DIM), torch.full((n,), t), Z)[:, MOTION_DIM:]
        print(f"  variance output at t={t}: mean {v.mean():.2f}, range [{v.min():.2f}, {v.max():.2f}]")
    for clamp in (False, True):
        diffusion = create_diffusion(m.config.num_sampling_steps, m.config.noise_schedule, clamp_variance=clamp)
        s = m.diffloss.sample(Z, 1.0, generator=torch.Generator().manual_seed(0), diffusion=diffusion)
        print(f"T=1 samples, clamp_variance={clamp}: jaw spread / data "
              f"{s[:, JAW_OPENING].std() / Y[:, JAW_OPENING].std():.2f}, R with the jaw "
              f"{pcc(s[:, JAW_OPENING], Y[:, JAW_OPENING]):.2f}")
    return 0
