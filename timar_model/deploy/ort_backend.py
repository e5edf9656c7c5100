"""The onnxruntime backend of StreamingGenerator: runs the three graphs of `timar export` (turn, backbone,
sampler) instead of the PyTorch modules. The generator keeps everything else (audio normalisation, the
window of turn tokens, the noise draws from its seeded generator), so for the same noise both backends emit
the same motion to float32 rounding (tests/test_export.py).

Variants (`dtype`): float32 (the float32 export), float16 (an export made with --dtype float16: fp16 matmuls
in the transformer blocks; meant for GPUs), int8 (the float32 export's turn.int8.onnx and backbone.int8.onnx:
int8 linear layers, activations quantised per call; the sampler stays float32; see deploy/quantize.py).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from timar_model.deploy.onnx_export import (
    ExportError,
    check_matches,
    export_model,
    input_names,
    ort_session,
    read_manifest,
)
from timar_model.errors import UserError

ORT_DTYPES = ("float32", "float16", "int8")
# which export a variant needs (its manifest dtype) and the graph files it runs (missing int8 keys: float32 ones)
_VARIANT = {
    "float32": ("float32", {}),
    "float16": ("float16", {}),
    "int8": ("float32", {"turn": "turn_int8", "backbone": "backbone_int8"}),
}


def providers_for(device: torch.device) -> list[str]:
    """onnxruntime execution providers for a torch device: CPU, or CUDA where this onnxruntime has it."""
    import onnxruntime as ort

    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise UserError(
        f"backend onnxruntime on device {device}: this onnxruntime has only {ort.get_available_providers()}; "
        "use device cpu, install onnxruntime-gpu, or TensorRT (docs/jetson.md)"
    )


class OrtBackend:
    """The three sessions of one export, checked against the model they stand in for."""

    def __init__(
        self,
        export_dir: str | Path,
        model,
        dtype: str = "float32",
        timestep_map: list[int] | None = None,
        device: torch.device | str = "cpu",
        threads: int | None = None,
    ):
        if dtype not in ORT_DTYPES:
            raise ValueError(f"onnxruntime backend: dtype {dtype!r}; expected one of {ORT_DTYPES}")
        self.export_dir = Path(export_dir)
        manifest = read_manifest(self.export_dir)
        check_matches(manifest, model, self.export_dir)
        need_dtype, keys = _VARIANT[dtype]
        if manifest["dtype"] != need_dtype or not set(keys.values()) <= set(manifest["graphs"]):
            how = "--dtype float16" if dtype == "float16" else "--int8" if dtype == "int8" else "--dtype float32"
            raise ExportError(
                f"{self.export_dir}: a {manifest['dtype']} export with graphs {sorted(manifest['graphs'])}; the "
                f"{dtype} variant needs `timar export ... {how}`"
            )
        if (
            model.config.head == "diffusion"
            and timestep_map is not None
            and manifest["timestep_map"] != list(timestep_map)
        ):
            raise ExportError(
                f"{self.export_dir}: sampler.onnx samples the steps {manifest['timestep_map']}, the generator asks "
                f"for {list(timestep_map)}; export again with --steps {len(timestep_map)}"
            )
        self.manifest = manifest
        self.dtype = dtype
        self.head = manifest["head"]
        device = torch.device(device)
        providers = providers_for(device)
        threads = threads or torch.get_num_threads()
        g = manifest["graphs"]
        self.sessions = {
            name: ort_session(self.export_dir / g[keys.get(name, name)], threads, providers)
            for name in ("turn", "backbone", "sampler")
        }
        c = model.config
        self.tokens_per_turn = c.tokens_per_turn
        self._window = np.zeros((1, c.seq_len, c.token_dim), np.float32)  # the full-window input, zero-padded
        self._sampler_inputs = input_names("sampler", self.head)

    @classmethod
    def for_model(
        cls,
        model,
        dtype: str = "float32",
        export_dir: str | Path | None = None,
        timestep_map: list[int] | None = None,
        steps: int | str | None = None,
        device: torch.device | str = "cpu",
        threads: int | None = None,
    ) -> OrtBackend:
        """The backend from export_dir, or (None) from a fresh export of `model` in a temporary folder that
        lives as long as the backend."""
        tmp = None
        if export_dir is None:
            tmp = temporary_export(model, dtype, steps)
            export_dir = tmp.name
        backend = cls(export_dir, model, dtype, timestep_map, device, threads)
        backend._tmp = tmp  # removed with the backend
        return backend

    # ------------------------------------------------------------------ the three stages
    def turn(self, audio: np.ndarray, user_motion: np.ndarray) -> np.ndarray:
        """audio (2, S) normalised [user; agent], user_motion (F, 56) -> tokens (1, 4F + 10, D)."""
        feed = {
            "audio": np.ascontiguousarray(audio, np.float32),
            "user_motion": np.ascontiguousarray(user_motion, np.float32),
        }
        return self.sessions["turn"].run(None, feed)[0]

    def backbone(self, window: np.ndarray) -> np.ndarray:
        """window (1, T, D) of whole turns (T <= the export's window) -> z (F, Wz) of its last turn's agent
        rows. The window sits at the left of the full-window input; the rest is zeros (exact: turn-causal)."""
        T = window.shape[1]
        if T % self.tokens_per_turn or T > self._window.shape[1]:
            raise ValueError(
                f"onnxruntime backbone: window of {T} tokens; need whole turns and at most {self._window.shape[1]}"
            )
        self._window[:, :T] = window
        self._window[:, T:] = 0.0
        last = np.array([T // self.tokens_per_turn - 1], np.int64)
        return self.sessions["backbone"].run(None, {"window": self._window, "last_turn": last})[0]

    def sample(self, z: np.ndarray, noise: np.ndarray | None, temperature: float) -> np.ndarray:
        """z (F, Wz), noise (steps + 1, F, 56) -> raw motion (F, 56) (an MLP head takes z only)."""
        feed = {"z": np.ascontiguousarray(z, np.float32)}
        if self.head == "diffusion":
            feed["noise"] = np.ascontiguousarray(noise, np.float32)
            feed["temperature"] = np.array([temperature], np.float32)
        return self.sessions["sampler"].run(None, {k: feed[k] for k in self._sampler_inputs})[0]


def temporary_export(model, dtype: str = "float32", steps: int | str | None = None) -> tempfile.TemporaryDirectory:
    """An export of `model` with what the `dtype` variant needs, in a temporary folder (removed when the
    returned object is)."""
    if dtype not in ORT_DTYPES:
        raise ValueError(f"onnxruntime backend: dtype {dtype!r}; expected one of {ORT_DTYPES}")
    tmp = tempfile.TemporaryDirectory(prefix="timar-onnx-")
    export_model(
        model,
        tmp.name,
        dtype="float16" if dtype == "float16" else "float32",
        steps=steps,
        int8=dtype == "int8",
        check=False,
        log=lambda *a: None,
    )
    return tmp
