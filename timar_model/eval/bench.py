"""`timar bench`: per-turn streaming latency (median / p95, split speech / backbone / diffusion), parameter
counts and FLOPs per turn of each preset, with random weights, on the current device.

The window is filled first (context_turns warm-up turns) so every measured turn runs on a full window.
The 1-minute load average is printed before and after: other processes on the CPU inflate the numbers
(with torch using every core, one busy core can make them several times slower; try --threads 1).
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch

from timar_model.model.config import get_preset
from timar_model.model.timar import TIMAR
from timar_model.runtime.streaming import StreamingGenerator


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--presets", default="small", help="comma-separated presets (small,base,large,huge,...)")
    parser.add_argument("--turns", type=int, default=20, help="measured turns per preset (after warm-up)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument(
        "--max-params-gb",
        type=float,
        default=None,
        help="skip presets whose fp32 weights exceed this (default: 40%% of RAM)",
    )
    parser.add_argument("--seed", type=int, default=0)


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


def estimate_params(config) -> int:
    """Parameters of a preset without building it (meta device)."""
    with torch.device("meta"):
        model = TIMAR(config)
    return sum(p.numel() for p in model.parameters())


def flops_per_turn(gen: StreamingGenerator, inputs) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        gen.step(*inputs)
    return counter.get_total_flops()


def bench_preset(name: str, turns: int, device: str, dtype: str, seed: int) -> dict:
    torch.manual_seed(seed)
    config = get_preset(name)
    model = TIMAR(config).eval()
    n_speech = sum(p.numel() for p in model.speech_encoder.parameters())
    n_total = sum(p.numel() for p in model.parameters())
    gen = StreamingGenerator(model, device=device, dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed)

    def turn_inputs():
        return (
            rng.standard_normal(gen.samples_per_turn).astype(np.float32),
            (0.1 * rng.standard_normal((gen.frames_per_turn, config.motion_dim))).astype(np.float32),
            rng.standard_normal(gen.samples_per_turn).astype(np.float32),
        )

    for _ in range(config.context_turns):  # fill the window
        gen.step(*turn_inputs())
    flops = flops_per_turn(gen, turn_inputs())
    rows = []
    for _ in range(turns):
        gen.step(*turn_inputs())
        rows.append(gen.last_timings)
    out = {"preset": name, "params_timar": n_total - n_speech, "params_speech": n_speech, "flops": flops}
    for key in ("speech", "backbone", "diffusion", "total"):
        v = np.array([r[key] for r in rows]) * 1e3
        out[f"{key}_median_ms"] = float(np.median(v))
        out[f"{key}_p95_ms"] = float(np.percentile(v, 95))
    out["rtf"] = out["total_median_ms"] / 1e3 / (config.frames_per_turn / config.motion_fps)
    return out


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    limit_gb = args.max_params_gb if args.max_params_gb is not None else 0.4 * total_ram_gb()
    print(
        f"device {args.device}, dtype {args.dtype}, torch threads {torch.get_num_threads()}, "
        f"{args.turns} turns per preset on a full window; load average (1 min) {load_average()}"
    )
    header = (
        f"{'preset':<15}{'params M':>10}{'speech M':>10}{'GFLOP/turn':>12}"
        f"{'speech ms':>16}{'backbone ms':>16}{'diffusion ms':>16}{'total ms':>16}{'RTF':>7}"
    )
    print(header)
    print(" " * 47 + "   (median / p95 for each stage)")
    code = 0
    for name in [p.strip() for p in args.presets.split(",") if p.strip()]:
        try:
            n = estimate_params(get_preset(name))
        except ValueError as e:
            print(f"{name:<15}skipped: {e}")
            code = 2
            continue
        if n * 4 / 1e9 > limit_gb:
            print(
                f"{name:<15}skipped: {n / 1e6:.0f} M parameters need {n * 4 / 1e9:.1f} GB in fp32, "
                f"over the {limit_gb:.1f} GB limit of this machine (--max-params-gb)"
            )
            continue
        try:
            r = bench_preset(name, args.turns, args.device, args.dtype, args.seed)
        except (RuntimeError, MemoryError) as e:  # e.g. out of memory on the device
            print(f"{name:<15}skipped: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
            continue

        def cell(key, r=r):
            return f"{r[f'{key}_median_ms']:7.1f}/{r[f'{key}_p95_ms']:<7.1f}"

        print(
            f"{name:<15}{r['params_timar'] / 1e6:>10.2f}{r['params_speech'] / 1e6:>10.2f}"
            f"{r['flops'] / 1e9:>12.2f}{cell('speech'):>16}{cell('backbone'):>16}{cell('diffusion'):>16}"
            f"{cell('total'):>16}{r['rtf']:>7.3f}"
        )
    print(f"load average (1 min) after: {load_average()}")
    return code
