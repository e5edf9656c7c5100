"""`timar metrics --pred DIR --gt DIR [--json out.json] [--csv out.csv]`

DualTalk metrics for predictions made by any system: PRED holds `<clip>_speaker{1,2}.npy` (T', 56)
arrays; GT is a split in the DualTalk layout (`<clip>_speaker{1,2}.npz`). The partner of a
prediction is the other speaker of the same clip. Prints the table in the published scaling and
writes per-sample and mean values (unscaled) to JSON / CSV.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path

import numpy as np

from timar_model.eval import metrics
from timar_model.motion import MOTION_DIM

_PRED_RE = re.compile(r"^(?P<clip>.+)_speaker(?P<spk>[12])\.npy$")


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"ground truth not found: {path}")
    with np.load(path) as d:
        for key in ("exp", "pose"):
            if key not in d.files:
                raise ValueError(f"{path}: missing key '{key}' (has {sorted(d.files)})")
        return d["exp"], d["pose"]


def evaluate_dir(pred_dir: str | Path, gt_dir: str | Path) -> dict[str, dict[str, float]]:
    """Per-sample metrics {"<clip>_speaker<k>": metric dict} for every prediction in pred_dir."""
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    for d, what in ((pred_dir, "prediction"), (gt_dir, "ground-truth")):
        if not d.is_dir():
            raise FileNotFoundError(f"{what} directory not found: {d}")
    preds = sorted(p for p in pred_dir.iterdir() if _PRED_RE.match(p.name))
    if not preds:
        raise FileNotFoundError(f"{pred_dir}: no <clip>_speaker1/2.npy predictions")
    results: dict[str, dict[str, float]] = {}
    for p in preds:
        m = _PRED_RE.match(p.name)
        clip, spk = m["clip"], int(m["spk"])
        pred = np.load(p)
        if pred.ndim != 2 or pred.shape[1] != MOTION_DIM:
            raise ValueError(f"{p}: prediction must have shape (T, {MOTION_DIM}), got {pred.shape}")
        gt_exp, gt_pose = _load_npz(gt_dir / f"{clip}_speaker{spk}.npz")
        partner_exp, partner_pose = _load_npz(gt_dir / f"{clip}_speaker{3 - spk}.npz")
        try:
            results[p.stem] = metrics.dualtalk_metrics(pred, gt_exp, gt_pose, partner_exp, partner_pose)
        except ValueError as e:
            raise ValueError(f"{p}: {e}") from e
    return results


def write_csv(path: str | Path, per_sample: dict[str, dict[str, float]], mean: dict[str, float]) -> None:
    keys = list(mean)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sample", *keys])
        for name, vals in per_sample.items():
            w.writerow([name, *(repr(vals[k]) for k in keys)])
        w.writerow(["mean", *(repr(mean[k]) for k in keys)])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", required=True, help="directory of <clip>_speaker{1,2}.npy predictions")
    parser.add_argument("--gt", required=True, help="DualTalk-layout split dir (npz ground truth)")
    parser.add_argument("--json", default=None, help="write per-sample and mean metrics (unscaled) here")
    parser.add_argument("--csv", default=None, help="write per-sample and mean metrics (unscaled) here")
    parser.add_argument("--name", default=None, help="row name in the table (default: the pred dir name)")


def run(args: argparse.Namespace) -> int:
    per_sample = evaluate_dir(args.pred, args.gt)
    mean = metrics.aggregate(list(per_sample.values()))
    name = args.name or Path(args.pred).name
    print(f"{len(per_sample)} predictions from {args.pred} against {args.gt}")
    print(metrics.format_table({name: mean}))
    if args.json:
        Path(args.json).write_text(json.dumps({"mean": mean, "per_sample": per_sample,
                                               "scaled_mean": metrics.scale_published(mean),
                                               "scale": metrics.PUBLISHED_SCALE}, indent=1))
    if args.csv:
        write_csv(args.csv, per_sample, mean)
    return 0
