"""`timar bench` (host, matmul peaks, per-stage FLOPs and their share of the FLOP bound, variants in one run)
and the GPU check's dry mode (scripts/gpu_check.sh --device cpu): one JSON, every stage failing soft."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from timar_model.cli import main as timar_main
from timar_model.deploy import gpu_check
from timar_model.eval.bench import cpu_model, flop_counter, matmul_peak, parse_variants, stage_flops
from timar_model.model.config import get_preset
from timar_model.model.timar import TIMAR
from timar_model.runtime.streaming import StreamingGenerator

ROOT = Path(__file__).resolve().parents[1]


def test_flop_counter_counts_cpu_flash_attention():
    q, k = torch.randn(1, 4, 110, 16), torch.randn(1, 4, 220, 16)
    with flop_counter() as c:
        F.scaled_dot_product_attention(q, k, k)  # float32 on a CPU: the flash kernel torch counts as 0
    assert c.get_total_flops() == 2 * 2 * 4 * 110 * 220 * 16  # QK^T and AV


def test_stage_flops_of_the_diffusion_head_are_exact():
    torch.manual_seed(0)
    cfg = get_preset(
        "small",
        width=64,
        token_dim=64,
        speech_dim=32,
        depth=2,
        num_heads=4,
        diffloss_width=48,
        diffloss_depth=2,
        logmel_channels=32,
        context_turns=2,
    )
    gen = StreamingGenerator(TIMAR(cfg).eval())
    rng = np.random.default_rng(0)
    x = (
        rng.standard_normal(16000).astype(np.float32),
        np.zeros((25, 56), np.float32),
        rng.standard_normal(16000).astype(np.float32),
    )
    gen.step(*x)
    flops = stage_flops(gen, x)
    w, C, Wz, N, steps = 48, 56, 64, 25, 5
    per_row = C * w + 256 * w + w * w + Wz * w + 2 * (3 * w * w + 2 * w * w) + 2 * w * w + w * 2 * C
    assert flops["diffusion"] == 2 * N * steps * per_row
    assert flops["speech"] > 0 and flops["backbone"] > flops["diffusion"]
    assert gen.window_turns == 2  # counted on a full window


def test_matmul_peak_and_cpu_model():
    assert matmul_peak("float32", "cpu", seconds=0.05, n=256) > 0
    assert matmul_peak("int8", "cpu", seconds=0.05, n=256) > 0  # onnxruntime MatMulInteger
    assert cpu_model() and cpu_model() != "unknown CPU"


def test_the_peak_product_shrinks_to_the_time_it_is_given():
    """An emulated dtype (float16 on most CPUs) is measured on a product it can finish in the
    time given, not on the 2048 x 2048 one that would take minutes; the sizes stay multiples of 64."""
    from timar_model.eval.bench import _affordable_n

    cpu = torch.device("cpu")
    assert _affordable_n("float32", cpu, 2048, seconds=1e6) == 2048
    assert _affordable_n("float32", cpu, 2048, seconds=1e-9) == 256
    n = _affordable_n("float16", cpu, 2048, seconds=0.05)
    assert 256 <= n <= 2048 and n % 64 == 0
    peak = matmul_peak("float16", "cpu", seconds=0.05)
    assert peak is None or peak > 0


def test_variants_are_checked():
    assert parse_variants("torch:bfloat16,onnxruntime:int8", "torch", "float32") == [
        ("torch", "bfloat16"),
        ("onnxruntime", "int8"),
    ]
    with pytest.raises(ValueError, match="torch runs float32 or bfloat16"):
        parse_variants("torch:int8", "torch", "float32")
    with pytest.raises(ValueError, match="backends"):
        parse_variants("tensorrt:float16", "torch", "float32")


def test_bench_prints_the_host_peaks_and_bound_shares(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = timar_main(
        [
            "bench",
            "--presets",
            "small",
            "--turns",
            "2",
            "--peak-seconds",
            "0.05",
            "--variants",
            "torch:bfloat16,onnxruntime:int8",
            "--json",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert code == 0
    assert f"host: {cpu_model()}" in text and "matmul peak" in text and "share of the FLOP bound" in text
    doc = json.loads(out.read_text())
    assert doc["host"]["cpu"] == cpu_model()
    assert doc["peaks"]["float32"] > 0 and doc["peaks"]["bfloat16"] > 0 and doc["peaks"]["int8"] > 0
    rows = {(r["backend"], r["dtype"]): r for r in doc["results"]}
    assert set(rows) == {("torch", "bfloat16"), ("onnxruntime", "int8")}
    torch_row, int8_row = rows["torch", "bfloat16"], rows["onnxruntime", "int8"]
    assert torch_row["speedup_vs_first"] == 1.0 and int8_row["speedup_vs_first"] > 0
    assert torch_row["stage_flops"] == int8_row["stage_flops"]  # the same arithmetic
    assert set(torch_row["bound"]["backbone"]["dtypes"]) == {"bfloat16"}
    int8_split = int8_row["bound"]["backbone"]["dtypes"]  # linear layers in int8, attention in float32
    assert set(int8_split) == {"int8", "float32"} and 0 < int8_split["float32"] < int8_split["int8"]
    for r in (torch_row, int8_row):
        for stage in ("speech", "backbone", "diffusion", "total"):
            assert 0 < r["bound"][stage]["share"] < 10  # a fraction of the measured latency (noisy host)
        assert r["flops"] == sum(r["stage_flops"].values())


# ----------------------------------------------------------------------------- gpu_check, dry mode
def stage_args(**kw) -> argparse.Namespace:
    base = dict(device="cpu", turns=1, presets="small", stage=None, stage_out=None, public_src=None)
    return argparse.Namespace(**(base | kw))


def test_gpu_check_records_a_stage_that_runs_out_of_time():
    result = gpu_check.run_stage_subprocess("compiled", stage_args(), limit=2.0)
    assert result["ok"] is False and "timed out" in result["error"]


def test_gpu_check_records_a_failing_stage(tmp_path):
    out = tmp_path / "check.json"
    assert gpu_check.main(["--device", "cpu", "--stages", "bench", "--presets", "nope", "--out", str(out)]) == 0
    stage = json.loads(out.read_text())["stages"]["bench"]
    assert stage["ok"] is False and "nope" in stage["error"] and stage["returncode"] == 1


@pytest.mark.slow
def test_gpu_check_dry_run_writes_one_json(tmp_path):
    """The prepared GPU command, dry on the CPU: every stage but torch.compile (minutes on a CPU; its
    plumbing is the bench stage's, and a stage that runs out of time is recorded, as tested above)."""
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--device", "cpu", "--out", str(out), "--stages", "env,tests,bench,demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["dry_run"] is True and list(doc["stages"]) == ["env", "tests", "bench", "demo"]
    bad = {k: v.get("error") for k, v in doc["stages"].items() if not v["ok"]}
    assert not bad, bad
    assert doc["stages"]["env"]["torch"] == torch.__version__
    assert doc["stages"]["tests"]["counts"].get("skipped", 0) >= 1  # the CUDA tests, skipped without a GPU
    assert {(r["preset"], r["dtype"]) for r in doc["stages"]["bench"]["results"]} == {
        ("small", "float32"),
        ("small", "bfloat16"),
    }
    demo = doc["stages"]["demo"]["runs"]
    assert set(demo) == {"float32", "bfloat16"} and demo["float32"]["per_turn_ms"]["total"] > 0
    summary = doc["summary"]
    assert summary["per_turn_ms"]["bench:small:bfloat16"] > 0 and summary["large_bf16_best_ms"] is None
    assert "not compared" in summary["public_release"]


def test_the_int8_kernel_probe_times_every_form():
    """scripts/int8_kernel_probe.py (the choice of int8 kernel in docs/jetson.md): every form timed, the
    export's int8 form near float32 and onnxruntime's float32 equal to torch's."""
    run = subprocess.run(
        [sys.executable, "scripts/int8_kernel_probe.py", "--preset", "small", "--seconds", "0.05"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    rows = {}
    for line in run.stdout.splitlines():
        parts = line.rsplit(None, 3)
        if len(parts) == 4 and parts[0].strip().startswith(("torch", "onnxruntime")):
            rows[parts[0].strip()] = (float(parts[1]), float(parts[3]))
    for form in ("torch bfloat16 Linear", "torch.ao dynamic int8 Linear", "onnxruntime dynamic uint8 weights",
                 "onnxruntime dynamic int8, per tensor", "onnxruntime dynamic int8, both operands"):
        assert form in rows, run.stdout
    assert all(ms > 0 for ms, _ in rows.values())
    assert rows["onnxruntime float32 MatMul"][1] < 1e-5
    assert 0 < rows["onnxruntime dynamic int8, per channel (export)"][1] < 0.05
