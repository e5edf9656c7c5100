"""Does a model's streamed jaw follow its own speech frame by frame, or only who is speaking? For each
checkpoint, the correlation of the jaw opening at frame t with the agent's speech envelope at frame t - L, for
lags L in frames (25 fps), beside the ground truth's. A jaw that follows syllables peaks at L = 1 (the corpus's
jaw lag) and falls off by L = 12 (half a second) as the truth does; one that only knows the speaking state
stays flat across L = 0 .. 12; one that mixes in the same frame of earlier turns rises at L = 25.
The last column is the jaw's standard deviation over the truth's (0: a constant jaw). Also printed per
checkpoint: the mean norm of the speech tokens as they enter the backbone (after z_proj) over
that of the position codes added to them (TimarConfig.logmel_out_norm keeps it near 1).

    python scripts/jaw_lag_probe.py CKPT [CKPT ...] [--data data/synth-v2/test] [--clips 6] [--history 0,7] \
        [--partner-motion full|pose|none]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from timar_model.data.partner_motion import PARTNER_MOTION_MODES
from timar_model.eval import evaluate
from timar_model.eval.metrics import jaw_opening, speech_envelope
from timar_model.model.checkpoint import load_pretrained
from timar_model.runtime.streaming import StreamingGenerator

LAGS = (0, 1, 2, 6, 12, 25, 50)


def lag_correlation(x: np.ndarray, e: np.ndarray, lag: int) -> float:
    """Pearson correlation of x[t] with e[t - lag]."""
    a, b = x[lag:], e[: len(e) - lag]
    return float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")


def token_scale(model, audio: np.ndarray) -> float:
    """Mean norm of z_proj(speech tokens) over the mean norm of the position codes."""
    spt = model.config.samples_per_turn
    x = torch.as_tensor(audio[: len(audio) // spt * spt], dtype=torch.float32)[None]
    with torch.no_grad():
        tokens = model.z_proj(model.encode_speech(x)[0])
        pos = model.encoder_pos_embed_learned.detach()[0]
        return float(tokens.norm(dim=1).mean() / pos.norm(dim=1).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--data", type=Path, default=Path("data/synth-v2/test"))
    ap.add_argument("--clips", type=int, default=6)
    ap.add_argument("--history", default="0,7", help="comma-separated n (turns of history)")
    ap.add_argument("--partner-motion", default="full", choices=PARTNER_MOTION_MODES,
                    help="what the model sees of the partner's motion (timar eval --partner-motion)")
    args = ap.parse_args()
    samples = evaluate.load_split(args.data, args.clips)
    print("lag (frames)             " + " ".join(f"{lag:>6d}" for lag in LAGS) + "  std/GT")
    truth, truth_std = [], []
    for s in samples:
        turns = len(s.agent_motion) // 25
        e = speech_envelope(np.asarray(s.agent_audio))[: turns * 25]
        jaw = jaw_opening(np.asarray(s.agent_motion)[: turns * 25])
        truth.append([lag_correlation(jaw, e, L) for L in LAGS])
        truth_std.append(jaw.std())
    print(f"{'ground truth':24s} " + " ".join(f"{v:+.3f}" for v in np.nanmean(truth, 0)) + "   1.000")
    for ckpt in args.checkpoints:
        model = load_pretrained(ckpt)
        print(f"{ckpt}: speech tokens / position codes {token_scale(model, np.asarray(samples[0].agent_audio)):.2f}")
        for n in (int(x) for x in args.history.split(",")):
            gen = StreamingGenerator(model, seed=0, context_turns=n + 1, partner_motion=args.partner_motion)
            rows, ratio = [], []
            for s, gt_std in zip(samples, truth_std):
                turns = len(s.agent_motion) // 25
                jaw = jaw_opening(evaluate.stream_sample(gen, s, turns))
                e = speech_envelope(np.asarray(s.agent_audio))[: turns * 25]
                rows.append([lag_correlation(jaw, e, L) for L in LAGS])
                ratio.append(jaw.std() / gt_std)
            print(f"{ckpt.parent.name + f' n={n}':24s} " + " ".join(f"{v:+.3f}" for v in np.nanmean(rows, 0))
                  + f"   {np.mean(ratio):.3f}", flush=True)


if __name__ == "__main__":
    main()
