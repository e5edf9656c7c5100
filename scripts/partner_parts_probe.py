"""Which parts of the partner's motion does a model's own jaw depend on? For each checkpoint, the jaw~own
speech correlation of its streamed predictions (n = 7) when the partner's motion keeps only some parts
(the rest unobserved: zeros, or NaN for a model with absence codes, as `timar eval --partner-motion pose|none`
does for the whole face; such a model takes a partly observed face as unobserved).

    python scripts/partner_parts_probe.py CKPT [CKPT ...] [--data data/synth-v2/test] [--clips 4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from timar_model.data.partner_motion import absent_fill
from timar_model.eval import evaluate
from timar_model.model.checkpoint import load_pretrained
from timar_model.motion import HEAD_ROT
from timar_model.runtime.streaming import StreamingGenerator

EXP, JAW, HEAD = list(range(50)), [50, 51, 52], list(range(56)[HEAD_ROT])
VIEWS = {"full": EXP + JAW + HEAD, "jaw only": JAW, "head + jaw": HEAD + JAW, "exp + head (no jaw)": EXP + HEAD,
         "none": []}


class PartsView:
    """A sample whose partner motion keeps only the columns `keep` (the metrics still use the real one)."""

    def __init__(self, sample, keep: list[int], fill: float):
        self._sample, self._keep, self._fill = sample, keep, fill

    def __getattr__(self, name: str):
        return getattr(self._sample, name)

    @property
    def user_motion(self) -> np.ndarray:
        m = np.asarray(self._sample.user_motion)
        out = np.full_like(m, self._fill)
        out[:, self._keep] = m[:, self._keep]
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--data", type=Path, default=Path("data/synth-v2/test"))
    ap.add_argument("--clips", type=int, default=4)
    args = ap.parse_args()
    samples = evaluate.load_split(args.data, args.clips)
    for ckpt in args.checkpoints:
        model = load_pretrained(ckpt)
        fill = absent_fill(model.config)
        for name, keep in VIEWS.items():
            predict = evaluate.generator_predictor(StreamingGenerator(model, seed=0))
            view = lambda s, t, p=predict, k=keep, f=fill: p(PartsView(s, k, f), t)  # noqa: E731
            r = evaluate.evaluate_predictor(view, samples, None, 7)
            print(f"{ckpt}  {name:20s} jaw~speech {r.mean['jaw_speech_pred']:.3f}", flush=True)


if __name__ == "__main__":
    main()
