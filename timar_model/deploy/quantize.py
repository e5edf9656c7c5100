"""int8 on the CPU: dynamic quantisation of the exported graphs' linear layers with onnxruntime.

Every MatMul / Gemm with a constant weight in backbone.onnx (the blocks' qkv, proj, fc1, fc2 and z_proj) and
turn.onnx (the speech encoder's linear layers and projections, the motion encoder) gets int8 weights
(symmetric, per output channel) and uint8 activations quantised per call from their range
(DynamicQuantizeMatMul). Attention score matmuls, convolutions (the log-mel and wav2vec2 feature
extractors), the log-mel filterbank (its input is a power spectrum, whose range 8 bits cannot hold),
LayerNorms, softmax and the residual stream stay float32. sampler.onnx stays float32: it is a few percent
of a turn, and its five unrolled steps share weights, which the quantiser turns into duplicate names.

Why onnxruntime's dynamic int8 MatMul and not torch.ao's int8 Linear, uint8 weights, weight-only
MatMulNBits or quantised attention products: it was the fastest of them at the backbone's shapes
(scripts/int8_kernel_probe.py times each; the figures and the per-host speed-ups are in docs/jetson.md).
"""

from __future__ import annotations

import logging
from pathlib import Path

# graphs larger than this keep their weights in a side file (protobuf's limit is 2 GB)
EXTERNAL_DATA_BYTES = 1_800_000_000
INT8_GRAPHS = ("turn", "backbone")  # the graphs `timar export --int8` quantises


def quantize_linears(src: str | Path, dst: str | Path, per_channel: bool = True) -> Path:
    """An exported graph -> dst with int8 weights in every constant-weight MatMul / Gemm; returns dst."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    size = src.stat().st_size + sum(p.stat().st_size for p in src.parent.glob(f"{src.stem}*.data"))
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser's advice to pre-process (shape inference) is not needed here
    try:
        quantize_dynamic(
            src,
            dst,
            op_types_to_quantize=["MatMul", "Gemm"],
            per_channel=per_channel,
            weight_type=QuantType.QInt8,
            use_external_data_format=size > EXTERNAL_DATA_BYTES,
            extra_options={"MatMulConstBOnly": True},
        )
    finally:
        root.setLevel(level)
    return dst
