"""What a trained TIMAR reads from its backbone, and how its diffusion head samples (the model card's
diagnostics). On `--windows` 8-turn test windows (every agent-motion position masked, as in streaming):

- spread of the backbone output z across frames after the final LayerNorm (per channel, averaged), and the
  largest per-channel constant before it: a collapsed z is one vector for every frame;
- ridge probe z -> ground-truth jaw opening (fit on half the frames, R on the other half): is the jaw there?
- the head: its x0 prediction at t = 999 (R with the jaw), the range of its learned-range variance output,
  and T = 1 samples with and without clamp_variance (jaw spread / data spread, R with the jaw).

    python scripts/probe_model.py models/timar-small-synth [--data data/synth/test] [--windows 24]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from timar_model.data.dualtalk import DualTalkWindows
from timar_model.model.checkpoint import load_pretrained
from timar_model.model.diffusion import create_diffusion
from timar_model.model.timar import AGENT_MOTION

JAW = 50  # jaw opening in the 56-d motion vector [exp 50 | jaw 3 | head 3]


def corr(a, b) -> float:
    return float(np.corrcoef(np.asarray(a), np.asarray(b))[0, 1])


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--data", default="data/synth/test")
    ap.add_argument("--windows", type=int, default=24)
    args = ap.parse_args()
    torch.manual_seed(0)
    m = load_pretrained(args.model).float().eval()
    ds = DualTalkWindows(args.data, window_turns=m.config.context_turns, audio_norm=m.config.audio_norm,
                         stride_turns=m.config.context_turns)
    pre_norm: list[torch.Tensor] = []
    m.encoder_norm.register_forward_hook(lambda mod, i, o: pre_norm.append(i[0][0]))
    Z, Y, P = [], [], []
    for i in np.linspace(0, len(ds) - 1, min(args.windows, len(ds))).astype(int):
        b = {k: v[None] for k, v in ds[int(i)].items()}
        tokens = m.interleave(m.encode_speech(b["user_speech"]), m.encode_motion(b["user_motion"]),
                              m.encode_speech(b["agent_speech"]), m.encode_motion(b["agent_motion"]))
        agent = m.window_types(tokens.shape[1]) == AGENT_MOTION
        z = m.forward_backbone(tokens, agent)[0]
        Z.append(z[agent])
        P.append(pre_norm[-1][agent])
        Y.append(m.motion_to_model(b["agent_motion"])[0])
    Z, Y, P = torch.cat(Z), torch.cat(Y), torch.cat(P)
    print(f"backbone: per-channel spread across frames after the final norm {m.encoder_norm(P).std(0).mean():.3f}; "
          f"largest per-channel constant before it {P.mean(0).abs().max():.1f}")
    n = len(Z)
    zb = np.c_[Z.numpy(), np.ones(n)]
    half = n // 2
    w = np.linalg.solve(zb[:half].T @ zb[:half] + 0.1 * np.eye(zb.shape[1]), zb[:half].T @ Y[:half, JAW].numpy())
    print(f"ridge probe z -> jaw: R {corr(zb[half:] @ w, Y[half:, JAW]):.2f}")
    if m.config.head != "diffusion":
        print(f"MLP head: R with the jaw {corr(m.mlp_head(Z)[:, JAW], Y[:, JAW]):.2f}")
        return
    net = m.diffloss.net
    x0 = net(torch.randn(n, 56), torch.full((n,), 999), Z)[:, :56]
    print(f"head x0 at t=999: R with the jaw {corr(x0[:, JAW], Y[:, JAW]):.2f}")
    for t in (0, 250, 500, 749, 999):
        v = net(torch.randn(n, 56), torch.full((n,), t), Z)[:, 56:]
        print(f"  variance output at t={t}: mean {v.mean():.2f}, range [{v.min():.2f}, {v.max():.2f}]")
    for clamp in (False, True):
        diffusion = create_diffusion(m.config.num_sampling_steps, m.config.noise_schedule, clamp_variance=clamp)
        s = m.diffloss.sample(Z, 1.0, generator=torch.Generator().manual_seed(0), diffusion=diffusion)
        print(f"T=1 samples, clamp_variance={clamp}: jaw spread / data {s[:, JAW].std() / Y[:, JAW].std():.2f}, "
              f"R with the jaw {corr(s[:, JAW], Y[:, JAW]):.2f}")


if __name__ == "__main__":
    main()
