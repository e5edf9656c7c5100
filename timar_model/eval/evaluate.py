"""`timar eval`: streaming generation on a DualTalk-layout split + the DualTalk metrics.

    timar eval --checkpoint DIR --data DIR/test --history 0,1,3,7 [--out DIR] [--limit N]
    timar eval --baseline zero|mean|copy-partner [--train-data DIR/train] --data DIR/test ...
    timar eval ... --partner-motion full|pose|none   (what the model is given of the partner's motion)
    timar eval ... --backend onnxruntime [--dtype float32|float16|int8] [--onnx-dir DIR]   (`timar export` graphs)

For every history n (number of previous turns the model sees, the paper's n; the generator's window
is n + 1 turns) and every speaker role of every clip (each speaker once as agent, the other as user),
the model streams the sample one 1 s turn at a time, exactly as at run time, over the whole seconds of
the sample (the trailing fraction is dropped, as in the public protocol). Each prediction is written as
`<out>/n<history>/<clip>_speaker<k>.npy` (T, 56) float32 (k = the agent speaker), then every DualTalk
metric is computed per sample against the agent's ground truth with the other speaker as partner,
averaged over samples, printed in the published scaling and written to `<out>/metrics.json` (under
`contexts` / `n<history>`: unscaled means, scaled table, per-sample values) and CSV files
(`<out>/summary.csv`: one row per history n, in its `context` column, published scaling;
`<out>/n<history>/per_sample.csv`).

Besides the DualTalk metrics, each sample reports how the jaw follows speech: `jaw_speech_pred` /
`jaw_speech_gt` = Pearson correlation between the (predicted / GT) jaw opening and the agent's own
speech RMS envelope, and `jaw_pcc` = correlation between predicted and GT jaw opening. And how smooth
the head is: `head_speed_ratio` = mean frame-to-frame head-rotation change of the prediction / of the GT
(1 = as smooth as the data; a frame-to-frame jitter shows as > 1).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from timar_model.data.dualtalk import dualtalk_from_motion56
from timar_model.data.partner_motion import PARTNER_MOTION_MODES, PartnerMotionSample
from timar_model.eval import metrics as M
from timar_model.eval.baselines import BASELINES, Baseline, make_baseline
from timar_model.motion import FRAMES_PER_TURN, MOTION_DIM, SAMPLES_PER_TURN

EXTRA_KEYS: tuple[str, ...] = ("jaw_speech_pred", "jaw_speech_gt", "jaw_pcc", "head_speed_ratio")

# A predictor maps (sample, number of whole turns) -> (turns * 25, 56) float32.
Predictor = Callable[[object, int], np.ndarray]

HISTORY_HELP = "number of previous turns the model sees, the paper's n; window = n + 1 turns"


# ----------------------------------------------------------------------------- pure helpers


def parse_history(text: str) -> list[int]:
    """ "0,1,3,7" -> [0, 1, 3, 7]; every value a non-negative int."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise ValueError(f"--history {text!r}: expected comma-separated integers like 0,1,3,7") from e
    if not values or any(v < 0 for v in values):
        raise ValueError(f"--history {text!r}: expected non-negative integers like 0,1,3,7")
    return sorted(set(values))


def whole_turns(
    sample,
    frames_per_turn: int = FRAMES_PER_TURN,
    samples_per_turn: int = SAMPLES_PER_TURN,
    max_turns: int | None = None,
) -> int:
    """Number of whole 1 s turns covered by both audio tracks and both motion tracks of a sample."""
    n = min(
        len(sample.agent_audio) // samples_per_turn,
        len(sample.user_audio) // samples_per_turn,
        len(sample.agent_motion) // frames_per_turn,
        len(sample.user_motion) // frames_per_turn,
    )
    return n if max_turns is None else min(n, max_turns)


def sample_name(sample) -> str:
    """`<clip>_speaker<k>`, the public protocol's file stem for the prediction of speaker k."""
    return f"{sample.clip}_speaker{sample.agent_speaker}"


def sample_metrics(pred: np.ndarray, sample) -> dict[str, float]:
    """All DualTalk metrics (unscaled) + jaw/speech extras for one prediction (T', 56)."""
    gt_exp, gt_pose = dualtalk_from_motion56(sample.agent_motion)
    partner_exp, partner_pose = dualtalk_from_motion56(sample.user_motion)
    out = M.dualtalk_metrics(pred, gt_exp, gt_pose, partner_exp, partner_pose)
    n = len(pred)
    audio = np.asarray(sample.agent_audio)[: n * SAMPLES_PER_TURN // FRAMES_PER_TURN]
    out["jaw_speech_pred"] = M.jaw_speech_correlation(pred, audio)
    out["jaw_speech_gt"] = M.jaw_speech_correlation(np.asarray(sample.agent_motion)[:n], audio)
    a, b = M.jaw_opening(pred), M.jaw_opening(np.asarray(sample.agent_motion)[:n])
    out["jaw_pcc"] = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")
    gt_speed = M.head_speed(np.asarray(sample.agent_motion)[:n])
    out["head_speed_ratio"] = M.head_speed(pred) / gt_speed if gt_speed > 0 else float("nan")  # 1 = GT's
    return out


def average(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean of every DualTalk key (as the public code) and nan-mean of the extras."""
    if not rows:
        raise ValueError("average: no samples were evaluated")
    means = M.aggregate([{k: r[k] for k in M.METRIC_KEYS} for r in rows])
    for k in EXTRA_KEYS:
        vals = np.array([r[k] for r in rows], np.float64)
        means[k] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
    return means


# ----------------------------------------------------------------------------- predictors


def stream_sample(gen, sample, turns: int) -> np.ndarray:
    """Run a StreamingGenerator over `turns` turns of one sample -> (turns * F, 56) float32."""
    F, S = gen.frames_per_turn, gen.samples_per_turn
    gen.reset()
    out = []
    for k in range(turns):
        out.append(
            gen.step(
                np.asarray(sample.user_audio[k * S : (k + 1) * S], np.float32),
                np.asarray(sample.user_motion[k * F : (k + 1) * F], np.float32),
                np.asarray(sample.agent_audio[k * S : (k + 1) * S], np.float32),
            )
        )
    return np.concatenate(out, axis=0).astype(np.float32)


def generator_predictor(gen) -> Predictor:
    return lambda sample, turns: stream_sample(gen, sample, turns)


def partner_predictor(predict: Predictor, mode: str) -> Predictor:
    """`predict` given the partner's motion seen through `mode` (full | pose | none; see
    timar_model.data.partner_motion), unobserved parts as zeros (what DualTalk and the baselines know; TIMAR
    streams through StreamingGenerator(partner_motion=mode), which fills them as its model expects); the
    metrics still use the real partner."""
    return predict if mode == "full" else (lambda sample, turns: predict(PartnerMotionSample(sample, mode), turns))


def baseline_predictor(baseline: Baseline) -> Predictor:
    return lambda sample, turns: baseline.predict(np.asarray(sample.user_motion), turns * FRAMES_PER_TURN)


@dataclass
class HistoryResult:
    history: int  # previous turns the model saw (n)
    per_sample: dict[str, dict[str, float]]  # sample name -> metrics
    mean: dict[str, float]
    seconds: float  # wall time of generation (not metrics)


def evaluate_predictor(
    predict: Predictor,
    samples: Sequence,
    out_dir: Path | None,
    history: int,
    max_turns: int | None = None,
    progress: bool = False,
) -> HistoryResult:
    """Predict every sample, optionally save `<out_dir>/<clip>_speaker<k>.npy`, compute metrics."""
    per_sample: dict[str, dict[str, float]] = {}
    gen_time = 0.0
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    iterator = samples
    if progress:
        from tqdm import tqdm

        iterator = tqdm(samples, desc=f"n={history}", unit="sample")
    for sample in iterator:
        turns = whole_turns(sample, max_turns=max_turns)
        name = sample_name(sample)
        if turns < 1:
            raise ValueError(f"{name}: shorter than one whole second; cannot evaluate")
        t0 = time.perf_counter()
        pred = predict(sample, turns)
        gen_time += time.perf_counter() - t0
        if pred.shape != (turns * FRAMES_PER_TURN, MOTION_DIM) or not np.isfinite(pred).all():
            raise RuntimeError(
                f"{name}: prediction has shape {pred.shape} (expected "
                f"{(turns * FRAMES_PER_TURN, MOTION_DIM)}) or non-finite values"
            )
        if out_dir is not None:
            np.save(out_dir / f"{name}.npy", pred.astype(np.float32))
        per_sample[name] = sample_metrics(pred, sample)
        if hasattr(sample, "release"):
            sample.release()  # keep memory flat over a large split
    return HistoryResult(history, per_sample, average(list(per_sample.values())), gen_time)


# ----------------------------------------------------------------------------- writing


def write_results(out: Path, results: list[HistoryResult], meta: dict) -> None:
    """The files of the module docstring. Their keys keep the names of earlier outputs (`contexts` and
    `context` hold the history n), which `timar sweep` and `timar results-table` read."""
    out.mkdir(parents=True, exist_ok=True)
    cols = list(M.METRIC_KEYS) + list(EXTRA_KEYS)
    for r in results:
        d = out / f"n{r.history}"
        d.mkdir(parents=True, exist_ok=True)
        with open(d / "per_sample.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["sample", *cols])
            for name, m in r.per_sample.items():
                w.writerow([name, *(f"{m[k]:.9g}" for k in cols)])
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["context", "samples", *(f"{k}_x{M.PUBLISHED_SCALE[k]:g}" for k in M.TABLE_KEYS), *EXTRA_KEYS]
        )
        for r in results:
            scaled = M.scale_published(r.mean)
            w.writerow(
                [
                    r.history,
                    len(r.per_sample),
                    *(f"{scaled[k]:.6g}" for k in M.TABLE_KEYS),
                    *(f"{r.mean[k]:.6g}" for k in EXTRA_KEYS),
                ]
            )
    doc = {
        **meta,
        "published_scale": M.PUBLISHED_SCALE,
        "contexts": {
            f"n{r.history}": {
                "context": r.history,
                "samples": len(r.per_sample),
                "generation_seconds": r.seconds,
                "mean": r.mean,
                "published": M.scale_published(r.mean),
                "per_sample": r.per_sample,
            }
            for r in results
        },
    }
    (out / "metrics.json").write_text(json.dumps(doc, indent=2, allow_nan=True))


# ----------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("what to evaluate (one of)")
    src.add_argument("--checkpoint", type=Path, help="model directory (config.json + model.safetensors)")
    src.add_argument("--baseline", choices=BASELINES, help="evaluate a trivial baseline instead of a model")
    parser.add_argument("--train-data", type=Path, help="training split (needed by --baseline mean)")
    parser.add_argument(
        "--data", type=Path, required=True, help="DualTalk-layout split, e.g. data/synth/test"
    )
    parser.add_argument("--history", default="0,1,3,7", help=f"{HISTORY_HELP} (comma list; default 0,1,3,7)")
    parser.add_argument("--out", type=Path, help="output folder (default outputs/eval/<name>/<split>)")
    parser.add_argument("--limit", type=int, help="only the first N clips (2N predictions), sorted by name")
    parser.add_argument("--max-seconds", type=int, help="only the first N whole seconds of each sample")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "int8"],
                        help="torch: float32 | bfloat16; onnxruntime: float32 | float16 | int8 (int8 backbone)")
    parser.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"],
                        help="onnxruntime: the graphs of `timar export` (made on the fly unless --onnx-dir)")
    parser.add_argument("--onnx-dir", type=Path, help="an export of this checkpoint (`timar export`)")
    parser.add_argument("--steps", type=int, help="diffusion sampling steps (default: the model config)")
    parser.add_argument("--temperature", type=float, help="sampling temperature (default: the model config)")
    parser.add_argument(
        "--noise-correlation",
        type=float,
        help="frame-to-frame correlation of the sampling noise in [0, 1) (default: the model config; 0 = the paper)",
    )
    parser.add_argument(
        "--head-smoothing",
        type=float,
        help="causal low-pass of the head rotation output in [0, 1) (default: the model config; 0 = off)",
    )
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (each sample restarts from it)")
    parser.add_argument("--sliding-window", action="store_true",
                        help="DualTalk baseline only: a streaming use (turn k from turns [k - n, k]) instead of "
                             "its published offline whole-clip inference (the same prediction at every n)")
    parser.add_argument("--partner-motion", choices=PARTNER_MOTION_MODES, default="full",
                        help="partner motion the model is given: full (face tracker), pose (head rotation only) "
                             "or none; unobserved parts are zeros, or the model's absence codes "
                             "(partner_absent_embed); the metrics use the real partner")


def load_split(data_dir: Path, limit: int | None) -> list:
    from timar_model.data.dualtalk import list_samples

    if not data_dir.is_dir():
        raise FileNotFoundError(f"--data {data_dir}: not a directory (DualTalk layout expected)")
    samples = sorted(list_samples(data_dir), key=lambda s: (s.clip, s.agent_speaker))
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit must be >= 1, got {limit}")
        clips = sorted({s.clip for s in samples})[:limit]
        samples = [s for s in samples if s.clip in set(clips)]
    if not samples:
        raise FileNotFoundError(f"--data {data_dir}: no <clip>_speaker{{1,2}}.{{wav,npz}} pairs found")
    return samples


def run(args: argparse.Namespace) -> int:
    if (args.checkpoint is None) == (args.baseline is None):
        raise SystemExit("timar eval: give exactly one of --checkpoint DIR or --baseline NAME")
    history = parse_history(args.history)
    samples = load_split(args.data, args.limit)
    name = args.checkpoint.resolve().name if args.checkpoint else f"baseline-{args.baseline}"
    out = args.out or Path("outputs") / "eval" / name / args.data.resolve().name
    meta = {"data": str(args.data), "samples": len(samples), "max_seconds": args.max_seconds,
            "partner_motion": args.partner_motion}

    predictors: dict[int, Predictor] = {}
    view = args.partner_motion  # applied here for the baselines and DualTalk, by the generator for TIMAR
    if args.baseline:
        baseline = make_baseline(args.baseline, args.train_data)
        predictors = {n: baseline_predictor(baseline) for n in history}
        meta["baseline"] = args.baseline
    else:
        from timar_model.model.checkpoint import load_pretrained
        from timar_model.runtime.streaming import StreamingGenerator

        model = load_pretrained(args.checkpoint, device=args.device)
        window = model.config.context_turns
        if history[-1] + 1 > window:
            raise ValueError(
                f"--history {history[-1]} needs {history[-1] + 1} turns but {args.checkpoint} "
                f"was trained with context_turns={window} (largest n is {window - 1})"
            )
        if getattr(model.config, "model_type", "timar") == "dualtalk":  # the baseline: no sampling
            from timar_model.model.dualtalk_baseline import dualtalk_predictor

            inference = "sliding" if args.sliding_window else "offline"
            predictors = {n: dualtalk_predictor(model, inference, n) for n in history}
            meta.update(checkpoint=str(args.checkpoint), device=args.device, inference=inference)
        else:
            onnx_dir, export_tmp = args.onnx_dir, None
            if args.backend == "onnxruntime" and onnx_dir is None:  # one export for every history
                from timar_model.deploy.ort_backend import temporary_export

                export_tmp = temporary_export(model, args.dtype, args.steps)
                onnx_dir = export_tmp.name
            for n in history:
                gen = StreamingGenerator(
                    model,
                    device=args.device,
                    dtype=args.dtype,
                    context_turns=n + 1,
                    num_sampling_steps=args.steps,
                    temperature=args.temperature,
                    seed=args.seed,
                    noise_correlation=args.noise_correlation,
                    backend=args.backend,
                    onnx_dir=onnx_dir,
                    head_smoothing=args.head_smoothing,
                    partner_motion=view,
                )
                predictors[n] = generator_predictor(gen)
            view = "full"
            meta.update(checkpoint=str(args.checkpoint), seed=args.seed, device=args.device, dtype=args.dtype,
                        backend=args.backend,
                        temperature=gen.temperature, noise_correlation=gen.noise_correlation,
                        head_smoothing=gen.head_smoothing)  # the sampling used

    results = []
    for n in history:
        predict = partner_predictor(predictors[n], view)
        results.append(evaluate_predictor(predict, samples, out / f"n{n}", n, args.max_seconds, progress=True))
    write_results(out, results, meta)
    print(M.format_table({f"{name} n={r.history}": r.mean for r in results}))
    for r in results:
        print(
            f"n={r.history}: {len(r.per_sample)} samples; "
            f"jaw~speech corr pred {r.mean['jaw_speech_pred']:.3f} "
            f"gt {r.mean['jaw_speech_gt']:.3f}; jaw pred~gt {r.mean['jaw_pcc']:.3f}; "
            f"head speed / GT {r.mean['head_speed_ratio']:.2f}; "
            f"generation {r.seconds:.1f} s"
        )
    print(f"wrote {out}/metrics.json, {out}/summary.csv and n<history>/*.npy")
    return 0
