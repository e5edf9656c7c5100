"""`timar export`: a TIMAR model as three ONNX graphs that together make one streaming turn.

    timar export --checkpoint models/timar-small-synth --out exports/small            # float32
    timar export --checkpoint DIR --out DIR --dtype float16                          # fp16 backbone
    timar export --checkpoint DIR --out DIR --int8                     # + int8 turn and backbone graphs (CPU)

  turn.onnx      audio (2, S) float32 normalised [user; agent], user_motion (F, 56) raw FLAME
                 -> tokens (1, 4F + 10, D): the turn's interleaved tokens (speech encoder for both speakers,
                 motion encoder, special tokens; the agent-motion slots are zeros, they are always masked)
  backbone.onnx  window (1, context_turns * (4F + 10), D), last_turn (1,) int64
                 -> z (F, Wz): the backbone output at the agent-motion rows of turn `last_turn`
  sampler.onnx   z (F, Wz), noise (steps + 1, F, 56), temperature (1,) -> motion (F, 56) raw FLAME: the
                 diffusion head's whole sampling loop, unrolled over the respaced steps (an MLP head: z only)
  export.json    the manifest: model config, dtype, steps, opset, weight fingerprint, measured parity

Shapes are static. The backbone graph always takes the full window: while a conversation is shorter than
the window (its first context_turns - 1 turns, or a generator with a shorter window), the turns so far sit
at the left and the rest is zeros. That is exact: attention is turn-causal, so no row of turn k reads a
later turn, and only the rows of `last_turn` are returned. One fixed shape is what TensorRT engines and CUDA
graphs run best; the price is full-window work during warm-up. Models with bidirectional attention or the
encoder-decoder backbone are refused (padding would change their outputs).

Audio normalisation and the noise draws stay outside the graphs (the generator's, so both backends see
the same noise). The log-mel front-end's STFT is written as a convolution with a windowed DFT basis
(same values; TensorRT has no STFT). --dtype float16 keeps the mixed precision of the bf16 path: the
transformer blocks' matmuls, attention and GELU in fp16, the residual stream, LayerNorms, front-end and
head in float32 (log-mel power overflows fp16). For TensorRT, `docs/jetson.md`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from timar_model.errors import UserError
from timar_model.model.diffusion import GaussianDiffusion, create_diffusion
from timar_model.model.speech import LogMelSpeechEncoder
from timar_model.model.timar import AGENT_MOTION, TIMAR

MANIFEST = "export.json"
FORMAT = "timar-onnx"
FORMAT_VERSION = 1
OPSET = 17  # LayerNormalization is a single op from 17 on; TensorRT 8.6+ (JetPack 5/6) parses it
GRAPHS = ("turn", "backbone", "sampler")
EXPORT_DTYPES = ("float32", "float16")
INT8_SUFFIX = ".int8.onnx"
# inputs and outputs of each graph, in order (the onnxruntime backend feeds them by these names)
IO_NAMES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "turn": (("audio", "user_motion"), ("tokens",)),
    "backbone": (("window", "last_turn"), ("z",)),
    "sampler": (("z", "noise", "temperature"), ("motion",)),
}
MLP_SAMPLER_INPUTS = ("z",)


class ExportError(UserError, ValueError):
    """A model that cannot be exported, or an export directory that does not match its model."""


# ----------------------------------------------------------------------------- graph modules
class LogMelDFT(nn.Module):
    """LogMelSpeechEncoder with torch.stft replaced by a strided convolution with a windowed DFT basis
    (reflect padding of n_fft / 2 as stft(center=True)): the same log-mel values, in ops every ONNX
    runtime and TensorRT have. Shares its parameters with `enc`."""

    def __init__(self, enc: LogMelSpeechEncoder):
        super().__init__()
        self.enc = enc
        n_fft = enc.n_fft
        k = torch.arange(n_fft, dtype=torch.float64)
        f = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
        angle = 2 * math.pi * f[:, None] * k[None] / n_fft  # (n_freq, n_fft)
        win = enc.window.detach().double().cpu()
        basis = torch.cat([torch.cos(angle) * win, -torch.sin(angle) * win])  # (2 n_freq, n_fft)
        basis = basis.float()[:, None].to(enc.window.device)  # (2 n_freq, 1, n_fft)
        self.register_buffer("basis", basis, persistent=False)
        self.n_freq = n_fft // 2 + 1

    def log_mel(self, audio: torch.Tensor) -> torch.Tensor:
        pad = self.enc.n_fft // 2
        x = F.pad(audio.float()[:, None], (pad, pad), mode="reflect")  # (B, 1, S + n_fft)
        spec = F.conv1d(x, self.basis, stride=self.enc.hop)  # (B, 2 n_freq, T): real | imaginary
        re, im = spec[:, : self.n_freq], spec[:, self.n_freq :]
        return torch.log(torch.matmul(self.enc.fbank, re * re + im * im) + 1e-6)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.enc.features(self.log_mel(audio))  # (B, F, out_dim)


class TurnGraph(nn.Module):
    """(audio (2, S) normalised [user; agent], user_motion (F, 56) raw) -> tokens (1, 4F + 10, D)."""

    def __init__(self, model: TIMAR):
        super().__init__()
        self.model = model
        enc = model.speech_encoder
        self.speech = LogMelDFT(enc) if isinstance(enc, LogMelSpeechEncoder) else enc

    def forward(self, audio: torch.Tensor, user_motion: torch.Tensor) -> torch.Tensor:
        m = self.model
        sp = m.speech_projection(self.speech(audio))  # (2, F, D)
        return m.interleave(sp[:1], m.encode_motion(user_motion[None]), sp[1:])  # agent motion: zeros


class BackboneGraph(nn.Module):
    """(window (1, T_full, D), last_turn (1,) int64) -> z (F, Wz) at the agent rows of turn last_turn, every
    agent-motion position of the window masked (streaming with mask_history_agent)."""

    def __init__(self, net: TIMAR):
        super().__init__()
        self.net = net
        self.register_buffer("mask", net.window_types(net.seq_len) == AGENT_MOTION, persistent=False)  # (T,)

    def forward(self, window: torch.Tensor, last_turn: torch.Tensor) -> torch.Tensor:
        out_index = self.net.agent_turn_pos + last_turn * self.net.tokens_per_turn
        return self.net.forward_backbone(window, self.mask, out_index=out_index)[0].float()


def sampling_constants(diffusion: GaussianDiffusion) -> list[dict[str, float | int]]:
    """Per sampling step (in sampling order), the float32 coefficients GaussianDiffusion.p_sample_loop
    gathers: the original step index the net sees, the posterior mean coefficients and the log-variance
    range. Exactly the values of its _extract (float64 -> float32)."""

    def f32(arr: np.ndarray, i: int) -> float:
        return float(np.float32(arr[i]))

    return [
        {
            "t": int(diffusion.timestep_map[i]),
            "i": i,
            "coef1": f32(diffusion.posterior_mean_coef1, i),
            "coef2": f32(diffusion.posterior_mean_coef2, i),
            "min_log": f32(diffusion.posterior_log_variance_clipped, i),
            "max_log": f32(diffusion.log_betas, i),
        }
        for i in reversed(range(diffusion.num_timesteps))
    ]


class SamplerGraph(nn.Module):
    """The diffusion head's ancestral sampling loop, unrolled: (z (N, Wz), noise (steps + 1, N, C),
    temperature (1,)) -> raw motion (N, C); float for float what GaussianDiffusion.p_sample_loop computes."""

    def __init__(self, model: TIMAR, diffusion: GaussianDiffusion):
        super().__init__()
        self.model = model
        self.steps = sampling_constants(diffusion)
        self.clamp = diffusion.clamp_variance

    def forward(self, z: torch.Tensor, noise: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
        net, C = self.model.diffloss.net, self.model.config.motion_dim
        N = z.shape[0]
        x = noise[0]
        for k, s in enumerate(self.steps):
            t = torch.full((N,), s["t"], dtype=torch.long, device=z.device)
            out = net(x, t, z)
            if self.clamp:
                out = torch.cat([out[:, :C], out[:, C:].clamp(-1.0, 1.0)], dim=1)
            pred_x0, v = out.float().split(C, dim=1)
            frac = (v + 1) / 2
            log_variance = frac * s["max_log"] + (1 - frac) * s["min_log"]
            mean = s["coef1"] * pred_x0 + s["coef2"] * x
            x = mean + torch.exp(0.5 * log_variance) * noise[k + 1] * temperature if s["i"] > 0 else mean
        return self.model.motion_from_model(x.float())


class MLPSamplerGraph(nn.Module):
    """MLP head: z (N, Wz) -> raw motion (N, C)."""

    def __init__(self, model: TIMAR):
        super().__init__()
        self.model = model

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.motion_from_model(self.model.mlp_head(z).float())


# ----------------------------------------------------------------------------- helpers
def check_exportable(model: TIMAR) -> None:
    c = model.config
    if c.backbone != "encoder_only" or c.attention != "turn_causal":
        raise ExportError(
            f"timar export: model {c.name!r} has backbone={c.backbone!r}, attention={c.attention!r}; the export "
            "takes turn-causal encoder-only models (every preset and the published model), whose fixed "
            "full-window graph is exact during warm-up"
        )


def weights_fingerprint(model: TIMAR) -> str:
    """A short hash of every tensor of the state dict (name, shape, sum, sum of squares in float64): tells
    an export of these weights from an export of other weights with the same config."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in sorted(model.state_dict().items()):
            d = t.detach().double()
            h.update(f"{name}:{tuple(t.shape)}:{float(d.sum()):.10e}:{float((d * d).sum()):.10e};".encode())
    return h.hexdigest()[:16]


def sampling_diffusion(model: TIMAR, steps: int | str | None) -> GaussianDiffusion:
    c = model.config
    if steps is None:
        return model.diffloss.gen_diffusion
    return create_diffusion(str(steps), c.noise_schedule, clamp_variance=c.clamp_variance)


def example_inputs(model: TIMAR, num_steps: int, seed: int = 0) -> dict[str, tuple[torch.Tensor, ...]]:
    """Deterministic example inputs of every graph (used to trace it and to check its parity)."""
    c = model.config
    g = torch.Generator().manual_seed(seed)
    audio = torch.randn(2, c.samples_per_turn, generator=g)
    motion = 0.1 * torch.randn(c.frames_per_turn, c.motion_dim, generator=g)
    window = torch.randn(1, c.seq_len, c.token_dim, generator=g)
    z = torch.randn(c.frames_per_turn, c.head_width, generator=g)
    noise = torch.randn(num_steps + 1, c.frames_per_turn, c.motion_dim, generator=g)
    sampler = (z,) if c.head == "mlp" else (z, noise, torch.tensor([c.temperature], dtype=torch.float32))
    inputs = {
        "turn": (audio, motion),
        "backbone": (window, torch.tensor([c.context_turns - 1], dtype=torch.long)),
        "sampler": sampler,
    }
    device = model.turn_types.device  # trace where the model is (the graphs themselves are device-free)
    return {k: tuple(t.to(device) for t in v) for k, v in inputs.items()}


def graph_modules(model: TIMAR, dtype: str, diffusion: GaussianDiffusion) -> dict[str, nn.Module]:
    from timar_model.runtime.streaming import low_precision_backbone

    net = model if dtype == "float32" else low_precision_backbone(model, getattr(torch, dtype))
    sampler = MLPSamplerGraph(model) if model.config.head == "mlp" else SamplerGraph(model, diffusion)
    return {"turn": TurnGraph(model), "backbone": BackboneGraph(net), "sampler": sampler}


def input_names(name: str, head: str) -> tuple[str, ...]:
    return MLP_SAMPLER_INPUTS if name == "sampler" and head == "mlp" else IO_NAMES[name][0]


def export_graph(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    names: tuple[str, ...],
    outputs: tuple[str, ...],
    opset: int = OPSET,
) -> None:
    """One graph through the TorchScript ONNX exporter (static shapes; weights in an external file when the
    graph would pass protobuf's 2 GB limit)."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # the TorchScript exporter is deprecated in favour of torch.export (needs onnxscript); it traces these
        # static graphs exactly and keeps the dependencies at onnx + onnxruntime
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*Constant folding.*")
        with torch.no_grad():
            torch.onnx.export(
                module.eval(),
                args,
                str(path),
                dynamo=False,
                input_names=list(names),
                output_names=list(outputs),
                opset_version=opset,
                do_constant_folding=True,
            )
    onnx.checker.check_model(str(path))  # by path: works for graphs with external weights too


def ort_session(path: str | Path, threads: int | None = None, providers: list[str] | None = None):
    """An onnxruntime session (CPU unless providers say otherwise) with full graph optimisation."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # warnings about unused initializers etc. are not the user's business
    if threads:
        so.intra_op_num_threads = int(threads)
    return ort.InferenceSession(str(path), so, providers=providers or ["CPUExecutionProvider"])


def max_abs_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


# ----------------------------------------------------------------------------- export
def export_model(
    model: TIMAR,
    out_dir: str | Path,
    dtype: str = "float32",
    steps: int | str | None = None,
    int8: bool = False,
    opset: int = OPSET,
    check: bool = True,
    log=print,
) -> dict[str, Any]:
    """Write the three graphs and the manifest to out_dir; returns the manifest. check: run each graph in
    onnxruntime on example inputs against PyTorch and record the largest absolute error."""
    if dtype not in EXPORT_DTYPES:
        raise ExportError(f"timar export: dtype {dtype!r}; expected one of {EXPORT_DTYPES}")
    check_exportable(model)
    was_training = model.training
    model.eval()  # the graphs must not see training-mode dropout
    try:
        return _export(model, Path(out_dir), dtype, steps, int8, opset, check, log)
    finally:
        model.train(was_training)


def _export(model: TIMAR, out: Path, dtype: str, steps, int8: bool, opset: int, check: bool, log) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    c = model.config
    diffusion = sampling_diffusion(model, steps) if c.head == "diffusion" else None
    num_steps = diffusion.num_timesteps if diffusion is not None else 0
    modules = graph_modules(model, dtype, diffusion)
    inputs = example_inputs(model, num_steps)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "dtype": dtype,
        "opset": opset,
        "num_sampling_steps": str(steps) if steps is not None else c.num_sampling_steps,
        "steps": num_steps,
        "timestep_map": list(diffusion.timestep_map) if diffusion is not None else [],
        "head": c.head,
        "tokens_per_turn": c.tokens_per_turn,
        "context_turns": c.context_turns,
        "weights": weights_fingerprint(model),
        "config": c.to_dict(),
        "graphs": {},
        "parity": {},
        "torch": torch.__version__,
    }
    for name in GRAPHS:
        path = out / f"{name}.onnx"
        t0 = time.perf_counter()
        export_graph(modules[name], inputs[name], path, input_names(name, c.head), IO_NAMES[name][1], opset)
        manifest["graphs"][name] = path.name
        log(f"  {name}: {path} ({time.perf_counter() - t0:.1f} s)")
    if int8:
        from timar_model.deploy.quantize import INT8_GRAPHS, quantize_linears

        for name in INT8_GRAPHS:
            q = quantize_linears(out / manifest["graphs"][name], out / f"{name}{INT8_SUFFIX}")
            manifest["graphs"][f"{name}_int8"] = q.name
            log(f"  {name} int8: {q}")
    if check:
        manifest["parity"] = check_parity(modules, inputs, out, manifest)
        log(
            "  max abs error against float32 PyTorch (int8: the quantisation's): "
            + ", ".join(f"{k} {v:.2g}" for k, v in manifest["parity"].items())
        )
    import onnx
    import onnxruntime

    manifest.update(onnx=onnx.__version__, onnxruntime=onnxruntime.__version__)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def check_parity(modules: dict[str, nn.Module], inputs: dict, out: Path, manifest: dict) -> dict[str, float]:
    """Max abs error of each graph (onnxruntime, CPU) against its PyTorch module on the example inputs."""
    result = {}
    for name, file in manifest["graphs"].items():
        graph = name.removesuffix("_int8")
        args = inputs[graph]
        with torch.no_grad():
            ref = modules[graph](*args).float().cpu().numpy()
        sess = ort_session(out / file)
        feed = {i.name: a.cpu().numpy() for i, a in zip(sess.get_inputs(), args)}
        result[name] = max_abs_error(sess.run(None, feed)[0], ref)
    return result


# ----------------------------------------------------------------------------- manifest
def read_manifest(export_dir: str | Path) -> dict[str, Any]:
    d = Path(export_dir)
    path = d / MANIFEST
    if not path.is_file():
        raise ExportError(f"{d}: no {MANIFEST}; make the export with `timar export --checkpoint DIR --out {d}`")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as e:
        raise ExportError(f"{path}: not valid JSON ({e}); export again") from e
    if manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
        raise ExportError(
            f"{path}: format {manifest.get('format')!r} version {manifest.get('version')!r}; this timar reads "
            f"{FORMAT!r} version {FORMAT_VERSION}: export again"
        )
    for name, file in manifest.get("graphs", {}).items():
        if not (d / file).is_file():
            raise ExportError(f"{d / file}: missing ({name} graph of {path}); export again")
    return manifest


def check_matches(manifest: dict[str, Any], model: TIMAR, export_dir: str | Path) -> None:
    """Refuse an export made from other weights or another config than `model`."""
    if manifest["config"] != model.config.to_dict() or manifest["weights"] != weights_fingerprint(model):
        raise ExportError(
            f"{export_dir}: exported from other weights or another config than this model "
            f"(fingerprint {manifest['weights']} vs {weights_fingerprint(model)}); export this model again"
        )


# ----------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", type=Path, required=True, help="model directory (config.json + model.safetensors)"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder for the ONNX graphs and export.json")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=EXPORT_DTYPES,
        help="float16: the transformer blocks' matmuls in fp16 (residual, norms, front-end and head float32)",
    )
    parser.add_argument(
        "--steps", type=int, help="diffusion sampling steps baked into sampler.onnx (default: the config's)"
    )
    parser.add_argument(
        "--int8", action="store_true", help="also write turn.int8.onnx and backbone.int8.onnx (int8 linear layers)"
    )
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime parity check")


def run(args: argparse.Namespace) -> int:
    from timar_model.model.checkpoint import load_pretrained

    model = load_pretrained(args.checkpoint, device="cpu")
    print(f"exporting {args.checkpoint} ({model.config.name}, {args.dtype}) to {args.out}")
    manifest = export_model(
        model, args.out, dtype=args.dtype, steps=args.steps, int8=args.int8, opset=args.opset, check=not args.no_check
    )
    print(f"wrote {args.out / MANIFEST} ({', '.join(manifest['graphs'].values())})")
    return 0
