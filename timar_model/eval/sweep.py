"""`timar sweep`: sampling sweep of a TIMAR model on a validation split: streaming evaluation (`timar eval`)
at each temperature and noise correlation, one table and one figure of the metrics that move with them.

    timar sweep runs/small-synthetic/final --data data/synth-val/test \
        [--temperatures 0.3,0.4,0.5,0.6,0.7,1.0] [--noise-correlations 0,0.9] [--history 7] \
        [--reference outputs/temperature-sweep/mlp-head] [--out outputs/temperature-sweep]

The temperature scales the fresh noise of every diffusion step (not x_T), as in MAR and the public TIMAR
(which evaluates at 1.0). The noise correlation is the frame-to-frame correlation of that noise
(`noise_correlation` in the model config; 0 = independent per token, as the public code). Each setting's
evaluation is kept in OUT/t<T>-r<rho>/ and skipped when it exists. Writes OUT/sweep.csv, OUT/sweep.md and
OUT/sweep.png, and prints the setting with the lowest FD-exp, the paper's headline metric, and the pick
for a model's defaults (`pick()`: a smoother head for at most `--fd-tolerance` more FD-exp). `--reference`
adds a finished `timar eval` folder (e.g. the MLP-head ablation) as a horizontal line. Every evaluation uses
the model's `head_smoothing` (a low-pass of the head rotation output) unless `--head-smoothing` sets one for
the whole sweep (then its folders are OUT/t<T>-r<rho>-h<a>/). Sweep on a split
that is not the test split: `timar synth OUT --seed 1 --splits test` makes one with new clips from the
training distribution.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

from timar_model.eval import evaluate
from timar_model.eval.metrics import PUBLISHED_SCALE

# (key, label): DualTalk metrics in the published scaling, then the extras of `timar eval` unscaled
PLOTTED = (
    ("fid_exp", "FD-exp"),
    ("p_fid_exp", "P-FD-exp"),
    ("mse_jaw", "MSE-jaw x1e3"),
    ("p_fid_pose", "P-FD-pose x1e2"),
    ("sid_exp", "SID-exp"),
    ("head_speed_ratio", "head speed / GT"),
)


def parse_values(text: str, name: str, upper: float = math.inf) -> list[float]:
    """Comma list -> sorted distinct floats in [0, upper); a clear error otherwise."""
    values = sorted({float(t) for t in text.split(",") if t.strip()})
    if not values or any(not 0 <= v < upper for v in values):
        raise ValueError(f"{name}: need values in [0, {upper:g}), got {text!r}")
    return values


def row(metrics_json: Path, history: int) -> dict[str, float]:
    """The plotted metrics of one `timar eval` output at n = `history` (published scaling where it applies)."""
    doc = json.loads(metrics_json.read_text())
    res = doc["contexts"].get(f"n{history}")
    if res is None:
        raise KeyError(f"{metrics_json}: no n={history} results (evaluate with --history {history})")
    return {k: res["published"][k] if k in PUBLISHED_SCALE else res["mean"].get(k, float("nan")) for k, _ in PLOTTED}


def pick(rows: dict[tuple[float, float], dict[str, float]], fd_tolerance: float) -> tuple[float, float]:
    """The sampling defaults: the largest noise correlation whose best FD-exp is within `fd_tolerance`
    (relative) of the best FD-exp of the least correlated setting, then the temperature with the lowest
    FD-exp at that correlation. Smoother heads for a bounded loss in FD-exp."""
    best = {r: min(v["fid_exp"] for (t, q), v in rows.items() if q == r) for r in {q for _, q in rows}}
    limit = best[min(best)] * (1.0 + fd_tolerance)
    rho = max(r for r, fd in best.items() if fd <= limit)
    temp = min((t for t, q in rows if q == rho), key=lambda t: rows[t, rho]["fid_exp"])
    return temp, rho


def run_eval(checkpoint: Path, data: Path, temperature: float, rho: float, history: int, out: Path,
             head_smoothing: float | None = None) -> None:
    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    argv = ["--checkpoint", str(checkpoint), "--data", str(data), "--history", str(history),
            "--temperature", str(temperature), "--noise-correlation", str(rho), "--out", str(out)]
    if head_smoothing is not None:
        argv += ["--head-smoothing", str(head_smoothing)]
    evaluate.run(parser.parse_args(argv))


Setting = tuple[float, float]  # (temperature, noise correlation)


def plot(rows: dict[Setting, dict[str, float]], reference: dict[str, float] | None, ref_name: str, path: Path,
         title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rhos = sorted({r for _, r in rows})
    fig, axes = plt.subplots(2, 3, figsize=(11, 6), constrained_layout=True)
    for ax, (key, label) in zip(axes.flat, PLOTTED):
        for rho in rhos:
            temps = sorted(t for t, r in rows if r == rho)
            ax.plot(temps, [rows[t, rho][key] for t in temps], "o-", label=f"TIMAR, noise corr. {rho:g}")
        if reference is not None and math.isfinite(reference.get(key, float("nan"))):
            ax.axhline(reference[key], color="gray", ls="--", label=ref_name)
        if key == "head_speed_ratio":
            ax.axhline(1.0, color="green", ls=":", label="ground truth")
        ax.set_title(label)
        ax.set_xlabel("temperature")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="model directory (config.json + model.safetensors)")
    parser.add_argument("--data", type=Path, required=True, help="validation split (DualTalk layout)")
    parser.add_argument("--temperatures", default="0.3,0.4,0.5,0.6,0.7,1.0", help="sampling temperatures (comma list)")
    parser.add_argument("--noise-correlations", default="0", help="frame-to-frame noise correlations in [0, 1)")
    parser.add_argument("--history", type=int, default=7, help=evaluate.HISTORY_HELP)
    parser.add_argument("--head-smoothing", type=float,
                        help="head-rotation low-pass in [0, 1) for every evaluation (default: the model config)")
    parser.add_argument("--fd-tolerance", type=float, default=0.1,
                        help="the pick's allowed FD-exp loss (relative) for a smoother head (see pick())")
    parser.add_argument("--reference", type=Path, help="a finished `timar eval` folder drawn as a line")
    parser.add_argument("--out", type=Path, default=Path("outputs/temperature-sweep"))


def run(args: argparse.Namespace) -> int:
    settings = [(t, r) for r in parse_values(args.noise_correlations, "--noise-correlations", 1.0)
                for t in parse_values(args.temperatures, "--temperatures")]
    smoothing = args.head_smoothing
    if smoothing is not None and not 0 <= smoothing < 1:
        raise ValueError(f"--head-smoothing: need a value in [0, 1), got {smoothing:g}")
    suffix = "" if smoothing is None else f"-h{smoothing:g}"
    args.out.mkdir(parents=True, exist_ok=True)

    rows: dict[Setting, dict[str, float]] = {}
    for t, r in settings:
        folder = args.out / f"t{t:g}-r{r:g}{suffix}"
        if not (folder / "metrics.json").is_file():
            print(f"temperature {t:g}, noise correlation {r:g}: evaluating -> {folder}")
            run_eval(args.checkpoint, args.data, t, r, args.history, folder, smoothing)
        rows[t, r] = row(folder / "metrics.json", args.history)
    reference = row(args.reference / "metrics.json", args.history) if args.reference else None
    ref_name = args.reference.name if args.reference else ""

    with open(args.out / "sweep.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["temperature", "noise_correlation", *(k for k, _ in PLOTTED)])
        for t, r in settings:
            w.writerow([f"{t:g}", f"{r:g}", *(f"{rows[t, r][k]:.6g}" for k, _ in PLOTTED)])
    used = "the model's" if smoothing is None else f"{smoothing:g}"
    lines = [f"Temperature sweep: {args.checkpoint} on {args.data}, n = {args.history}, head smoothing {used} "
             "(`timar sweep`)\n",
             "| temperature | noise corr. | " + " | ".join(label for _, label in PLOTTED) + " |",
             "|---|---|" + "---|" * len(PLOTTED)]
    for t, r in settings:
        lines.append(f"| {t:g} | {r:g} | " + " | ".join(f"{rows[t, r][k]:.2f}" for k, _ in PLOTTED) + " |")
    if reference is not None:
        lines.append(f"| {ref_name} | | " + " | ".join(f"{reference[k]:.2f}" for k, _ in PLOTTED) + " |")
    bt, br = min(settings, key=lambda s: rows[s]["fid_exp"])
    lines.append(f"\nlowest FD-exp: temperature {bt:g}, noise correlation {br:g} ({rows[bt, br]['fid_exp']:.2f})")
    pt, pr = pick(rows, args.fd_tolerance)
    lines.append(f"picked (largest noise correlation within {args.fd_tolerance:.0%} of the lowest FD-exp, then its "
                 f"lowest FD-exp): temperature {pt:g}, noise correlation {pr:g} (FD-exp {rows[pt, pr]['fid_exp']:.2f}, "
                 f"head speed / GT {rows[pt, pr]['head_speed_ratio']:.2f})")
    text = "\n".join(lines)
    (args.out / "sweep.md").write_text(text + "\n")
    plot(rows, reference, ref_name, args.out / "sweep.png",
         f"{args.checkpoint} on {args.data}, n = {args.history}")
    print(text)
    print(f"wrote {args.out}/sweep.csv, sweep.md, sweep.png")
    return 0
