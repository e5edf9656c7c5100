"""`timar results-table`: Markdown result tables from `timar eval` outputs (for the README and the model card).

    timar results-table outputs/eval [--systems timar-small,mlp-head,zero,mean,copy-partner]

Reads <root>/<system>/<split>/metrics.json and prints, for every split and history n, one table in the
paper's scaling (FD / P-FD / MSE / SID / rPCC for exp, jaw, pose) plus the jaw-speech correlations, the
head speed relative to the ground truth (1 = as smooth as the data), and a
check of the model against every baseline on FD-exp, MSE-jaw and P-FD-pose.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from timar_model.eval.evaluate import EXTRA_KEYS
from timar_model.eval.metrics import PUBLISHED_SCALE, TABLE_KEYS

SHORT = {"fid": "FD", "p_fid": "P-FD", "mse": "MSE", "sid": "SID", "rpcc": "rPCC"}
CHECKED = ("fid_exp", "mse_jaw", "p_fid_pose")  # the model must beat every baseline on these


def _label(key: str) -> str:
    metric, part = key.rsplit("_", 1)
    return f"{SHORT.get(metric, metric)}-{part} x{PUBLISHED_SCALE[key]:g}"


def _cell(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def load(root: Path, systems: list[str]) -> dict[str, dict[str, dict]]:
    """{split: {system: metrics.json}} for every system folder that has the split."""
    out: dict[str, dict[str, dict]] = {}
    for system in systems:
        for path in sorted((root / system).glob("*/metrics.json")):
            out.setdefault(path.parent.name, {})[system] = json.loads(path.read_text())
    return out


def tables(results: dict[str, dict[str, dict]], model: str, variants: tuple[str, ...] = ()) -> str:
    """`variants` (e.g. the model at other sampling settings) are shown but not checked against."""
    lines: list[str] = []
    for split, by_system in results.items():
        history = sorted({h for m in by_system.values() for h in m["contexts"]}, key=lambda h: int(h[1:]))
        for n in history:
            rows = {s: m["contexts"][n] for s, m in by_system.items() if n in m["contexts"]}
            any_row = next(iter(rows.values()))
            lines.append(f"**{split}, n = {n[1:]}** ({any_row['samples']} predictions)\n")
            header = ["system", *(_label(k) for k in TABLE_KEYS), "jaw~speech pred", "jaw~speech GT", "jaw PCC",
                      "head speed / GT"]
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "---|" * len(header))
            for system, r in rows.items():
                pub, mean = r["published"], r["mean"]
                cells = [_cell(pub.get(k)) for k in TABLE_KEYS]
                extra = [_cell(mean.get(k), 3) for k in EXTRA_KEYS]
                name = f"**{system}**" if system == model else system
                lines.append("| " + " | ".join([name, *cells, *extra]) + " |")
            if model in rows:
                verdicts = []
                for key in CHECKED:
                    ours = rows[model]["mean"][key]
                    others = {s: r["mean"][key] for s, r in rows.items() if s != model and s not in variants}
                    worst = [s for s, v in others.items() if not ours < v]
                    verdicts.append(f"{_label(key).split(' ')[0]}: " + ("beats all" if not worst else
                                                                        f"NOT better than {', '.join(worst)}"))
                lines.append("\n" + model + " vs baselines — " + "; ".join(verdicts))
            lines.append("")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", type=Path, help="folder holding <system>/<split>/metrics.json")
    parser.add_argument("--systems", default="timar-small,mlp-head,zero,mean,copy-partner")
    parser.add_argument("--model", default="timar-small", help="the system checked against the others")
    parser.add_argument("--variants", default="", help="systems shown but not checked against (comma list)")


def run(args: argparse.Namespace) -> int:
    systems = [s for s in args.systems.split(",") if s]
    results = load(args.root, systems)
    if not results:
        raise SystemExit(f"timar results-table: no metrics.json under {args.root}/<system>/<split>/ "
                         f"for systems {systems}")
    print(tables(results, args.model, tuple(v for v in args.variants.split(",") if v)))
    return 0
