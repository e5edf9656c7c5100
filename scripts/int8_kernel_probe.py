"""Which int8 kernel for the CPU backbone? Times one linear layer and one attention at a preset's
full-window shapes in each candidate form, on this host's CPU, and prints ms, TOP/s and the error against
float32 (max |y - y_fp32| / max |y_fp32|, random weights of std 0.02 and unit-normal activations).

    python scripts/int8_kernel_probe.py [--preset large] [--threads 1] [--seconds 3]

Linear, (tokens x width) @ (width x 4 width), the blocks' fc1:
  torch float32 / bfloat16 nn.Linear, torch.ao dynamic int8 nn.Linear, and the onnxruntime forms:
  float32 MatMul; dynamic quantisation (int8 weights, uint8 activations quantised per call), per output
  channel (what `timar export --int8` writes) and per tensor; uint8 weights; and the weight-only MatMulNBits
  (8 and 4 bits, blocks of 32 and 128, int8 compute, accuracy_level 4; needs the onnx_ir package, skipped
  without it).
Attention, softmax(q k^T / sqrt(d)) v over the window, all heads:
  onnxruntime float32, and dynamically quantised (both operands of each product quantised per call).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from timar_model.deploy.quantize import quantize_linears
from timar_model.model.config import get_preset


def timed(fn, seconds: float) -> float:
    """Median seconds of fn() over `seconds` of calls (at least 5), after one warm-up call."""
    fn()
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 5:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def rel_err(y, ref) -> float:
    y, ref = np.asarray(y, dtype=np.float32), np.asarray(ref, dtype=np.float32)
    return float(np.abs(y - ref).max() / np.abs(ref).max())


def session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def save(graph, path: Path) -> Path:
    import onnx
    from onnx import helper

    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def dynamic(src: Path, dst: Path, weight_type: str, const_b_only: bool) -> Path:
    """onnxruntime's dynamic quantisation of every MatMul (const_b_only: only those with a constant weight)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        src,
        dst,
        op_types_to_quantize=["MatMul"],
        weight_type=getattr(QuantType, weight_type),
        extra_options={"MatMulConstBOnly": const_b_only},
    )
    return dst


def linear_forms(tmp: Path, m: int, k: int, n: int, threads: int, seconds: float) -> list[tuple[str, float, float]]:
    """(form, seconds, relative error) for each form of y = a @ w."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = (0.02 * rng.standard_normal((k, n))).astype(np.float32)
    a = rng.standard_normal((1, m, k)).astype(np.float32)
    rows: list[tuple[str, float, float]] = []

    lin = torch.nn.Linear(k, n, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w.T))
    ta = torch.from_numpy(a)
    with torch.inference_mode():
        ref = lin(ta).numpy()
        rows.append(("torch float32 Linear", timed(lambda: lin(ta), seconds), 0.0))
        lin16, ta16 = torch.nn.Linear(k, n, bias=False).to(torch.bfloat16), ta.to(torch.bfloat16)
        lin16.weight.copy_(lin.weight.to(torch.bfloat16))
        rows.append(("torch bfloat16 Linear", timed(lambda: lin16(ta16), seconds), rel_err(lin16(ta16).float(), ref)))
        qlin = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear}, dtype=torch.qint8)
        rows.append(("torch.ao dynamic int8 Linear", timed(lambda: qlin(ta), seconds), rel_err(qlin(ta), ref)))

    io = [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, m, k])]
    out = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, m, n])]
    src = save(
        helper.make_graph(
            [helper.make_node("MatMul", ["a", "w"], ["y"])], "linear", io, out, [numpy_helper.from_array(w, "w")]
        ),
        tmp / "linear.onnx",
    )
    forms: dict[str, Path] = {"onnxruntime float32 MatMul": src}
    forms["onnxruntime dynamic int8, per channel (export)"] = quantize_linears(src, tmp / "dyn_pc.onnx")
    forms["onnxruntime dynamic int8, per tensor"] = quantize_linears(src, tmp / "dyn_pt.onnx", per_channel=False)
    forms["onnxruntime dynamic uint8 weights"] = dynamic(src, tmp / "dyn_u8.onnx", "QUInt8", const_b_only=True)
    try:
        import onnx
        from onnxruntime.quantization import matmul_nbits_quantizer as mnq
        from onnxruntime.quantization import quant_utils

        for bits in (8, 4):
            for block in (32, 128):
                cfg = mnq.DefaultWeightOnlyQuantConfig(
                    block_size=block,
                    is_symmetric=True,
                    accuracy_level=4,
                    bits=bits,
                    quant_format=quant_utils.QuantFormat.QOperator,
                    op_types_to_quantize=("MatMul",),
                )
                q = mnq.MatMulNBitsQuantizer(onnx.load(src), algo_config=cfg)
                q.process()
                path = tmp / f"nbits{bits}_{block}.onnx"
                q.model.save_model_to_file(str(path), False)
                forms[f"onnxruntime MatMulNBits {bits} bits, block {block}"] = path
    except ImportError as e:
        print(f"MatMulNBits skipped: {e}")
    for name, path in forms.items():
        s = session(path, threads)
        y = s.run(None, {"a": a})[0]
        rows.append((name, timed(lambda s=s: s.run(None, {"a": a}), seconds), rel_err(y, ref)))
    return rows


def attention_forms(tmp: Path, t: int, heads: int, d: int, threads: int, seconds: float):
    from onnx import TensorProto, helper

    rng = np.random.default_rng(1)
    feeds = {
        "q": rng.standard_normal((1, heads, t, d)).astype(np.float32),
        "k": rng.standard_normal((1, heads, d, t)).astype(np.float32),
        "v": rng.standard_normal((1, heads, t, d)).astype(np.float32),
    }
    vi = {n: helper.make_tensor_value_info(n, TensorProto.FLOAT, list(x.shape)) for n, x in feeds.items()}
    nodes = [
        helper.make_node("MatMul", ["q", "k"], ["s"]),
        helper.make_node("Mul", ["s", "c"], ["s2"]),
        helper.make_node("Softmax", ["s2"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "attention",
        list(vi.values()),
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, heads, t, d])],
        [helper.make_tensor("c", TensorProto.FLOAT, [], [d**-0.5])],
    )
    src = save(graph, tmp / "attention.onnx")
    dynamic(src, tmp / "attention.int8.onnx", "QInt8", const_b_only=False)
    rows, ref = [], None
    for name, path in (
        ("onnxruntime float32", src),
        ("onnxruntime dynamic int8, both operands", tmp / "attention.int8.onnx"),
    ):
        s = session(path, threads)
        y = s.run(None, feeds)[0]
        ref = y if ref is None else ref
        rows.append((name, timed(lambda s=s: s.run(None, feeds), seconds), rel_err(y, ref)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="large")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per form")
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)  # the quantisers' advice and progress lines
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # torch.ao's move to torchao
    warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
    torch.set_num_threads(args.threads)
    cfg = get_preset(args.preset)
    tokens = cfg.seq_len
    width, heads = cfg.width, cfg.num_heads
    print(f"preset {args.preset}: {tokens} tokens x width {width}, {heads} heads; {args.threads} thread(s)")
    with tempfile.TemporaryDirectory(prefix="timar-int8-probe-") as tmp:
        sections = (
            (
                f"linear {tokens} x {width} @ {width} x {4 * width}",
                2 * tokens * width * 4 * width,
                linear_forms(Path(tmp), tokens, width, 4 * width, args.threads, args.seconds),
            ),
            (
                f"attention {heads} heads x {tokens} tokens x {width // heads}",
                4 * tokens * tokens * width,
                attention_forms(Path(tmp), tokens, heads, width // heads, args.threads, args.seconds),
            ),
        )
    for title, ops, rows in sections:
        print(f"\n{title}")
        print(f"  {'form':48s} {'ms':>9s} {'TOP/s':>7s} {'rel err':>9s}")
        for name, sec, err in rows:
            print(f"  {name:48s} {sec * 1e3:9.2f} {ops / sec / 1e12:7.3f} {err:9.2e}")


if __name__ == "__main__":
    main()
