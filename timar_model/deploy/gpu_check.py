"""The GPU check behind `scripts/gpu_check.sh`: one command for a machine with a CUDA GPU that writes ONE JSON.

    bash scripts/gpu_check.sh                       # --device cuda, JSON to $OUT/gpu_check.json
    bash scripts/gpu_check.sh --device cpu --out x.json   # dry mode: the same stages on the CPU, small sizes

Stages, in this order, each in its own subprocess under a time limit (the whole run under --budget-s): a
stage that fails, crashes or runs out of time is recorded with its error and the next one runs; the JSON is
rewritten after every stage, so a run killed from outside still leaves what was done.

  env       python, torch, CUDA, the GPU, the CPU, onnx / onnxruntime and their providers, the git commit
  tests     the CUDA-marked tests (pytest -m cuda: streaming and a training step on the GPU, sync-free stages)
  bench     `small` and `large`, torch float32 and bfloat16 in one run (turns interleaved), the device's
            measured matmul peaks and each stage's share of its FLOP bound (timar bench)
  public    with --public-src DIR (a checkout of the public release; needs timm): first whether the
            checkout reproduces the reference fixture's stream (which the release made; the fixtures from
            ../shared/reference or $TIMAR_REFERENCE_DIR, a copy carried along), then `large`
            through the release's own sampling code (float32, as it runs) beside torch float32 and bfloat16
            on the same weights, turns interleaved (timar bench --variants public:float32,...); left out
            without it
  demo      the shipped model streams the demo clip (data/demo/test, or a synthetic signal without it) on the
            device in float32 and bfloat16: per-turn latency and, with the clip, the eval metrics
  compiled  bench again with torch.compile(mode="reduce-overhead"): CUDA graphs for the fixed-shape steady
            state (a full window every turn); compile time reported apart
  summary   the issue's targets: `large` bf16 per turn (15 ms on an H100-class GPU) and its speed-up over
            the public release on the same device (3x; from the public stage)

Dry mode (--device cpu): `small` only (the public stage: `reference-tiny`, the release has no log-mel front
end), 2 measured turns, torch.compile mode "default"; it exercises every stage here (tests/test_bench.py
runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("env", "tests", "bench", "public", "demo", "compiled")
# seconds per stage on a GPU; the dry run on a CPU gets `DRY_SCALE` times as long
STAGE_SECONDS = {"env": 60, "tests": 150, "bench": 150, "public": 120, "demo": 120, "compiled": 240}
DRY_SCALE = 3.0
LARGE_TARGET_MS = 15.0  # issue 15: `large` per turn in bf16 on an H100-class GPU, both speech encoders included
PUBLIC_TARGET_X = 3.0  # issue 15: `large` per turn against the public release on the same device and settings
DEMO_MODEL = ROOT / "models" / "timar-small-synth"
DEMO_DATA = ROOT / "data" / "demo" / "test"


def default_out() -> Path:
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"]) / "gpu_check.json"
    return ROOT / "outputs" / "gpu_check" / f"gpu_check-{time.strftime('%Y%m%d-%H%M%S')}.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/gpu_check.sh", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (dry mode)")
    p.add_argument("--out", type=Path, help="the JSON (default $OUT/gpu_check.json, else outputs/gpu_check/)")
    p.add_argument("--stages", help=f"comma list of {STAGES} (default: all; public only with --public-src)")
    p.add_argument(
        "--public-src",
        type=Path,
        default=os.environ.get("TIMAR_PUBLIC_SRC") or None,
        help="a checkout of the public TIMAR release, for the public stage (default $TIMAR_PUBLIC_SRC)",
    )
    p.add_argument("--budget-s", type=float, default=540.0, help="time for all stages together")
    p.add_argument("--turns", type=int, help="measured turns per bench (default 30 on a GPU, 2 dry)")
    p.add_argument("--presets", help="bench presets (default small,large on a GPU, small dry)")
    p.add_argument("--stage", help=argparse.SUPPRESS)  # internal: run one stage in this process
    p.add_argument("--stage-out", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


@dataclass
class Plan:
    device: str
    dry: bool
    turns: int
    presets: str
    compile_mode: str
    public_src: str | None
    public_presets: str


def plan_for(args: argparse.Namespace) -> Plan:
    dry = not args.device.startswith("cuda")
    return Plan(
        device=args.device,
        dry=dry,
        turns=args.turns or (2 if dry else 30),
        presets=args.presets or ("small" if dry else "small,large"),
        compile_mode="default" if dry else "reduce-overhead",
        public_src=str(args.public_src) if args.public_src else None,
        public_presets="reference-tiny" if dry else "large",
    )


# ----------------------------------------------------------------------------- orchestration
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.stage:
        return run_stage(args)
    plan = plan_for(args)
    out = args.out or default_out()
    out.parent.mkdir(parents=True, exist_ok=True)
    default = [s for s in STAGES if s != "public" or plan.public_src]
    stages = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else default
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        print(f"gpu_check: unknown stages {unknown}; known: {', '.join(STAGES)}", file=sys.stderr)
        return 2
    doc: dict = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": plan.device,
        "dry_run": plan.dry,
        "plan": plan.__dict__,
        "stages": {},
    }
    deadline = time.monotonic() + args.budget_s
    for name in stages:
        left = deadline - time.monotonic()
        limit = min(STAGE_SECONDS[name] * (DRY_SCALE if plan.dry else 1.0), left)
        if limit < 5:
            doc["stages"][name] = {"ok": False, "error": "skipped: the time budget (--budget-s) is spent"}
        else:
            doc["stages"][name] = run_stage_subprocess(name, args, limit)
        status = "ok" if doc["stages"][name]["ok"] else f"FAILED: {doc['stages'][name].get('error', '')[:200]}"
        print(f"[gpu_check] {name}: {status} ({doc['stages'][name].get('seconds', 0):.0f} s)", flush=True)
        doc["summary"] = summarise(doc)
        out.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    doc["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    out.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    print(f"[gpu_check] wrote {out}")
    print(json.dumps(doc["summary"], indent=1, default=str))
    return 0


def run_stage_subprocess(name: str, args: argparse.Namespace, limit: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        stage_out = Path(tmp) / f"{name}.json"
        cmd = [
            sys.executable,
            "-m",
            "timar_model.deploy.gpu_check",
            "--stage",
            name,
            "--stage-out",
            str(stage_out),
            "--device",
            args.device,
        ]
        if args.turns:
            cmd += ["--turns", str(args.turns)]
        if args.presets:
            cmd += ["--presets", args.presets]
        if args.public_src:
            cmd += ["--public-src", str(args.public_src)]
        env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}".rstrip(os.pathsep))
        t0 = time.monotonic()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
            rc, log = proc.returncode, proc.stdout + proc.stderr
            timed_out = False
        except subprocess.TimeoutExpired as e:
            rc, timed_out = None, True
            log = "".join(
                x.decode(errors="replace") if isinstance(x, bytes) else (x or "") for x in (e.stdout, e.stderr)
            )
        result: dict = {"seconds": time.monotonic() - t0, "returncode": rc, "log_tail": log[-3000:]}
        if stage_out.is_file():
            result.update(json.loads(stage_out.read_text()))
        result.setdefault("ok", rc == 0)
        if timed_out:
            result.update(ok=False, error=f"timed out after {limit:.0f} s")
        elif rc != 0 and "error" not in result:
            result["error"] = log.strip().splitlines()[-1] if log.strip() else f"exit status {rc}"
        return result


def run_stage(args: argparse.Namespace) -> int:
    plan = plan_for(args)
    fn = {
        "env": stage_env,
        "tests": stage_tests,
        "bench": stage_bench,
        "public": stage_public,
        "demo": stage_demo,
        "compiled": stage_compiled,
    }[args.stage]
    try:
        result = {"ok": True, **fn(plan)}
        code = 0 if result["ok"] else 1
    except Exception as e:  # recorded in the JSON; the orchestrator goes on with the next stage
        result = {
            "ok": False,
            "error": f"{type(e).__name__}: {' '.join(str(e).split())[:500]}",
            "traceback": traceback.format_exc()[-3000:],
        }
        code = 1
    args.stage_out.write_text(json.dumps(result, indent=1, default=str))
    return code


# ----------------------------------------------------------------------------- stages
def stage_env(plan: Plan) -> dict:
    import numpy as np
    import torch

    from timar_model.eval.bench import cpu_model

    info: dict = {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cuda_available": torch.cuda.is_available(),
        "torch_cuda": torch.version.cuda,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            gpu_memory_gb=props.total_memory / 2**30,
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
        )
    for mod in ("onnx", "onnxruntime", "transformers", "scipy", "safetensors", "soundfile", "timm"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # ImportError, or a broken install (timm fails on a torchvision of another torch)
            info[mod] = None
    if info["onnxruntime"]:
        import onnxruntime

        info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    try:
        info["git_commit"] = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.TimeoutExpired):
        info["git_commit"] = None
    ok = plan.dry or info["cuda_available"]
    return {"ok": ok, **info, **({} if ok else {"error": "torch sees no CUDA device"})}


def stage_tests(plan: Plan) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "cuda",
        "tests/test_device_generic.py",
        "-q",
        "-rfEs",
        "-p",
        "no:cacheprovider",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    last = lines[-1] if lines else ""
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", last)}
    # pytest exits 5 when nothing ran; on the CPU (dry) every CUDA test is skipped, which is the expected result
    ok = proc.returncode == 0 and (plan.dry or counts.get("passed", 0) > 0)
    result = {
        "ok": ok,
        "command": " ".join(cmd[1:]),
        "counts": counts,
        "summary": lines[-1] if lines else "",
        "output_tail": (proc.stdout + proc.stderr)[-4000:],
    }
    if not ok:
        result["error"] = lines[-1] if lines else f"pytest exit status {proc.returncode}"
    return result


def _bench(plan: Plan, compile_mode: str, public: bool = False) -> dict:
    import torch

    from timar_model.eval.bench import bench_preset, host_info, load_average, measure_peaks

    with torch.inference_mode():
        peaks = measure_peaks(plan.device, 0.3 if plan.dry else 1.0)
    results, errors = [], {}
    variants = [("torch", "float32"), ("torch", "bfloat16")]
    if public:
        variants = [("public", "float32"), *variants]
    for name in (plan.public_presets if public else plan.presets).split(","):
        try:
            results += bench_preset(
                name,
                plan.turns,
                plan.device,
                "float32",
                0,
                variants=variants,
                compile_mode=compile_mode,
                peaks=peaks,
                public_src=plan.public_src if public else None,
            )
        except Exception as e:  # e.g. out of memory, a compile failure: the other presets still run
            errors[name] = f"{type(e).__name__}: {' '.join(str(e).split())[:400]}"
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    out = {
        "host": host_info(plan.device),
        "peaks": peaks,
        "load_average": load_average(),
        "results": results,
        "ok": not errors,
    }
    if errors:
        out.update(errors=errors, error="; ".join(f"{k}: {v}" for k, v in errors.items()))
    return out


def stage_bench(plan: Plan) -> dict:
    return _bench(plan, "none")


def stage_public(plan: Plan) -> dict:
    if not plan.public_src:
        raise ValueError("the public stage needs a checkout of the public release (--public-src DIR)")
    from timar_model.eval.public_release import REFERENCE_DIR, reference_stream_check

    # first: is the checkout the release? (it must reproduce the fixture stream the release made; CPU, seconds)
    if (REFERENCE_DIR / "timar_tiny").is_dir():
        check = reference_stream_check(plan.public_src)
    else:
        check = {"ok": None, "error": f"reference fixtures not found at {REFERENCE_DIR}"}
    out = {"public_src": plan.public_src, "reference_check": check, **_bench(plan, "none", public=True)}
    if check["ok"] is False:
        out.update(ok=False, error=f"the checkout does not reproduce the reference stream: {check}")
    return out


def stage_compiled(plan: Plan) -> dict:
    return {"compile_mode": plan.compile_mode, **_bench(plan, plan.compile_mode)}


def read_wav16k(path: Path):
    """Mono float32 16 kHz audio: soundfile where installed, else the standard library (16-bit PCM)."""
    import numpy as np

    try:
        import soundfile  # noqa: F401

        from timar_model.data.dualtalk import load_audio16k

        return load_audio16k(path)
    except ImportError:
        import wave

        with wave.open(str(path)) as w:
            if w.getsampwidth() != 2 or w.getframerate() != 16000:
                raise ValueError(f"{path}: without soundfile only 16-bit 16 kHz WAV is read") from None
            x = np.frombuffer(w.readframes(w.getnframes()), np.int16).reshape(-1, w.getnchannels())
        return (x.mean(axis=1) / 32768.0).astype(np.float32)


@dataclass
class DemoSample:
    clip: str
    agent_speaker: int
    agent_audio: object
    user_audio: object
    agent_motion: object
    user_motion: object


def demo_samples(seconds: int) -> tuple[list[DemoSample], str]:
    """Both speaker roles of the first demo clip, or (no data/demo) a synthetic signal without metrics."""
    import numpy as np

    from timar_model.data.dualtalk import load_motion56

    wavs = sorted(DEMO_DATA.glob("*_speaker1.wav")) if DEMO_DATA.is_dir() else []
    if wavs:
        clip = wavs[0].name[: -len("_speaker1.wav")]
        audio = [read_wav16k(DEMO_DATA / f"{clip}_speaker{k}.wav") for k in (1, 2)]
        motion = [load_motion56(DEMO_DATA / f"{clip}_speaker{k}.npz") for k in (1, 2)]
        return [DemoSample(clip, k + 1, audio[k], audio[1 - k], motion[k], motion[1 - k]) for k in (0, 1)], str(
            DEMO_DATA / clip
        )
    rng = np.random.default_rng(0)
    t = np.arange(seconds * 16000) / 16000
    speech = (0.1 * rng.standard_normal(t.size) * (np.sin(2 * np.pi * 0.5 * t) > 0)).astype(np.float32)
    motion = np.zeros((seconds * 25, 56), np.float32)
    return [DemoSample("synthetic", 1, speech, speech[::-1].copy(), motion, motion)], "synthetic (no data/demo/test)"


def stage_demo(plan: Plan) -> dict:
    import numpy as np

    from timar_model.eval.evaluate import evaluate_predictor, generator_predictor
    from timar_model.model.checkpoint import load_pretrained
    from timar_model.runtime.streaming import StreamingGenerator

    seconds = 8 if plan.dry else 24
    samples, source = demo_samples(seconds)
    with_metrics = source.startswith(str(DEMO_DATA))
    out: dict = {"model": str(DEMO_MODEL.relative_to(ROOT)), "data": source, "demo_seconds": seconds, "runs": {}}
    for dtype in ("float32", "bfloat16"):
        gen = StreamingGenerator(load_pretrained(DEMO_MODEL), device=plan.device, dtype=dtype, seed=0)
        timings: list[dict] = []
        step = gen.step

        def timed_step(*a, _step=step, _gen=gen, _timings=timings, **k):
            y = _step(*a, **k)
            _timings.append(_gen.last_timings)
            return y

        gen.step = timed_step
        predict = generator_predictor(gen)
        run: dict = {}
        if with_metrics:
            r = evaluate_predictor(predict, samples, None, gen.context_turns - 1, seconds)
            run["metrics"] = {k: r.mean[k] for k in ("fid_exp", "mse_jaw", "p_fid_pose", "jaw_speech_pred")}
            run["generation_seconds"] = r.seconds
        else:
            pred = predict(samples[0], seconds)
            run["motion_abs_max"] = float(np.abs(pred).max())
        warm = timings[gen.context_turns :] or timings  # full-window turns
        run["turns"] = len(timings)
        run["per_turn_ms"] = {k: 1e3 * float(np.median([t[k] for t in warm])) for k in warm[0]}
        out["runs"][dtype] = run
    return out


# ----------------------------------------------------------------------------- summary
def summarise(doc: dict) -> dict:
    """The figures the issue asks for, pulled from the stages (None where a stage did not produce them)."""

    def bench_total(stage: str, preset: str, dtype: str, backend: str = "torch") -> float | None:
        for r in doc["stages"].get(stage, {}).get("results", []):
            if r["preset"] == preset and r["dtype"] == dtype and r["backend"] == backend:
                return r["total_median_ms"]
        return None

    public: dict | str = "not compared: run with --public-src DIR (a checkout of the public release)"
    if doc["stages"].get("public", {}).get("results"):
        public = {"checkout_reproduces_reference": doc["stages"]["public"].get("reference_check", {}).get("ok")}
        for preset in sorted({r["preset"] for r in doc["stages"]["public"]["results"]}):
            base = bench_total("public", preset, "float32", backend="public")
            if base is None:
                continue
            speedup = {
                f"torch:{dt}": base / ms
                for dt in ("float32", "bfloat16")
                if (ms := bench_total("public", preset, dt)) is not None
            }
            # the project's fastest turn anywhere in this check (compiled included; other runs than the release's)
            own = [
                ms
                for st in ("bench", "compiled")
                for dt in ("float32", "bfloat16")
                if (ms := bench_total(st, preset, dt)) is not None
            ]
            best = max([*speedup.values(), *(base / ms for ms in own)], default=None)
            public[preset] = {
                "public_float32_ms": base,
                "speedup_same_run": speedup,
                "speedup_best": best,
                "target_x": PUBLIC_TARGET_X,
                "meets_target": None if best is None else best >= PUBLIC_TARGET_X,
            }

    env = doc["stages"].get("env", {})
    large_bf16 = [
        v
        for v in (bench_total("bench", "large", "bfloat16"), bench_total("compiled", "large", "bfloat16"))
        if v is not None
    ]
    best = min(large_bf16) if large_bf16 else None
    return {
        "device_name": env.get("gpu") or env.get("cpu"),
        "stages_ok": {k: v.get("ok", False) for k, v in doc["stages"].items()},
        "per_turn_ms": {
            f"{stage}:{preset}:{dtype}": bench_total(stage, preset, dtype)
            for stage in ("bench", "compiled")
            for preset in ("small", "large")
            for dtype in ("float32", "bfloat16")
            if bench_total(stage, preset, dtype) is not None
        },
        "large_bf16_best_ms": best,
        "large_bf16_target_ms": LARGE_TARGET_MS,
        "large_bf16_meets_target": None if best is None else best <= LARGE_TARGET_MS,
        "public_release": public,
    }


if __name__ == "__main__":
    sys.exit(main())
