"""StreamingGenerator: push one turn (user speech, user motion, agent speech) -> the agent's motion for it.

Per turn: normalise the audio causally, encode the turn's user speech and agent speech (one speech-encoder
call, batch of 2) and user motion into the turn's 4F + 10 tokens, append them to a window of at most
`context_turns` turns (left crop), mask ALL agent-motion positions of the window (mask_history_agent: the
model never conditions on its own outputs), run the backbone once, and sample only the current turn's F agent
positions with the diffusion head. Memory is flat: only the window's token tensors are kept.

dtype "bfloat16" (CPU or GPU): the backbone blocks' Linear weights are cast to bf16 ONCE, at construction, into
a copy (the model passed in is not modified; later changes to its weights are not seen by this generator).
The backbone's matmuls, attention and GELU then run in bf16 while its residual stream, LayerNorms, the
token embedding, the speech encoder and the diffusion head stay float32; no autocast, no per-call weight
casts. Against float32: max |error| ~1e-3 on the reference-tiny stream, see tests/test_streaming.py. dtype
"auto": bfloat16 where the device does it in hardware (native_bf16), else float32 (emulated bf16 is slower).

backend "onnxruntime": the three stages (turn tokens, backbone, sampler) run the graphs of `timar export`
(timar_model/deploy) instead of the PyTorch modules; dtype then picks the export's variant: float32, float16
or int8 (int8 linears in the backbone). Normalisation, the window and the noise draws stay here, so for the
same seed both backends emit the same motion to float32 rounding. onnx_dir: an export of this model (checked
against its weights), or None to export into a temporary folder at construction.

partner_motion "pose" | "none" (a head-pose tracker, no tracker): the user motion passed in is seen through
that view (timar_model/data/partner_motion.py) with the model's fill for unobserved parts: zeros, or NaN for
a model with `partner_absent_embed`, which also accepts NaN parts in the user motion passed to `step`.

Device and dtype come only from the arguments (nothing assumes a CPU): the per-turn path moves the inputs to
the device once and the motion back once; the CUDA synchronisations are only those that close a stage's
timing (last_timings).
"""

from __future__ import annotations

import copy
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from timar_model.data.partner_motion import PARTNER_MOTION_MODES, absent_fill, partner_motion_view
from timar_model.model.diffusion import create_diffusion
from timar_model.model.speech import RunningAudioNorm, _zero_mean_unit_var
from timar_model.model.timar import AGENT_MOTION, TIMAR
from timar_model.model.vit import cast_linears
from timar_model.motion import HEAD_ROT

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "fp32": torch.float32}
BACKENDS = ("torch", "onnxruntime")


def native_bf16(device: str | torch.device, cpu_flags: set[str] | None = None) -> bool:
    """Whether `device` does bf16 matmuls in hardware: a CUDA GPU with bf16 support (Ampere and later, incl.
    Jetson Orin), or a CPU with AVX512-BF16 / AMX (x86) or the bf16 extension (Arm). Elsewhere PyTorch emulates
    bf16 and it is slower than float32. cpu_flags: the CPU's feature flags (default: read /proc/cpuinfo)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    if cpu_flags is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
        cpu_flags = {f for line in text.splitlines() if line.startswith(("flags", "Features"))
                     for f in line.split(":", 1)[1].split()}
    return bool(cpu_flags & {"avx512_bf16", "amx_bf16", "bf16"})


def resolve_dtype(dtype: str, device: str | torch.device, backend: str = "torch") -> str:
    """"auto" -> bfloat16 on a device with native bf16 for the torch backend, else float32; other names as
    given."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if backend == "torch" and native_bf16(device) else "float32"


def low_precision_backbone(model: TIMAR, dtype: torch.dtype) -> TIMAR:
    """A TIMAR that shares every module and parameter with `model` except its transformer blocks
    (encoder_blocks, and decoder_blocks if any), which are copies with their Linear weights in `dtype`
    (see vit.Block: the residual stream keeps its float32). The blocks are copied without a float32
    duplicate of the Linear weights."""
    view = copy.copy(model)  # shallow: same parameters, buffers and submodules
    view._modules = dict(model._modules)
    for name in ("encoder_blocks", "decoder_blocks"):
        blocks = getattr(model, name, None)
        if blocks is None:
            continue
        memo = {
            id(p): nn.Parameter(p.detach().to(dtype), requires_grad=False)
            for m in blocks.modules()
            if isinstance(m, nn.Linear)
            for p in m.parameters(recurse=False)
        }
        view._modules[name] = cast_linears(copy.deepcopy(blocks, memo), dtype)
    return view


class StreamingGenerator:
    def __init__(
        self,
        model: TIMAR,
        device: str | torch.device = "cpu",
        dtype: str = "float32",
        context_turns: int | None = None,
        num_sampling_steps: int | str | None = None,
        temperature: float | None = None,
        seed: int | None = 0,
        audio_norm: str | None = None,
        noise_correlation: float | None = None,
        backend: str = "torch",
        onnx_dir: str | Path | None = None,
        head_smoothing: float | None = None,
        partner_motion: str = "full",
    ):
        cfg = model.config
        if partner_motion not in PARTNER_MOTION_MODES:
            raise ValueError(
                f"StreamingGenerator: partner_motion {partner_motion!r}; expected one of {PARTNER_MOTION_MODES}"
            )
        self.partner_motion = partner_motion
        self.partner_fill = absent_fill(cfg)
        if backend not in BACKENDS:
            raise ValueError(f"StreamingGenerator: backend {backend!r}; expected one of {BACKENDS}")
        dtype = resolve_dtype(dtype, device, backend)
        self.dtype_name = dtype
        if backend == "torch" and dtype not in DTYPES:
            raise ValueError(f"StreamingGenerator: dtype {dtype!r}; expected one of {sorted(DTYPES)}")
        self.device = torch.device(device)
        self.backend = backend
        self.dtype = DTYPES.get(dtype, torch.float32)  # onnxruntime: the graphs' inputs and outputs are float32
        self.model = model.to(self.device).eval()
        # the network that runs: the model itself, or a view of it with low-precision transformer blocks
        self.net = self.model if self.dtype == torch.float32 else low_precision_backbone(self.model, self.dtype)
        self.config = cfg
        self.context_turns = cfg.context_turns if context_turns is None else int(context_turns)
        if not 1 <= self.context_turns <= cfg.context_turns:
            raise ValueError(
                f"StreamingGenerator: context_turns must be in [1, {cfg.context_turns}] "
                f"(the model's position table), got {context_turns}"
            )
        self.temperature = cfg.temperature if temperature is None else float(temperature)
        rho = cfg.noise_correlation if noise_correlation is None else float(noise_correlation)
        if not 0.0 <= rho < 1.0:
            raise ValueError(f"StreamingGenerator: noise_correlation must be in [0, 1), got {rho}")
        self.noise_correlation = rho
        smooth = cfg.head_smoothing if head_smoothing is None else float(head_smoothing)
        if not 0.0 <= smooth < 1.0:
            raise ValueError(f"StreamingGenerator: head_smoothing must be in [0, 1), got {smooth}")
        self.head_smoothing = smooth
        self.diffusion = None
        if num_sampling_steps is not None and cfg.head == "diffusion":
            self.diffusion = create_diffusion(
                str(num_sampling_steps), cfg.noise_schedule, clamp_variance=cfg.clamp_variance
            )
        self.audio_norm = audio_norm or ("turn" if cfg.audio_norm == "file" else cfg.audio_norm)
        if self.audio_norm not in ("turn", "running", "none"):
            raise ValueError(
                f"StreamingGenerator: audio_norm {self.audio_norm!r} is not causal; "
                "use 'turn', 'running' or 'none' (input already normalised)"
            )
        self.seed = seed
        self.ort = None
        if backend == "onnxruntime":
            from timar_model.deploy.ort_backend import OrtBackend

            diffusion = self.diffusion or (self.model.diffloss.gen_diffusion if cfg.head == "diffusion" else None)
            self.ort = OrtBackend.for_model(
                self.model,
                dtype=dtype,
                export_dir=onnx_dir,
                timestep_map=diffusion.timestep_map if diffusion is not None else None,
                steps=num_sampling_steps,
                device=self.device,
            )
        F = cfg.frames_per_turn
        types = model.turn_types.to(self.device)
        self._agent_pos = (types == AGENT_MOTION).nonzero().squeeze(1)  # (F,) positions in a turn
        assert len(self._agent_pos) == F
        self._window_index: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # T -> (mask, out_index)
        self.last_timings: dict[str, float] = {}
        self.reset()

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str = "cpu",
        dtype: str = "float32",
        context_turns: int | None = None,
        num_sampling_steps: int | str | None = None,
        temperature: float | None = None,
        seed: int | None = 0,
        audio_norm: str | None = None,
        noise_correlation: float | None = None,
        backend: str = "torch",
        onnx_dir: str | Path | None = None,
        head_smoothing: float | None = None,
        partner_motion: str = "full",
    ) -> StreamingGenerator:
        from timar_model.model.checkpoint import load_pretrained

        return cls(
            load_pretrained(path, device="cpu"),
            device=device,
            dtype=dtype,
            context_turns=context_turns,
            num_sampling_steps=num_sampling_steps,
            temperature=temperature,
            seed=seed,
            audio_norm=audio_norm,
            noise_correlation=noise_correlation,
            backend=backend,
            onnx_dir=onnx_dir,
            head_smoothing=head_smoothing,
            partner_motion=partner_motion,
        )

    # ------------------------------------------------------------------ properties
    @property
    def frames_per_turn(self) -> int:
        return self.config.frames_per_turn

    @property
    def samples_per_turn(self) -> int:
        return self.config.samples_per_turn

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def window_turns(self) -> int:
        """Number of turns currently in the window (<= context_turns)."""
        return len(self._turns)

    def reset(self) -> None:
        """Forget the conversation: empty window, fresh audio statistics, generator re-seeded."""
        self._turns: deque[torch.Tensor] = deque(maxlen=self.context_turns)
        self._norm = {"user": RunningAudioNorm(), "agent": RunningAudioNorm()}
        self.generator = torch.Generator(device=self.device)
        if self.seed is not None:
            self.generator.manual_seed(int(self.seed))
        else:
            self.generator.seed()
        self.turn_index = 0
        self._noise_state: torch.Tensor | None = None  # (steps + 1, C): last frame's noise (noise_correlation)
        self._head_state: np.ndarray | None = None  # (3,): last output frame's head rotation (head_smoothing)

    # ------------------------------------------------------------------ one turn
    def _check(self, name: str, x, shape: tuple[int, ...], nan_ok: bool = False) -> np.ndarray:
        x = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float32)
        if x.shape != shape:
            raise ValueError(f"StreamingGenerator.step: {name} must have shape {shape}, got {x.shape}")
        if not (np.isfinite(x) | (nan_ok & np.isnan(x))).all():
            raise ValueError(f"StreamingGenerator.step: {name} contains {'Inf' if nan_ok else 'NaN or Inf'}")
        return x

    def _normalise(self, who: str, audio: np.ndarray) -> np.ndarray:
        if self.audio_norm == "turn":
            return _zero_mean_unit_var(audio)
        if self.audio_norm == "running":
            return self._norm[who](audio)
        return audio

    def coherent_noise(self, frames: int) -> torch.Tensor:
        """Diffusion noise for the next `frames` frames, (steps + 1, frames, C): per sampling step and channel an
        AR(1) process e_f = rho * e_(f-1) + sqrt(1 - rho^2) * w_f (w ~ N(0, 1)), unit variance, continued
        from the previous turn's last frame."""
        diffusion = self.diffusion or self.model.diffloss.gen_diffusion
        S, C, rho = diffusion.num_timesteps + 1, self.config.motion_dim, self.noise_correlation
        w = torch.randn(S, frames, C, generator=self.generator, device=self.generator.device)
        out = torch.empty_like(w)
        prev = self._noise_state
        for f in range(frames):
            prev = w[:, f] if prev is None else rho * prev + (1.0 - rho * rho) ** 0.5 * w[:, f]
            out[:, f] = prev
        self._noise_state = prev
        return out.to(self.device)

    def smooth_head(self, motion: np.ndarray) -> np.ndarray:
        """The head rotation of (F, 56) raw motion low-passed in place (head_smoothing a: y_f = a * y_(f-1) +
        (1 - a) * x_f, from the previous turn's last output frame; the conversation's first frame as drawn)."""
        a = self.head_smoothing
        if a <= 0.0:
            return motion
        y = self._head_state
        for f in range(len(motion)):
            y = motion[f, HEAD_ROT].copy() if y is None else a * y + (1.0 - a) * motion[f, HEAD_ROT]
            motion[f, HEAD_ROT] = y
        self._head_state = y
        return motion

    def _window(self, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        """For a window of T tokens: mask (T,) bool of every agent-motion position (all masked) and
        out_index (F,) of the current (last) turn's agent positions; computed once per window length."""
        if T not in self._window_index:
            mask = self.model.window_types(T, self.device) == AGENT_MOTION
            self._window_index[T] = (mask, self._agent_pos + (T - self.model.tokens_per_turn))
        return self._window_index[T]

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.inference_mode()
    def step(self, user_speech, user_motion, agent_speech, noise: torch.Tensor | None = None) -> np.ndarray:
        """user_speech, agent_speech (samples_per_turn,) float32 raw audio; user_motion (F, 56).
        noise: optional explicit Gaussian draws (steps + 1, F, 56). Returns agent motion (F, 56) float32."""
        F, S = self.frames_per_turn, self.samples_per_turn
        us = self._check("user_speech", user_speech, (S,))
        nan_ok = self.config.partner_absent_embed  # NaN = an unobserved part of the partner's motion
        um = self._check("user_motion", user_motion, (F, self.config.motion_dim), nan_ok=nan_ok)
        um = partner_motion_view(um, self.partner_motion, self.partner_fill)
        ag = self._check("agent_speech", agent_speech, (S,))
        t0 = time.perf_counter()
        audio = np.stack([self._normalise("user", us), self._normalise("agent", ag)])
        self._turns.append(self.encode_turn(audio, um))  # (1, 4F + 10, D)
        self._sync()
        t1 = time.perf_counter()
        z = self.run_backbone(torch.cat(list(self._turns), dim=1))  # (F, Wz) from the window (1, T, D)
        self._sync()
        t2 = time.perf_counter()
        out = self.smooth_head(self.sample(z, noise).float().cpu().numpy())  # (F, 56)
        t3 = time.perf_counter()
        self.last_timings = {"speech": t1 - t0, "backbone": t2 - t1, "diffusion": t3 - t2, "total": t3 - t0}
        self.turn_index += 1
        return out

    # ------------------------------------------------------------------ the three stages of a turn
    def encode_turn(self, audio: np.ndarray, user_motion: np.ndarray) -> torch.Tensor:
        """Normalised audio (2, S) [user; agent] and raw user motion (F, 56) -> the turn's tokens (1, 4F + 10, D)
        on the device (agent-motion slots zero: they are always masked)."""
        if self.ort is not None:
            return torch.from_numpy(self.ort.turn(audio, user_motion))
        m = self.net
        sp = m.encode_speech(torch.from_numpy(audio).to(self.device))  # (2, F, D)
        mo = m.encode_motion(torch.from_numpy(user_motion).to(self.device)[None])  # (1, F, D)
        return m.interleave(sp[:1], mo, sp[1:])

    def run_backbone(self, tokens: torch.Tensor) -> torch.Tensor:
        """Window tokens (1, T, D) -> z (F, Wz) at the last turn's agent positions, every agent position masked."""
        if self.ort is not None:
            return torch.from_numpy(self.ort.backbone(tokens.numpy()))
        mask, out_index = self._window(tokens.shape[1])  # all agent positions masked; current turn's rows
        return self.net.forward_backbone(tokens, mask, out_index=out_index)[0].float()

    def sample(self, z: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """z (F, Wz) -> raw motion (F, 56). noise: explicit draws (steps + 1, F, 56), else coherent noise
        (noise_correlation > 0) or independent draws from the generator, in the sampler's order."""
        diffusion_head = self.config.head == "diffusion"
        if noise is None and self.noise_correlation > 0 and diffusion_head:
            noise = self.coherent_noise(self.frames_per_turn)
        if self.ort is None:
            return self.net.sample_positions(
                z, temperature=self.temperature, noise=noise, generator=self.generator, diffusion=self.diffusion
            )
        if diffusion_head:
            noise = self._independent_noise(z.shape[0]) if noise is None else noise
            expected = (self.ort.manifest["steps"] + 1, z.shape[0], self.config.motion_dim)
            if tuple(noise.shape) != expected:
                raise ValueError(f"StreamingGenerator.step: noise must be {expected}, got {tuple(noise.shape)}")
            noise = noise.detach().float().cpu().numpy()
        return torch.from_numpy(self.ort.sample(z.numpy(), noise, self.temperature))

    def _independent_noise(self, n: int) -> torch.Tensor:
        """(steps + 1, n, C): the draws GaussianDiffusion.p_sample_loop makes from the generator (x_T, then one
        per step, each randn(n, C)), so the onnxruntime sampler sees the torch backend's noise."""
        g, steps, C = self.generator, self.ort.manifest["steps"], self.config.motion_dim
        return torch.stack([torch.randn(n, C, generator=g, device=g.device) for _ in range(steps + 1)])

    @torch.inference_mode()
    def window_backbone(self) -> torch.Tensor:
        """Full backbone output (T, Wz) of the current window (all agent positions masked); for inspection."""
        tokens = torch.cat(list(self._turns), dim=1)
        return self.net.forward_backbone(tokens, self._window(tokens.shape[1])[0])[0].float()
