"""`timar bench`: per-turn streaming latency (median / p95, split speech / backbone / diffusion), parameter
counts and FLOPs per turn of each preset, with random weights, on the current device; the host (CPU model,
GPU name), its measured matmul peak per dtype, and each stage's share of its FLOP bound.

    timar bench --presets small,large --dtype bfloat16
    timar bench --presets large --variants torch:bfloat16,onnxruntime:int8   # compared in one run
    timar bench --presets small --device cuda --compile reduce-overhead      # torch.compile + CUDA graphs
    timar bench --presets large --variants public:float32,torch:bfloat16 --public-src DIR  # vs the release

The window is filled first (context_turns warm-up turns) so every measured turn runs on a full window.
With several variants (backend:dtype) the same weights run in one process and the turns alternate between
the variants (the order rotates every turn), so a load that comes and goes hits all of them alike; the
speed-up of each over the first is the ratio of the median totals. The variant public:float32 is the public
release's own sampling code on the same weights (a checkout at --public-src; eval/public_release.py).
The 1-minute load average is printed before and after: other processes on the CPU inflate the numbers (with
torch using every core, one busy core can make them several times slower; try --threads 1).

FLOP bound: a stage's FLOPs (counted by torch.utils.flop_counter on the float32 torch path; every backend and
dtype does the same arithmetic; the public release's, which samples every agent position of the window,
counted on its own code) divided by the measured peak of the dtype its matmuls run in (torch bf16:
the backbone in bf16, speech and diffusion float32; onnxruntime int8: the backbone's linears int8). share =
bound / measured latency: 100 % would be a stage that does nothing but peak-speed matmuls.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
import weakref
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from timar_model.model.config import get_preset
from timar_model.model.timar import TIMAR
from timar_model.runtime.streaming import BACKENDS, StreamingGenerator

STAGES = ("speech", "backbone", "diffusion")
VARIANT_BACKENDS = (*BACKENDS, "public")  # public: the public release's sampling code (float32 only)
BENCH_DTYPES = ("float32", "bfloat16", "float16", "int8")
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")
PEAK_DTYPES = ("float32", "bfloat16", "float16", "int8")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--presets", default="small", help="comma-separated presets (small,base,large,huge,...)")
    parser.add_argument("--turns", type=int, default=20, help="measured turns per preset (after warm-up)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=BENCH_DTYPES)
    parser.add_argument("--backend", default="torch", choices=BACKENDS)
    parser.add_argument(
        "--variants",
        help="comma-separated backend:dtype pairs measured in one run, e.g. torch:bfloat16,onnxruntime:int8 "
        "(overrides --backend/--dtype; speed-ups are against the first)",
    )
    parser.add_argument(
        "--public-src",
        type=Path,
        help="a checkout of the public TIMAR release, for the variant public:float32 (needs timm)",
    )
    parser.add_argument(
        "--compile",
        default="none",
        choices=COMPILE_MODES,
        help="torch backend: torch.compile the three stages for the full-window shape (reduce-overhead: with "
        "CUDA graphs on a GPU); compile time is reported apart",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument(
        "--max-params-gb",
        type=float,
        default=None,
        help="skip presets whose fp32 weights exceed this (default: 40%% of RAM)",
    )
    parser.add_argument("--peak-seconds", type=float, default=0.5, help="time spent per dtype measuring the peak")
    parser.add_argument(
        "--memory", action="store_true", help="also the bytes of weights, window and per-turn activation peak"
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument("--seed", type=int, default=0)


# ----------------------------------------------------------------------------- host
def total_ram_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError):
        return 8.0


def load_average() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo, else platform), e.g. 'Intel(R) Xeon(R) Processor'."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def host_info(device: str) -> dict:
    from timar_model.runtime.streaming import native_bf16

    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__, "device": device,
            "native_bf16": native_bf16(device)}  # what the agent's dtype "auto" goes by
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(dev)
        info["cuda"] = torch.version.cuda
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(dtype: str, device: str = "cpu", seconds: float = 0.5, n: int | None = None) -> float | None:
    """Measured dense matmul throughput (TFLOP/s, or TOP/s for int8) of an n x n x n product: the median of
    repeated products over about `seconds` after one warm-up. int8 on the CPU goes through onnxruntime's
    dynamically quantised MatMul (the int8 backend's kernel); None where the dtype does not run on the device.
    Without `n`: 8192 on a GPU, 2048 on a CPU, smaller where one product of that size would take longer than
    `seconds` (a dtype the device only emulates, as most CPUs do float16)."""
    dev = torch.device(device)
    if dtype == "int8":
        return _int8_peak_onnxruntime(n or 2048, seconds) if dev.type == "cpu" else None
    try:
        if n is None:
            n = _affordable_n(dtype, dev, 8192 if dev.type == "cuda" else 2048, seconds)
        a = torch.randn(n, n, device=dev).to(getattr(torch, dtype))
        b = torch.randn(n, n, device=dev).to(getattr(torch, dtype))
        a @ b
        _sync(dev)
    except (RuntimeError, TypeError):  # a dtype without a matmul kernel on this device
        return None
    times: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 3:
        t0 = time.perf_counter()
        a @ b
        _sync(dev)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / float(np.median(times)) / 1e12


def _affordable_n(dtype: str, dev: torch.device, n_max: int, seconds: float, n_probe: int = 256) -> int:
    """The largest n <= n_max (a multiple of 64, at least n_probe) whose n x n x n product in `dtype` takes
    about `seconds`, extrapolated from one timed product of n_probe (after a warm-up one)."""
    a = torch.randn(n_probe, n_probe, device=dev).to(getattr(torch, dtype))
    a @ a
    _sync(dev)
    t0 = time.perf_counter()
    a @ a
    _sync(dev)
    per_flop = max(time.perf_counter() - t0, 1e-9) / n_probe**3
    n = int((seconds / per_flop) ** (1 / 3)) // 64 * 64
    return max(n_probe, min(n_max, n))


def _int8_peak_onnxruntime(n: int, seconds: float) -> float | None:
    """The int8 backend's kernel: a float32 MatMul with a constant n x n weight, quantised as `timar export
    --int8` quantises the backbone (int8 weights, activations quantised per call)."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        from timar_model.deploy.quantize import quantize_linears
    except ImportError:
        return None
    import tempfile

    rng = np.random.default_rng(0)
    w = (0.02 * rng.standard_normal((n, n))).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "w"], ["y"])],
        "int8_peak",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])],
        [numpy_helper.from_array(w, "w")],
    )
    with tempfile.TemporaryDirectory(prefix="timar-peak-") as tmp:
        src = Path(tmp) / "mm.onnx"
        src.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
        quantize_linears(src, Path(tmp) / "mm.int8.onnx")
        so = ort.SessionOptions()
        so.intra_op_num_threads = torch.get_num_threads()
        sess = ort.InferenceSession(str(Path(tmp) / "mm.int8.onnx"), so, providers=["CPUExecutionProvider"])
    a = rng.standard_normal((n, n)).astype(np.float32)
    sess.run(None, {"a": a})
    times: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 3:
        t0 = time.perf_counter()
        sess.run(None, {"a": a})
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / float(np.median(times)) / 1e12


def measure_peaks(device: str = "cpu", seconds: float = 0.5) -> dict[str, float | None]:
    return {d: matmul_peak(d, device, seconds) for d in PEAK_DTYPES}


def stage_dtypes(backend: str, dtype: str) -> dict[str, tuple[str, str]]:
    """Per stage, the dtypes its (linear layers, other matmuls: attention, convolutions) run in for a
    backend:dtype variant (see the module docstring)."""
    f32 = ("float32", "float32")
    if dtype in ("bfloat16", "float16"):
        return {"speech": f32, "backbone": (dtype, dtype), "diffusion": f32}
    if backend == "onnxruntime" and dtype == "int8":
        return {"speech": ("int8", "float32"), "backbone": ("int8", "float32"), "diffusion": f32}
    return dict.fromkeys(STAGES, f32)


# ----------------------------------------------------------------------------- model
def estimate_params(config) -> int:
    """Parameters of a preset without building it (meta device)."""
    with torch.device("meta"):
        model = TIMAR(config)
    return sum(p.numel() for p in model.parameters())


def stage_flops(gen: StreamingGenerator, inputs, linear_only: bool = False) -> dict[str, int]:
    """FLOPs of each stage of one turn (torch path), counted while running a turn on `gen`'s current window.
    linear_only: only those of the linear layers (mm / addmm; not attention, not convolutions)."""
    us, um, ag = inputs
    audio = np.stack([gen._normalise("user", us), gen._normalise("agent", ag)])
    out: dict[str, int] = {}

    def count(c) -> int:
        if not linear_only:
            return c.get_total_flops()
        ops = c.get_flop_counts().get("Global", {})
        return sum(v for op, v in ops.items() if str(op).split(".")[-1] in ("mm", "addmm"))

    with torch.inference_mode():
        with flop_counter() as c:
            gen._turns.append(gen.encode_turn(audio, um))
        out["speech"] = count(c)
        with flop_counter() as c:
            z = gen.run_backbone(torch.cat(list(gen._turns), dim=1))
        out["backbone"] = count(c)
        with flop_counter() as c:
            gen.sample(z)
        out["diffusion"] = count(c)
    return out


def public_stage_flops(gen, inputs) -> dict[str, int]:
    """FLOPs of each stage of one turn of a PublicReleaseGenerator (the release's code), on its window."""
    out = dict.fromkeys(STAGES, 0)

    @contextmanager
    def count(stage: str):
        with flop_counter() as c:
            yield
        out[stage] += c.get_total_flops()

    gen.stage_hook = count
    try:
        gen.step(*inputs)
    finally:
        gen.stage_hook = None
    return out


def flop_counter():
    """torch's FlopCounterMode, also counting the CPU flash-attention kernel (which it leaves at 0 FLOPs:
    scaled_dot_product_attention in float32 on a CPU)."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_flash_sdpa(q, k, v, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(q, k, v)

    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return FlopCounterMode(display=False, custom_mapping={op: cpu_flash_sdpa} if op is not None else None)


class _LiveTensorBytes(TorchDispatchMode):
    """Bytes of tensor storage allocated inside the mode and still alive: current and peak. Storages that
    existed before (weights, the window) are not counted, also when an op returns a view of them."""

    def __init__(self, existing: set[int]):
        super().__init__()
        self.existing = existing
        self.live: dict[int, list[int]] = {}  # data_ptr -> [bytes, live tensors]
        self.current = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr == 0 or ptr in self.existing:
            return
        if ptr not in self.live:
            self.live[ptr] = [storage.nbytes(), 0]
            self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)
        self.live[ptr][1] += 1
        weakref.finalize(t, self._release, ptr)

    def _release(self, ptr: int) -> None:
        entry = self.live.get(ptr)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[ptr]


def memory_of(gen: StreamingGenerator, inputs) -> dict[str, int]:
    """Bytes: the weights the generator holds (a bf16 generator keeps the float32 model and the bf16 copy of
    its blocks), the window of turn tokens, and the peak of the tensors one full-window turn allocates
    (activations, on the torch path; allocator caches and kernel workspaces are not seen)."""
    weights = {}
    for m in (gen.model, gen.net):
        for t in (*m.parameters(), *m.buffers()):
            weights[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    window = sum(t.untyped_storage().nbytes() for t in gen._turns)
    existing = set(weights) | {t.untyped_storage().data_ptr() for t in gen._turns}
    tracker = _LiveTensorBytes(existing)
    with torch.inference_mode(), tracker:
        gen.step(*inputs)
    return {"weights": sum(weights.values()), "window": window, "activations_peak": tracker.peak}


def device_memory_peak(gen: StreamingGenerator, inputs) -> dict[str, int]:
    """On a GPU: the caching allocator's peak above what was allocated before one full-window turn."""
    if gen.device.type != "cuda":
        return {}
    torch.cuda.synchronize(gen.device)
    before = torch.cuda.memory_allocated(gen.device)
    torch.cuda.reset_peak_memory_stats(gen.device)
    gen.step(*inputs)
    return {"cuda_allocated": before, "cuda_turn_peak": torch.cuda.max_memory_allocated(gen.device) - before}


def parse_variants(text: str | None, backend: str, dtype: str) -> list[tuple[str, str]]:
    if not text:
        pairs = [(backend, dtype)]
    else:
        pairs = []
        for item in text.split(","):
            b, _, d = item.strip().partition(":")
            pairs.append((b, d or "float32"))
    for b, d in pairs:
        if b not in VARIANT_BACKENDS or d not in BENCH_DTYPES:
            raise ValueError(f"--variants: {b}:{d}; backends {VARIANT_BACKENDS}, dtypes {BENCH_DTYPES}")
        if b == "torch" and d not in ("float32", "bfloat16"):
            raise ValueError(f"--variants: torch runs float32 or bfloat16, not {d} (onnxruntime:{d})")
        if b == "public" and d != "float32":
            raise ValueError(f"--variants: the public release runs float32 only, not {d}")
    return pairs


def compile_stages(gen: StreamingGenerator, mode: str) -> None:
    """torch.compile the speech encoder, the backbone and the diffusion net of a torch-backend generator, for
    static shapes (the full window; mode reduce-overhead records CUDA graphs on a GPU). The generator gets a
    view of its network with compiled entry points; the model and other generators are left as they were."""
    kw = {"dynamic": False} | ({} if mode == "default" else {"mode": mode})
    net = gen.net
    view = copy.copy(net)  # shares every parameter; own module table and own (compiled) entry points
    view._modules = dict(net._modules)
    view.forward_backbone = torch.compile(net.forward_backbone, **kw)
    enc = copy.copy(net.speech_encoder)
    enc.forward = torch.compile(net.speech_encoder.forward, **kw)
    view._modules["speech_encoder"] = enc
    if net.config.head == "diffusion":
        head = copy.copy(net.diffloss)
        head._modules = dict(net.diffloss._modules)
        inner = copy.copy(net.diffloss.net)
        inner.forward = torch.compile(net.diffloss.net.forward, **kw)
        head._modules["net"] = inner
        view._modules["diffloss"] = head
    gen.net = view


def bench_preset(
    name: str,
    turns: int,
    device: str,
    dtype: str,
    seed: int,
    backend: str = "torch",
    variants: list[tuple[str, str]] | None = None,
    compile_mode: str = "none",
    peaks: dict[str, float | None] | None = None,
    memory: bool = False,
    public_src: str | Path | None = None,
) -> list[dict]:
    """One result dict per variant (backend, dtype) on the same random weights. memory: also the bytes of
    weights, window and activation peak of each torch variant (memory_of; on a GPU the allocator's peak too).
    public_src: the public release's checkout, for the variant ("public", "float32")."""
    variants = variants or [(backend, dtype)]
    if any(b == "public" for b, _ in variants) and public_src is None:
        raise ValueError("the variant public:float32 needs a checkout of the public release (--public-src DIR)")
    torch.manual_seed(seed)
    config = get_preset(name)
    with torch.device(device):  # random init where the model runs (a large model initialises fast on a GPU)
        model = TIMAR(config).eval()
    n_speech = sum(p.numel() for p in model.speech_encoder.parameters())
    n_total = sum(p.numel() for p in model.parameters())
    rng = np.random.default_rng(seed)

    def turn_inputs():
        return (
            rng.standard_normal(config.samples_per_turn).astype(np.float32),
            (0.1 * rng.standard_normal((config.frames_per_turn, config.motion_dim))).astype(np.float32),
            rng.standard_normal(config.samples_per_turn).astype(np.float32),
        )

    gens = []
    onnx_dirs: dict[str, str] = {}
    tmp = None
    for b, d in variants:
        onnx_dir = None
        if b == "onnxruntime":  # one export per dtype family, shared by the variants that need it
            family = "float16" if d == "float16" else "float32"
            if family not in onnx_dirs:
                import tempfile

                from timar_model.deploy.onnx_export import export_model

                tmp = tmp or tempfile.TemporaryDirectory(prefix="timar-bench-")
                onnx_dirs[family] = f"{tmp.name}/{family}"
                int8 = any(v == (b, "int8") for v in variants)
                export_model(model, onnx_dirs[family], dtype=family, int8=int8, check=False, log=lambda *a: None)
            onnx_dir = onnx_dirs[family]
        if b == "public":
            from timar_model.eval.public_release import PublicReleaseGenerator

            gens.append(PublicReleaseGenerator(model, public_src, device=device, seed=seed))
            continue
        gens.append(StreamingGenerator(model, device=device, dtype=d, seed=seed, backend=b, onnx_dir=onnx_dir))
    for _ in range(config.context_turns):  # fill every window
        x = turn_inputs()
        for g in gens:
            g.step(*x)
    mem: list[dict | None] = [None] * len(gens)
    if memory:
        for k, ((b, _), g) in enumerate(zip(variants, gens)):
            if b == "torch":
                mem[k] = memory_of(g, turn_inputs()) | device_memory_peak(g, turn_inputs())
    counter = StreamingGenerator(model, device=device, seed=seed)  # float32 torch path, on the same full window
    filled = next((g for g in gens if isinstance(g, StreamingGenerator)), None)
    if filled is not None:
        counter._turns.extend(t.to(counter.device) for t in filled._turns)
    else:
        for _ in range(config.context_turns):
            counter.step(*turn_inputs())
    x = turn_inputs()
    flops = stage_flops(counter, x)
    counter._turns.pop()  # the same turn again, for the linear layers' share
    linear_flops = stage_flops(counter, x, linear_only=True)
    del counter
    own_flops = {k: (flops, linear_flops) for k in range(len(gens))}
    for k, g in enumerate(gens):
        if not isinstance(g, StreamingGenerator):  # the public release: its own arithmetic, all float32
            public = public_stage_flops(g, x)
            own_flops[k] = (public, public)
    compile_s = None
    if compile_mode != "none":
        t0 = time.perf_counter()
        for (b, _), g in zip(variants, gens):
            if b == "torch":
                compile_stages(g, compile_mode)
        for _ in range(3):  # compile (and record the CUDA graphs) on the full-window shape
            x = turn_inputs()
            for g in gens:
                g.step(*x)
        compile_s = time.perf_counter() - t0
    rows: list[list[dict]] = [[] for _ in gens]
    for i in range(turns):
        x = turn_inputs()
        order = list(range(len(gens)))
        order = order[i % len(order) :] + order[: i % len(order)]
        for k in order:
            gens[k].step(*x)
            rows[k].append(gens[k].last_timings)
    results = []
    for k, ((b, d), r, m) in enumerate(zip(variants, rows, mem)):
        flops, linear_flops = own_flops[k]
        out = {
            "preset": name,
            "backend": b,
            "dtype": d,
            "device": device,
            "compile": compile_mode,
            "compile_seconds": compile_s,
            "turns": turns,
            "params_timar": n_total - n_speech,
            "params_speech": n_speech,
            "flops": sum(flops.values()),
            "stage_flops": flops,
        }
        if m is not None:
            out["memory_bytes"] = m
        for key in (*STAGES, "total"):
            v = np.array([t[key] for t in r]) * 1e3
            out[f"{key}_median_ms"] = float(np.median(v))
            out[f"{key}_p95_ms"] = float(np.percentile(v, 95))
        out["rtf"] = out["total_median_ms"] / 1e3 / (config.frames_per_turn / config.motion_fps)
        if peaks:
            out["bound"] = flop_bound(flops, linear_flops, stage_dtypes(b, d), peaks, out)
        results.append(out)
    first = results[0]["total_median_ms"]
    for r in results:
        r["speedup_vs_first"] = first / r["total_median_ms"]
    if tmp is not None:
        del gens
        tmp.cleanup()
    return results


def flop_bound(flops: dict[str, int], linear: dict[str, int], dtypes: dict, peaks: dict, result: dict) -> dict:
    """Per stage: the time its FLOPs need at the peaks of their dtypes (linear layers and the rest apart; ms)
    and that bound's share of the measured median latency."""
    out = {}
    for s in STAGES:
        (lin_dt, rest_dt), lin = dtypes[s], linear[s]
        parts = {lin_dt: flops[s]} if lin_dt == rest_dt else {lin_dt: lin, rest_dt: flops[s] - lin}
        if any(not peaks.get(d) for d, f in parts.items() if f):
            out[s] = {"dtypes": parts, "bound_ms": None, "share": None}
            continue
        bound_ms = sum(f / (peaks[d] * 1e12) * 1e3 for d, f in parts.items() if f)
        share = bound_ms / max(result[f"{s}_median_ms"], 1e-9)
        out[s] = {"dtypes": parts, "bound_ms": bound_ms, "share": share}
    total_bound = sum(v["bound_ms"] for v in out.values() if v["bound_ms"] is not None)
    out["total"] = {"bound_ms": total_bound, "share": total_bound / max(result["total_median_ms"], 1e-9)}
    return out


# ----------------------------------------------------------------------------- CLI
def format_peaks(peaks: dict[str, float | None]) -> str:
    unit = {"int8": "TOP/s (onnxruntime)"}
    return ", ".join(f"{k} {v:.3g} {unit.get(k, 'TFLOP/s')}" for k, v in peaks.items() if v) or "n/a"


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = parse_variants(args.variants, args.backend, args.dtype)
    if any(b == "public" for b, _ in variants):  # fail before measuring anything
        if args.public_src is None:
            raise ValueError("--variants public:float32 needs --public-src DIR (a checkout of the public release)")
        from timar_model.eval.public_release import import_public_timar

        import_public_timar(args.public_src)
    limit_gb = args.max_params_gb if args.max_params_gb is not None else 0.4 * total_ram_gb()
    host = host_info(args.device)
    print(f"host: {host['cpu']}, {host['cores']} cores" + (f"; GPU {host['gpu']}" if "gpu" in host else "")
          + f"; bf16 in hardware: {'yes' if host['native_bf16'] else 'no (emulated)'}")
    print(
        f"device {args.device}, variants {', '.join(f'{b}:{d}' for b, d in variants)}, torch threads "
        f"{torch.get_num_threads()}, {args.turns} turns per preset on a full window; load average (1 min) "
        f"{load_average()}"
    )
    with torch.inference_mode() if args.device == "cpu" else nullcontext():
        peaks = measure_peaks(args.device, args.peak_seconds)
    print(f"matmul peak (measured, median): {format_peaks(peaks)}")
    header = (
        f"{'preset':<15}{'variant':<22}{'params M':>10}{'speech M':>10}{'GFLOP/turn':>12}"
        f"{'speech ms':>16}{'backbone ms':>16}{'diffusion ms':>16}{'total ms':>16}{'RTF':>7}{'x first':>9}"
    )
    print(header)
    print(" " * 85 + "(median / p95 for each stage)")
    doc = {"host": host, "peaks": peaks, "load_before": load_average(), "results": [], "skipped": {}}
    code = 0
    for name in [p.strip() for p in args.presets.split(",") if p.strip()]:
        try:
            n = estimate_params(get_preset(name))
        except ValueError as e:
            print(f"{name:<15}skipped: {e}")
            doc["skipped"][name] = str(e)
            code = 2
            continue
        if n * 4 / 1e9 > limit_gb:
            msg = (
                f"{n / 1e6:.0f} M parameters need {n * 4 / 1e9:.1f} GB in fp32, over the {limit_gb:.1f} GB "
                "limit of this machine (--max-params-gb)"
            )
            print(f"{name:<15}skipped: {msg}")
            doc["skipped"][name] = msg
            continue
        try:
            results = bench_preset(
                name,
                args.turns,
                args.device,
                args.dtype,
                args.seed,
                args.backend,
                variants,
                args.compile,
                peaks,
                memory=args.memory,
                public_src=args.public_src,
            )
        except (RuntimeError, MemoryError) as e:  # e.g. out of memory on the device
            msg = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
            print(f"{name:<15}skipped: {msg}")
            doc["skipped"][name] = msg
            continue
        doc["results"].extend(results)
        for r in results:
            print_row(r)
    doc["load_after"] = load_average()
    print(f"load average (1 min) after: {doc['load_after']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {args.json}")
    return code


def print_row(r: dict) -> None:
    def cell(key):
        return f"{r[f'{key}_median_ms']:7.1f}/{r[f'{key}_p95_ms']:<7.1f}"

    variant = f"{r['backend']}:{r['dtype']}" + ("" if r["compile"] == "none" else f"+{r['compile']}")
    print(
        f"{r['preset']:<15}{variant:<22}{r['params_timar'] / 1e6:>10.2f}{r['params_speech'] / 1e6:>10.2f}"
        f"{r['flops'] / 1e9:>12.2f}{cell('speech'):>16}{cell('backbone'):>16}{cell('diffusion'):>16}"
        f"{cell('total'):>16}{r['rtf']:>7.3f}{r['speedup_vs_first']:>8.2f}x"
    )
    bound = r.get("bound")
    if bound:
        parts = []
        for s in STAGES:
            b = bound[s]
            split = " + ".join(f"{f / 1e9:.3g} {d}" for d, f in b["dtypes"].items() if f)
            share = "n/a" if b["share"] is None else f"{100 * b['share']:.0f} %"
            parts.append(f"{s} {share} ({split or 0} GFLOP)")
        total = bound["total"]
        print(f"{'':<15}  share of the FLOP bound: {'; '.join(parts)}; turn {100 * total['share']:.0f} %")
    m = r.get("memory_bytes")
    if m:
        gpu = f"; GPU allocator: turn peak {m['cuda_turn_peak'] / 2**20:.1f} MiB" if "cuda_turn_peak" in m else ""
        print(
            f"{'':<15}  memory: weights {m['weights'] / 2**20:.1f} MiB, window {m['window'] / 2**20:.2f} MiB, "
            f"activation peak of a turn {m['activations_peak'] / 2**20:.1f} MiB{gpu}"
        )
    if r.get("compile_seconds") is not None:
        print(f"{'':<15}  compile + capture: {r['compile_seconds']:.1f} s (3 turns, not in the figures)")
