"""`timar jaw-budget`: where TIMAR's MSE-jaw comes from, next to the MLP-head ablation's, on the windows of
a split (the model's window length, no overlap).

    timar jaw-budget runs/small-synthetic/final --mlp runs/small-synthetic-mlp/final \
        [--data data/synth-val/test] [--temperatures 1,0.7,0.5,0.3]

Prints MSE-jaw (the published scaling; mean over the jaw channels) of:
- the synthetic corpus's own rule (`timar_model.data.synth`) as a predictor, when the split has a
  manifest.json next to it: knowing each speaker's jaw_gain / jaw_lag (only the rule's noise is left), and
  with the training range's mid gain / lag (what a model that cannot see the speaker's style can reach);
- the MLP head on the backbone output z (when `--mlp` shares the model's backbone, as with the two-stage
  recipe; the backbone is checked parameter by parameter);
- the diffusion head's own regression: its x0 prediction at the last training timestep (x_t is then pure
  noise, so this is its estimate of E[x | z]);
- diffusion samples at each temperature (the configured number of steps), and their mean squared distance
  to that x0 (the spread the sampler adds).
A sampler whose spread matches the data pays that spread on top of the regression's error; a regressor
does not. The streaming evaluation (`timar eval`) gives slightly different absolute values (whole
clips, turn by turn) but the same ordering.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from timar_model.eval.diagnose import (
    JAW_OPENING,
    head_regression,
    last_timestep,
    masked_backbone_outputs,
    model_windows,
)
from timar_model.eval.metrics import PUBLISHED_SCALE
from timar_model.motion import JAW, MOTION_DIM

JAW_SCALE = PUBLISHED_SCALE["mse_jaw"]


def mse_jaw(pred: np.ndarray, gt: np.ndarray) -> float:
    """MSE over the jaw channels in the published scaling; (N, 56) raw FLAME units."""
    return float(np.mean((pred[:, JAW] - gt[:, JAW]) ** 2) * JAW_SCALE)


def rule_floors(split: Path) -> dict[str, float] | None:
    """MSE-jaw of the corpus rule as a predictor, with each speaker's own jaw_gain / jaw_lag and with the
    middle of the training ranges; None without a manifest (not a `timar synth` corpus)."""
    import soundfile as sf

    from timar_model.data.synth import TRAIN_RANGES, delay, envelope

    manifest = split.parent / "manifest.json"
    if not manifest.is_file():
        return None
    doc = json.loads(manifest.read_text())
    mid = {k: 0.5 * (TRAIN_RANGES[k][0] + TRAIN_RANGES[k][1]) for k in ("jaw_gain", "jaw_lag")}
    errs: dict[str, list[float]] = {"own gain / lag": [], "mid-range gain / lag": []}
    for clip in doc["clips"]:
        if clip["split"] != split.name:
            continue
        for k, style in enumerate(clip["styles"], start=1):
            audio, sr = sf.read(split / f"{clip['clip']}_speaker{k}.wav")
            gt = np.load(split / f"{clip['clip']}_speaker{k}.npz")["pose"][:, 3:]
            env = envelope(np.asarray(audio, np.float64))[: len(gt)]
            for name, s in (("own gain / lag", style), ("mid-range gain / lag", mid)):
                pred = np.zeros((len(env), MOTION_DIM))
                pred[:, JAW_OPENING] = np.clip(s["jaw_gain"] * delay(env, s["jaw_lag"]), 0.0, 0.3)
                full = np.zeros((len(env), MOTION_DIM))
                full[:, JAW] = gt[: len(env)]
                errs[name].append(mse_jaw(pred, full))
    return {k: float(np.mean(v)) for k, v in errs.items() if v}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="TIMAR model directory (diffusion head)")
    parser.add_argument("--mlp", type=Path, help="MLP-head model directory (the ablation) sharing the backbone")
    parser.add_argument("--data", type=Path, default=Path("data/synth-val/test"), help="split (DualTalk layout)")
    parser.add_argument("--temperatures", default="1,0.7,0.5,0.3", help="sampling temperatures (comma list)")
    parser.add_argument("--seed", type=int, default=0)


@torch.no_grad()
def run(args: argparse.Namespace) -> int:
    from timar_model.model.checkpoint import load_pretrained
    from timar_model.model.diffusion import create_diffusion

    torch.manual_seed(args.seed)
    m = load_pretrained(args.model).float().eval()
    if m.config.head != "diffusion":
        raise SystemExit(f"{args.model}: head is {m.config.head!r}, expected the diffusion head")
    floors = rule_floors(args.data)
    if floors:
        for name, v in floors.items():
            print(f"corpus rule, {name}: MSE-jaw {v:.3f}")

    windows = model_windows(m, args.data)
    Z, _, motion = masked_backbone_outputs(m, windows, range(len(windows)))
    gt = motion.numpy()
    n = len(Z)
    raw = m.motion_from_model  # the model's (normalised) space -> raw FLAME units
    print(f"{len(windows)} windows of {m.config.context_turns} turns from {args.data} ({n} agent frames)")

    if args.mlp:
        mlp = load_pretrained(args.mlp).float().eval()
        own = dict(m.named_parameters())
        shared = [k for k, v in mlp.named_parameters() if not k.startswith(("mlp_head", "diffloss"))]
        same = all(k in own and torch.equal(own[k], v) for k, v in mlp.named_parameters() if k in shared)
        if not same:
            raise SystemExit(f"--mlp {args.mlp}: its backbone differs from {args.model}'s (not the same stage 1)")
        print(f"MLP head (regression on the same z):           MSE-jaw {mse_jaw(raw(mlp.mlp_head(Z)).numpy(), gt):.3f}")
    x0 = head_regression(m, Z)
    print(f"diffusion head, x0 at t={last_timestep(m)} (its regression):   MSE-jaw {mse_jaw(raw(x0).numpy(), gt):.3f}")
    diffusion = create_diffusion(m.config.num_sampling_steps, m.config.noise_schedule,
                                 clamp_variance=m.config.clamp_variance)
    for t in (float(x) for x in args.temperatures.split(",")):
        s = m.diffloss.sample(Z, t, generator=torch.Generator().manual_seed(args.seed), diffusion=diffusion)
        spread = float(((raw(s) - raw(x0))[:, JAW] ** 2).mean() * JAW_SCALE)
        print(f"diffusion samples, temperature {t:g}:  MSE-jaw {mse_jaw(raw(s).numpy(), gt):.3f}  "
              f"(spread about x0 {spread:.3f})")
    return 0
