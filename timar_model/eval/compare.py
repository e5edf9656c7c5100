"""`timar compare`: train and evaluate TIMAR-small, its ablations and the DualTalk baseline on one corpus, and
write the paper-layout table with a short text of which of the paper's claims hold here.

    timar compare --corpus data/synth-v2 --out outputs/compare/v2 [--budget small|paper|tiny] \
        [--systems timar,timar-pmd,timar-sw,mlp-head,bi-attn,enc-dec,bi-attn-sw,...,dualtalk] [--history 0,1,3,7] \
        [--seeds 0,1,2] [--train-seeds 0,1,2] [--splits test,ood] [--limit N] [--runs DIR] [--set key=value ...] \
        [--torchrun N] [--skip-train | --table-only]

Systems (recipes in config/train/compare/, trained in this order; a stage-2 recipe starts from its stage 1;
budget paper: one paper-<system>.yaml each, TIMAR-large and DualTalk at the published sizes):
  timar        TIMAR-small: turn-causal encoder-only backbone (stage 1, MLP head) + diffusion head (stage 2)
  timar-pmd    the same trained with partner-motion dropout (15 % head pose only, 15 % none)
  timar-sw     TIMAR-small with a short-window warm-up: stage 1 starts with 1000 steps on 2-turn windows
               (the jaw locks on to its own speech there), then 1000 on full windows, then stage 2
  timar-pmd-sw timar-sw trained with timar-pmd's partner-motion dropout in every stage
  mlp-head     the paper's ablation "MLP head": TIMAR-small's stage-1 model itself
  bi-attn      ablation "Bi-Attn": bidirectional attention over the window (both stages)
  enc-dec      ablation "Asym EncDec": MAE-style encoder over visible tokens + decoder (both stages)
  mlp-head-sw, bi-attn-sw, enc-dec-sw
               the three ablations of timar-sw, each with its warm-up (the same stages and steps): the claims
               about the ablations are stated for timar against mlp-head/bi-attn/enc-dec and for timar-sw
               against these
  dualtalk     the DualTalk baseline at a comparable parameter count; evaluated offline on whole clips (as
               published: the same prediction at every n) and, labelled "sliding window", as a streaming use
  mean         a reference, not trained: the training split's mean frame at every frame (`timar eval
               --baseline mean`), what a model knowing nothing of the inputs scores; the floor that the
               partner-motion views are read against
Budgets: `small` = the recipes as written, for a 2-core CPU (the shipped model's step counts: 1000 + 600 steps
of batch 8 for the two-stage systems, DualTalk 1000; README "Reproducing the paper's comparisons" has the
times), `paper` = the paper's schedule (batch 32, blr 1e-4 with MAR's scaling, 400 epochs with 100 warm-up
epochs, EMA 0.9999, bf16, GPU; with --torchrun 8 on 8 GPUs), `tiny` = a few steps of tiny models, for tests.
Training runs go to RUNS/<recipe name>/ (default OUT/runs; a finished one is reused, an interrupted one
resumed); with --train-seeds, every system is trained once per training seed (the recipe's `seed`; seed S > 0
into RUNS/<recipe name>-train<S>/, its stage 2 starting from the stage 1 of the same seed), and each cell of
the table is the mean ± std over training x sampling seeds: one training run per system measures the
training seed's luck as well (the jaw of TIMAR-small: README "Reproducing the paper's comparisons").
Evaluation: streaming (`timar eval`) on every split at every n and every sampling seed of the diffusion
systems; timar, timar-sw and their dropout variants also with the partner's head pose only and with no
partner motion (`--partner-motion`, first seed). Outputs: OUT/eval/<system>[-<variant>]-seed<S>[-train<T>]/<split>/ as
`timar eval` writes them, OUT/comparison.md (tables in the paper's scaling + the claims text) and
OUT/comparison.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from timar_model.eval import evaluate
from timar_model.eval import metrics as M

RECIPES = Path(__file__).resolve().parents[2] / "config" / "train" / "compare"
# system -> recipe names (config/train/compare/<name>.yaml), in training order; the last one is evaluated.
# Budgets small and tiny: TIMAR-small in two stages (the CPU schedule of the shipped model); paper: one stage.
SYSTEMS: dict[str, tuple[str, ...]] = {
    "timar": ("timar-small-stage1", "timar-small"),
    "timar-pmd": ("timar-small-pmd-stage1", "timar-small-pmd"),
    "timar-sw": ("timar-small-sw-stage0", "timar-small-sw-stage1", "timar-small-sw"),
    "timar-pmd-sw": ("timar-small-pmd-sw-stage0", "timar-small-pmd-sw-stage1", "timar-small-pmd-sw"),
    "mlp-head": ("timar-small-stage1",),
    "bi-attn": ("bi-attn-stage1", "bi-attn"),
    "enc-dec": ("enc-dec-stage1", "enc-dec"),
    "mlp-head-sw": ("timar-small-sw-stage0", "timar-small-sw-stage1"),
    "bi-attn-sw": ("bi-attn-sw-stage0", "bi-attn-sw-stage1", "bi-attn-sw"),
    "enc-dec-sw": ("enc-dec-sw-stage0", "enc-dec-sw-stage1", "enc-dec-sw"),
    "dualtalk": ("dualtalk",),
    "mean": (),  # a reference: nothing to train
}
REFERENCE_SYSTEMS = ("mean",)  # evaluated once: the same prediction at every n
# a device of the CPU budget: the paper's 400 epochs need no warm-up
CPU_ONLY_SYSTEMS = ("timar-sw", "timar-pmd-sw", "mlp-head-sw", "bi-attn-sw", "enc-dec-sw")
PAPER_SYSTEMS: dict[str, tuple[str, ...]] = {name: (f"paper-{name}",) if recipes else ()
                                             for name, recipes in SYSTEMS.items() if name not in CPU_ONLY_SYSTEMS}
MAIN = "timar"
# each TIMAR variant with its own ablations (MLP head, bidirectional attention, encoder-decoder): the claims
# about the model (history, DualTalk, the ablations, head speed) are stated for each variant evaluated
ABLATIONS: dict[str, dict[str, str]] = {
    "timar": {"mlp": "mlp-head", "bi": "bi-attn", "ed": "enc-dec"},
    "timar-sw": {"mlp": "mlp-head-sw", "bi": "bi-attn-sw", "ed": "enc-dec-sw"},
}
HISTORY_SYSTEMS = tuple(ABLATIONS)
# sampled: one evaluation per seed
DIFFUSION_SYSTEMS = ("timar", "timar-pmd", "timar-sw", "timar-pmd-sw", "bi-attn", "enc-dec", "bi-attn-sw",
                     "enc-dec-sw")
PARTNER_VIEWS = ("pose", "none")  # also evaluated with these (timar eval --partner-motion)
# each system trained with partner-motion dropout -> the same system trained without it
DROPOUT_OF = {"timar-pmd": "timar", "timar-pmd-sw": "timar-sw"}
PARTNER_SYSTEMS = (*DROPOUT_OF.values(), *DROPOUT_OF)
# per model type: recipe overrides of a budget
_TINY_COMMON = ["max_steps=2", "warmup_steps=1", "batch_size=2", "val_every=0", "val_data=null", "ckpt_every=2",
                "log_every=1", "threads=1", "window_stride_turns=1", "model.context_turns=2"]
BUDGETS: dict[str, dict[str, list[str]]] = {
    "small": {"timar": [], "dualtalk": []},
    "paper": {"timar": [], "dualtalk": []},  # the paper-*.yaml recipes carry the paper's schedule
    "tiny": {
        "timar": [*_TINY_COMMON, "model.token_dim=32", "model.speech_dim=16", "model.width=32", "model.depth=1",
                  "model.num_heads=2", "model.decoder_width=32", "model.decoder_num_heads=2",
                  "model.diffloss_depth=1", "model.diffloss_width=32", "model.logmel_n_mels=20",
                  "model.logmel_channels=16"],
        "dualtalk": [*_TINY_COMMON, "model.speech_dim=16", "model.logmel_n_mels=20", "model.logmel_channels=16",
                     "model.feat_dim=16", "model.motion_hidden=8", "model.lstm_hidden=8", "model.cross_heads=2",
                     "model.num_heads=2", "model.enc_layers=1", "model.ffn_dim=32"],
    },
}
HISTORY_KEYS = ("fid_exp", "mse_exp", "mse_jaw", "mse_pose")  # the metrics the v2 history rules drive
CLAIM_KEYS = ("fid_exp", "fid_jaw", "fid_pose", "mse_exp", "mse_jaw", "mse_pose")  # TIMAR vs DualTalk (paper)
SHORT = {"fid": "FD", "p_fid": "P-FD", "mse": "MSE", "sid": "SID", "rpcc": "rPCC"}


def label(key: str) -> str:
    metric, part = key.rsplit("_", 1)
    return f"{SHORT.get(metric, metric)}-{part}"


# ----------------------------------------------------------------------------- training


@dataclasses.dataclass
class Plan:
    corpus: Path
    out: Path
    runs: Path
    budget: str
    overrides: list[str]
    torchrun: int | None = None


def systems_of(budget: str) -> dict[str, tuple[str, ...]]:
    return PAPER_SYSTEMS if budget == "paper" else SYSTEMS


def run_name(recipe_name: str, train_seed: int = 0) -> str:
    """The RUNS/ folder of a recipe trained with `train_seed` (0, the recipes' own seed: no suffix)."""
    return recipe_name if train_seed == 0 else f"{recipe_name}-train{train_seed}"


def recipe_overrides(plan: Plan, recipe_name: str, train_seed: int = 0) -> list[str]:
    """key=value overrides of one recipe under the plan: data, init_from, training seed, budget, --set."""
    from timar_model.train.recipe import load_recipe

    base = load_recipe(RECIPES / f"{recipe_name}.yaml")
    over = [f"train_data={plan.corpus / 'train'}", f"val_data={plan.corpus / 'test'}"]
    if base.cache_dir:
        over.append(f"cache_dir={plan.corpus / 'cache'}")
    if base.init_from:
        src = Path(base.init_from)  # runs/compare/<stage-1 recipe>/final
        stage1 = src.parent.name if src.name == "final" else src.name
        over.append(f"init_from={plan.runs / run_name(stage1, train_seed) / 'final'}")
    if train_seed:
        over.append(f"seed={train_seed}")
    return [*over, *BUDGETS[plan.budget][base.model_type], *plan.overrides]


def train_recipe(plan: Plan, recipe_name: str, train_seed: int = 0) -> Path:
    """Train one recipe into RUNS/<name>[-train<S>] (skip when its final/ exists, resume when a checkpoint
    does)."""
    from timar_model.train.loop import CHECKPOINT_NAME, train
    from timar_model.train.recipe import load_recipe

    folder = run_name(recipe_name, train_seed)
    run = plan.runs / folder
    final = run / "final"
    if (final / "config.json").is_file():
        print(f"compare: {folder}: reusing {final}")
        return final
    over = recipe_overrides(plan, recipe_name, train_seed)
    resume = (run / CHECKPOINT_NAME).is_file()
    print(f"compare: training {folder} -> {run}{' (resuming)' if resume else ''}")
    if plan.torchrun:
        cmd = ["torchrun", f"--nproc_per_node={plan.torchrun}", "-m", "timar_model.cli", "train", "--config",
               str(RECIPES / f"{recipe_name}.yaml"), "--out", str(run), "--no-progress",
               *(["--resume"] if resume else []), *over]
        subprocess.run(cmd, check=True)
    else:
        train(load_recipe(RECIPES / f"{recipe_name}.yaml", over), run, resume=resume, progress=False)
    if not (final / "config.json").is_file():
        raise RuntimeError(f"compare: training {folder} ended without {final}")
    return final


# ----------------------------------------------------------------------------- evaluation


@dataclasses.dataclass(frozen=True)
class Row:
    """One evaluated configuration: a system, its inference / partner view, the sampling seed, the training
    seed of its model."""

    system: str
    variant: str = ""  # "", "offline", "sliding window", "partner pose", "partner none", "reference"
    seed: int = 0
    train_seed: int = 0

    @property
    def folder(self) -> str:
        v = self.variant.replace(" ", "-")
        trained = f"-train{self.train_seed}" if self.train_seed else ""
        return f"{self.system}{'-' + v if v else ''}-seed{self.seed}{trained}"

    @property
    def seeds_text(self) -> str:
        return f"seed {self.seed}" + (f" (training seed {self.train_seed})" if self.train_seed else "")

    @property
    def name(self) -> str:
        return f"{self.system}{f' ({self.variant})' if self.variant else ''}"


def rows_for(system: str, seeds: list[int], train_seeds: tuple[int, ...] | list[int] = (0,)) -> list[Row]:
    if system in REFERENCE_SYSTEMS:
        return [Row(system, "reference")]
    rows = []
    for t in train_seeds:
        if system == "dualtalk":
            rows += [Row(system, "offline", 0, t), Row(system, "sliding window", 0, t)]
        elif system in DIFFUSION_SYSTEMS:
            rows += [Row(system, "", s, t) for s in seeds]
            if system in PARTNER_SYSTEMS:
                rows += [Row(system, f"partner {v}", seeds[0], t) for v in PARTNER_VIEWS]
        else:
            rows.append(Row(system, train_seed=t))
    return rows


def history_free(name: str) -> bool:
    """A row whose prediction is the same at every n (DualTalk offline, the references): one table row."""
    return name.endswith(("(offline)", "(reference)"))


def predictors_for(row: Row, model_dir: Path | None, history: list[int], device: str,
                   corpus: Path | None = None) -> dict[int, evaluate.Predictor]:
    from timar_model.model.checkpoint import load_pretrained
    from timar_model.runtime.streaming import StreamingGenerator

    if row.system in REFERENCE_SYSTEMS:
        from timar_model.eval.baselines import make_baseline

        predict = evaluate.baseline_predictor(make_baseline(row.system, corpus / "train"))
        return {n: predict for n in history}
    model = load_pretrained(model_dir, device=device)
    if row.system == "dualtalk":
        from timar_model.model.dualtalk_baseline import dualtalk_predictor

        inference = "offline" if row.variant == "offline" else "sliding"
        return {n: dualtalk_predictor(model, inference, n) for n in history}
    view = row.variant.split(" ", 1)[1] if row.variant.startswith("partner ") else "full"
    return {n: evaluate.generator_predictor(StreamingGenerator(model, device=device, context_turns=n + 1,
                                                               seed=row.seed, partner_motion=view))
            for n in history}


def evaluate_row(row: Row, model_dir: Path | None, split: str, plan: Plan, history: list[int], limit: int | None,
                 device: str) -> dict:
    """metrics.json of one row on one split (computed, or read back when it exists)."""
    folder = plan.out / "eval" / row.folder / split
    path = folder / "metrics.json"
    samples = evaluate.load_split(plan.corpus / split, limit)
    done: dict[int, evaluate.HistoryResult] = {}  # n evaluated before on the same clips: kept, not recomputed
    if path.is_file():
        doc = json.loads(path.read_text())
        if all(f"n{n}" in doc["contexts"] for n in history):
            return doc
        if doc.get("samples") == len(samples):
            done = {c["context"]: evaluate.HistoryResult(c["context"], c["per_sample"], c["mean"],
                                                         c.get("generation_seconds", float("nan")))
                    for c in doc["contexts"].values()}
    todo = [n for n in history if n not in done]
    predictors = predictors_for(row, model_dir, todo, device, plan.corpus)
    if history_free(row.name):  # the whole clip / a reference: one evaluation serves every n
        once = evaluate.evaluate_predictor(predictors[todo[0]], samples, folder / row.variant, todo[0])
        done.update({n: dataclasses.replace(once, history=n) for n in todo})
    else:
        done.update({n: evaluate.evaluate_predictor(predictors[n], samples, folder / f"n{n}", n) for n in todo})
    results = [done[n] for n in sorted(done)]
    meta = {"data": str(plan.corpus / split), "samples": len(samples), "checkpoint": str(model_dir),
            "system": row.system, "variant": row.variant, "seed": row.seed}
    evaluate.write_results(folder, results, meta)
    return json.loads(path.read_text())


def existing_evaluation(row: Row, split: str, plan: Plan, history: list[int], limit: int | None) -> dict | None:
    """metrics.json of a row as evaluated before, restricted to the n of `history` it has (None: not evaluated,
    or on other clips than the split's first `limit`)."""
    path = plan.out / "eval" / row.folder / split / "metrics.json"
    if not path.is_file():
        return None
    doc = json.loads(path.read_text())
    if limit is not None and doc.get("samples") != len(evaluate.load_split(plan.corpus / split, limit)):
        return None
    doc["contexts"] = {k: c for k, c in doc["contexts"].items() if c["context"] in history}
    return doc if doc["contexts"] else None


# ----------------------------------------------------------------------------- tables and claims


def collect(docs: dict[tuple[Row, str], dict]) -> dict:
    """{split: {name: {n: {key: (mean, std, count)}}}} over seeds (published scaling where it applies)."""
    keys = [*M.TABLE_KEYS, *evaluate.EXTRA_KEYS]
    acc: dict = {}
    for (row, split), doc in docs.items():
        for ctx in doc["contexts"].values():
            n = ctx["context"]
            vals = {k: ctx["published"][k] if k in M.PUBLISHED_SCALE else ctx["mean"].get(k, float("nan"))
                    for k in keys}
            acc.setdefault(split, {}).setdefault(row.name, {}).setdefault(n, []).append(vals)
    out: dict = {}
    for split, systems in acc.items():
        for name, by_n in systems.items():
            for n, runs in by_n.items():
                stats = {}
                for k in keys:
                    v = np.array([r[k] for r in runs], np.float64)
                    std = float(v.std(ddof=1)) if len(v) > 1 else 0.0
                    stats[k] = (float(np.mean(v)), std, len(v))
                out.setdefault(split, {}).setdefault(name, {})[n] = stats
    return out


def paired_gains(docs: dict[tuple[Row, str], dict], split: str, system: str, low: int, high: int) -> dict:
    """{key: (mean, std, count)} of the per-seed gain from n = high over n = low (same system, split and
    sampling seed; published scaling): a paired view of the history effect, free of the seed-to-seed spread
    that both n share."""
    per_key: dict[str, list[float]] = {}
    for (row, sp), doc in docs.items():
        if row.system != system or row.variant or sp != split:
            continue
        ctx = {c["context"]: c for c in doc["contexts"].values()}
        if low not in ctx or high not in ctx:
            continue
        for key in HISTORY_KEYS:
            a, b = (ctx[n]["published"][key] if key in M.PUBLISHED_SCALE else ctx[n]["mean"][key] for n in (low, high))
            per_key.setdefault(key, []).append(a - b)
    return {k: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v))
            for k, v in per_key.items()}


def _cell(stat: tuple[float, float, int], digits: int = 2) -> str:
    mean, std, count = stat
    if not math.isfinite(mean):
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if count > 1 else "")


def markdown_tables(stats: dict, history: list[int]) -> str:
    lines = []
    for split, systems in stats.items():
        header = ["system", "n", *(f"{label(k)} x{M.PUBLISHED_SCALE[k]:g}" for k in M.TABLE_KEYS),
                  "head speed / GT", "jaw~speech pred (GT)"]
        lines += [f"**{split}**\n", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for n in history:
            for name, by_n in systems.items():
                if n not in by_n or (history_free(name) and n != history[0]):  # one row for every n
                    continue
                s = by_n[n]
                jaw = f"{_cell(s['jaw_speech_pred'], 3)} ({s['jaw_speech_gt'][0]:.3f})"
                lines.append("| " + " | ".join([name, "all" if history_free(name) else str(n),
                                                *(_cell(s[k]) for k in M.TABLE_KEYS),
                                                _cell(s["head_speed_ratio"]), jaw]) + " |")
        lines.append("")
    return "\n".join(lines)


def _get(stats: dict, split: str, name: str, n: int, key: str) -> tuple[float, float, int] | None:
    return stats.get(split, {}).get(name, {}).get(n, {}).get(key)


def _pct(a: float, b: float) -> float:
    """Relative change from b to a, in %."""
    return 100.0 * (a - b) / b if b else float("nan")


def history_claim(stats: dict, history: list[int], system: str, paired: dict | None = None,
                  seed_kind: str = "sampling seeds") -> str | None:
    """The history claim for one system (split test if evaluated): n = max vs min of `history`, per
    HISTORY_KEYS, 'yes' where the gain exceeds the seed-to-seed std of either n. paired: paired_gains() of
    this system. None when the system has no evaluation at both n."""
    top, low = max(history), min(history)
    split = "test" if "test" in stats else next(iter(stats))
    rows, seeds_note = [], ""
    for key in HISTORY_KEYS:
        hi, lo = _get(stats, split, system, top, key), _get(stats, split, system, low, key)
        if hi is None or lo is None:
            continue
        spread = max(hi[1], lo[1])
        gain = lo[0] - hi[0]
        verdict = "yes" if gain > spread and gain > 0 else "no"
        pair = (paired or {}).get(key)
        same_seed = (f", paired gain per seed {pair[0]:+.3f} ± {pair[1]:.3f}" if pair is not None and pair[2] > 1
                     else "")
        rows.append(f"{label(key)} {lo[0]:.3f} -> {hi[0]:.3f} ({_pct(hi[0], lo[0]):+.1f} %, seed std "
                    f"{spread:.3f}{same_seed}: {verdict})")
        seeds_note = f" over {hi[2]} {seed_kind}" if hi[2] > 1 else " (one seed)"
    if not rows:
        return None
    good = sum(r.endswith("yes)") for r in rows)
    name = "TIMAR" if system == MAIN else system
    return (f"- **History helps** ({name}, {split}, n = {top} vs n = {low}{seeds_note}; 'yes' = better "
            f"by more than the seed-to-seed std of either): {'; '.join(rows)}. "
            f"{'Holds' if good == len(rows) else 'Holds in part' if good else 'Does not hold'} here "
            f"({good} of {len(rows)} metrics).")


def claims(stats: dict, history: list[int], paired: dict | None = None, seed_kind: str = "sampling seeds"
           ) -> list[str]:
    """Which of the paper's claims hold here, with numbers. paired: {system: paired_gains()} of the systems
    in HISTORY_SYSTEMS; seed_kind: what the evaluations of one cell vary in."""
    out = []
    top = max(history)
    split = "test" if "test" in stats else next(iter(stats))
    # history, for every TIMAR variant evaluated
    for system in HISTORY_SYSTEMS:
        line = history_claim(stats, history, system, (paired or {}).get(system), seed_kind)
        if line is not None:
            out.append(line)
    for main, own in ABLATIONS.items():
        if any(_get(stats, sp, main, top, "fid_exp") is not None for sp in stats):
            out += _model_claims(stats, split, top, main, own)
    # partner motion, and what training with partner-motion dropout costs / buys
    for system in PARTNER_SYSTEMS:
        views = {v: (system if v == "full" else f"{system} (partner {v})") for v in ("full", *PARTNER_VIEWS)}
        pose = {v: _get(stats, split, name, top, "mse_pose") for v, name in views.items()}
        jaw = {v: _get(stats, split, name, top, "jaw_speech_pred") for v, name in views.items()}
        if all(v is not None for v in pose.values()):
            f, p, z = (pose[k][0] for k in ("full", "pose", "none"))
            ref = _get(stats, split, "mean (reference)", top, "mse_pose")
            face = ("; the face, jaw~own speech: " + ", ".join(f"{v} {jaw[v][0]:.2f}" for v in views)
                    if all(j is not None for j in jaw.values()) else "")
            out.append(f"- **Partner motion** ({system}, {split}, n = {top}, MSE-pose x1e2): full {f:.3f}, head "
                       f"pose only {p:.3f} ({_pct(p, f):+.0f} %), none {z:.3f} ({_pct(z, f):+.0f} %)"
                       + (f"; the training mean (no input at all) {ref[0]:.3f}" if ref is not None else "")
                       + face + ".")
    for dropped, plain in DROPOUT_OF.items():
        costs = []
        for key in ("fid_exp", "mse_pose", "p_fid_pose"):
            a, b = _get(stats, split, dropped, top, key), _get(stats, split, plain, top, key)
            if a is not None and b is not None:
                costs.append(f"{label(key)} {a[0]:.3f} vs {b[0]:.3f} ({_pct(a[0], b[0]):+.1f} %)")
        if costs:
            out.append(f"- **What partner-motion dropout costs with full input** ({split}, n = {top}, {dropped} vs "
                       f"{plain}): {'; '.join(costs)}.")
    return out


def _model_claims(stats: dict, split: str, top: int, main: str, own: dict[str, str]) -> list[str]:
    """The claims about one TIMAR variant at n = top: against DualTalk, its own ablations (`own`: MLP head,
    bidirectional attention, encoder-decoder, as in ABLATIONS) and its head speed."""
    out = []
    name = "TIMAR" if main == MAIN else main
    # TIMAR vs DualTalk
    for dt in ("dualtalk (offline)", "dualtalk (sliding window)"):
        rel = {}
        for key in CLAIM_KEYS:
            a, b = _get(stats, split, main, top, key), _get(stats, split, dt, top, key)
            if a is not None and b is not None:
                rel[key] = -_pct(a[0], b[0])  # % lower than DualTalk
        if rel:
            vals = list(rel.values())
            verdict = ("holds" if min(vals) >= 15 else "holds in part (TIMAR lower on "
                       f"{sum(v > 0 for v in vals)} of {len(vals)}, by 15 % or more on {sum(v >= 15 for v in vals)})"
                       if max(vals) > 0 else "does not hold")
            diffs = ", ".join(f"{label(k)} {abs(v):.1f} % {'lower' if v >= 0 else 'higher'}" for k, v in rel.items())
            out.append(f"- **TIMAR beats DualTalk by 15-30 % on FD and MSE** ({split}, n = {top}, {name} vs "
                       f"{dt}): {diffs}: {verdict}.")
    # diffusion vs MLP head: distribution metrics
    pairs = [("fid_exp", False), ("fid_jaw", False), ("fid_pose", False), ("sid_exp", True)]
    res = []
    for key, higher_better in pairs:
        a, b = _get(stats, split, main, top, key), _get(stats, split, own["mlp"], top, key)
        if a is not None and b is not None:
            res.append((key, a[0], b[0], (a[0] > b[0]) if higher_better else (a[0] < b[0])))
    if res:
        wins = sum(r[3] for r in res)
        verdict = "holds" if wins == len(res) else f"holds on {wins} of {len(res)}" if wins else "does not hold"
        out.append(f"- **Diffusion head beats the MLP head on the distribution metrics** ({split}, n = {top}, "
                   f"{name} vs {own['mlp']}): "
                   + ", ".join(f"{label(k)} {a:.2f} vs {b:.2f}" for k, a, b, _ in res) + f": {verdict}.")
    # turn-causal vs bidirectional (generalisation: ood), encoder-only vs encoder-decoder
    for other, what, where in ((own["bi"], "Turn-causal attention generalises better than bidirectional", "ood"),
                               (own["ed"], "Encoder-only beats the encoder-decoder", split)):
        sp = where if where in stats else split
        a, b = _get(stats, sp, main, top, "fid_exp"), _get(stats, sp, other, top, "fid_exp")
        if a is not None and b is not None:
            close = abs(a[0] - b[0]) <= 2 * max(a[1], b[1])
            verdict = ("not shown (within the seed spread)" if close else "holds" if a[0] < b[0] else "does not hold")
            out.append(f"- **{what}** ({sp}, n = {top}, FD-exp): {name} {_cell(a)} vs {other} {_cell(b)}: {verdict}.")
    # smoothness
    hs = _get(stats, split, main, top, "head_speed_ratio")
    if hs is not None:
        out.append(f"- **Head speed** ({name}, {split}, n = {top}): {hs[0]:.2f} x the ground truth's "
                   f"({'inside' if 0.8 <= hs[0] <= 1.25 else 'outside'} 0.8-1.25).")
    return out


# ----------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", type=Path, required=True, help="DualTalk-layout corpus: train/, test/, ood/")
    parser.add_argument("--out", type=Path, required=True, help="output folder (runs, evaluations, comparison.md)")
    parser.add_argument("--budget", choices=tuple(BUDGETS), default="small",
                        help="small: TIMAR-small recipes for a 2-core CPU; paper: the paper's recipes and sizes "
                             "(GPUs); tiny: a few steps of tiny models (tests)")
    parser.add_argument("--systems", default=None,
                        help="comma list of " + ", ".join(SYSTEMS) + " (default: all of the budget's)")
    parser.add_argument("--history", default="0,1,3,7", help=evaluate.HISTORY_HELP + " (comma list)")
    parser.add_argument("--seeds", default="0,1,2", help="sampling seeds of the diffusion systems")
    parser.add_argument("--train-seeds", default="0",
                        help="training seeds: every system is trained once per seed (0 = the recipes' own)")
    parser.add_argument("--splits", default="test,ood")
    parser.add_argument("--limit", type=int, help="only the first N clips of each split")
    parser.add_argument("--runs", type=Path, help="training runs folder (default OUT/runs)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override for every training (repeatable), e.g. threads=2")
    parser.add_argument("--torchrun", type=int, metavar="N", help="train each recipe with torchrun on N processes")
    parser.add_argument("--skip-train", action="store_true", help="only evaluate runs that exist")
    parser.add_argument("--table-only", action="store_true",
                        help="no training, no evaluation: write the table from the evaluations in OUT/eval that "
                             "exist (rows, seeds and n not evaluated are left out and listed)")
    parser.add_argument("--device", default="cpu", help="evaluation device")


def run(args: argparse.Namespace) -> int:
    recipes = systems_of(args.budget)
    systems = list(recipes) if args.systems is None else [s for s in args.systems.split(",") if s]
    unknown = sorted(set(systems) - set(recipes))
    if unknown:
        raise ValueError(f"--systems: {unknown} not in budget {args.budget}; choose from {', '.join(recipes)}")
    history = evaluate.parse_history(args.history)
    seeds = sorted({int(s) for s in args.seeds.split(",") if s.strip()})
    train_seeds = sorted({int(s) for s in args.train_seeds.split(",") if s.strip()})
    if not seeds or not train_seeds or min(train_seeds) < 0:
        raise ValueError("--seeds and --train-seeds: comma lists of seeds (training seeds >= 0)")
    splits = [s for s in args.splits.split(",") if s]
    for s in ("train", *splits):
        if not (args.corpus / s).is_dir():
            raise FileNotFoundError(f"--corpus {args.corpus}: no {s}/ (make one with `timar synth`)")
    plan = Plan(args.corpus, args.out, args.runs or args.out / "runs", args.budget, list(args.overrides),
                args.torchrun)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    models: dict[tuple[str, int], Path | None] = {}
    for system in systems:
        for t in train_seeds:
            if args.table_only or not recipes[system]:  # nothing to train (a reference) or to load
                models[system, t] = None
                continue
            final = plan.runs / run_name(recipes[system][-1], t) / "final"
            if args.skip_train:
                if not (final / "config.json").is_file():
                    raise FileNotFoundError(f"--skip-train: {system} has no trained model at {final}")
            else:
                for recipe in recipes[system]:
                    final = train_recipe(plan, recipe, t)
            models[system, t] = final
    t_train = time.time() - t0
    docs, missing = {}, []
    for system in systems:
        for row in rows_for(system, seeds, train_seeds):
            for split in splits:
                if args.table_only:
                    doc = existing_evaluation(row, split, plan, history, args.limit)
                    if doc is None:
                        missing.append(f"{row.name} {row.seeds_text} on {split}")
                    else:
                        docs[row, split] = doc
                    continue
                print(f"compare: evaluating {row.name} {row.seeds_text} on {split}")
                docs[row, split] = evaluate_row(row, models[system, row.train_seed], split, plan, history,
                                                args.limit, args.device)
    if args.table_only and not docs:
        raise FileNotFoundError(f"--table-only: no evaluations under {plan.out / 'eval'} for these systems")
    stats = collect(docs)
    seed_kind = "sampling seeds" if len(train_seeds) == 1 else "training x sampling seeds"
    paired_split = "test" if "test" in splits else splits[0]
    text = claims(stats, history, {system: paired_gains(docs, paired_split, system, min(history), max(history))
                                   for system in HISTORY_SYSTEMS}, seed_kind)
    sizes = ("TIMAR-large, DualTalk at its published sizes" if args.budget == "paper" else
             "TIMAR-small (two stages: MLP head, then the diffusion head on the frozen backbone), DualTalk at a "
             "comparable parameter count")
    header = (f"# Comparison on {args.corpus} (`timar compare`, budget {args.budget}: {sizes})\n\n"
              f"Systems: {', '.join(systems)}; history n = {', '.join(map(str, history))}; sampling seeds "
              f"{', '.join(map(str, seeds))} (diffusion systems: mean ± std over seeds)"
              + (f"; training seeds {', '.join(map(str, train_seeds))} (every cell: mean ± std over training x "
                 "sampling seeds)" if len(train_seeds) > 1 else "") + f"; splits {', '.join(splits)}"
              f"{f', first {args.limit} clips' if args.limit else ''}. Streaming evaluation with "
              f"`mask_history_agent` (timar eval); DualTalk offline = the whole clip at once (as published; the "
              f"same at every n), DualTalk sliding window = turn k from turns [k - n, k] (a streaming use, not the "
              f"published protocol). Published scaling. Machine: {_machine()}"
              + ("" if args.table_only else f"; training {t_train / 60:.1f} min, total {(time.time() - t0) / 60:.1f} "
                 "min this run (reused runs not counted)") + ".\n")
    if args.table_only:
        header += ("\nAssembled from the evaluations that exist (`--table-only`); each cell's ± std and seed count are "
                   "over the seeds evaluated" + (f"; not evaluated: {'; '.join(missing)}" if missing else "") + ".\n")
    md = header + "\n## Claims\n\n" + "\n".join(text) + "\n\n## Tables\n\n" + markdown_tables(stats, history)
    (args.out / "comparison.md").write_text(md)
    (args.out / "comparison.json").write_text(json.dumps(
        {"corpus": str(args.corpus), "budget": args.budget, "history": history, "seeds": seeds, "claims": text,
         "stats": {sp: {name: {str(n): {k: list(v) for k, v in s.items()} for n, s in by.items()}
                        for name, by in sy.items()} for sp, sy in stats.items()}}, indent=1))
    print(md)
    print(f"wrote {args.out / 'comparison.md'} and comparison.json")
    return 0


def _machine() -> str:
    import os
    import platform

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {gpu}, Python {sys.version.split()[0]}"
