"""Speech front-ends behind one interface, and audio normalisation.

Every encoder is an nn.Module: audio (B, S) for S = one turn of 16 kHz samples -> (B, F, speech_dim).
  Wav2Vec2SpeechEncoder  frozen transformers Wav2Vec2Model / HubertModel used as TIMAR does: CNN feature
                         encoder -> linear interpolation (align_corners=True) to F frames -> feature proj.
                         -> transformer encoder -> last hidden state.
  LogMelSpeechEncoder    built-in, trainable, no pretrained weights: 16 kHz log-mel (25 ms / 10 ms) -> linear
                         resample to 4F frames -> conv stack with two stride-2 layers -> F frames.
Normalisation (zero mean, unit variance, like a wav2vec2 feature extractor's `do_normalize`):
  file     whole file (as published; offline only)
  turn     each turn on its own (causal)
  running  running statistics over everything seen so far (causal; RunningAudioNorm keeps the state)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from timar_model.motion import SAMPLE_RATE, SAMPLES_PER_TURN

NORM_EPS = 1e-7
AUDIO_NORM_MODES = ("file", "turn", "running", "none")


# ----------------------------------------------------------------------------- normalisation
def _zero_mean_unit_var(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return ((x - x.mean()) / np.sqrt(x.var() + NORM_EPS)).astype(np.float32)


class RunningAudioNorm:
    """Causal normalisation with running mean / variance over all samples seen since reset()."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0

    def __call__(self, chunk: np.ndarray) -> np.ndarray:
        chunk = np.asarray(chunk, dtype=np.float64)
        n = chunk.size
        if n:
            c_mean = float(chunk.mean())
            c_m2 = float(((chunk - c_mean) ** 2).sum())
            total = self.count + n
            delta = c_mean - self.mean
            self.mean += delta * n / total
            self.m2 += c_m2 + delta * delta * self.count * n / total
            self.count = total
        var = self.m2 / max(self.count, 1)
        return ((chunk - self.mean) / math.sqrt(var + NORM_EPS)).astype(np.float32)


def normalize_audio(x: np.ndarray, mode: str, samples_per_turn: int = SAMPLES_PER_TURN) -> np.ndarray:
    """Normalise a mono signal (S,) offline with `mode` ('file' | 'turn' | 'running' | 'none').
    'turn' and 'running' give exactly what a causal stream of `samples_per_turn` chunks gives."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"normalize_audio: expected mono audio (S,), got shape {x.shape}")
    if mode == "none":
        return x
    if mode == "file":
        return _zero_mean_unit_var(x)
    if mode == "turn":
        return np.concatenate(
            [_zero_mean_unit_var(x[i : i + samples_per_turn]) for i in range(0, len(x), samples_per_turn)]
            or [x]
        )
    if mode == "running":
        norm = RunningAudioNorm()
        return np.concatenate(
            [norm(x[i : i + samples_per_turn]) for i in range(0, len(x), samples_per_turn)] or [x]
        )
    raise ValueError(f"normalize_audio: unknown mode {mode!r}; expected one of {AUDIO_NORM_MODES}")


# ----------------------------------------------------------------------------- wav2vec2 / HuBERT
def build_transformers_speech_model(kind: str, config: dict[str, Any]) -> nn.Module:
    """A randomly initialised Wav2Vec2Model / HubertModel from a config dict (no download)."""
    from transformers import HubertConfig, HubertModel, Wav2Vec2Config, Wav2Vec2Model

    cfg_cls, model_cls = (HubertConfig, HubertModel) if kind == "hubert" else (Wav2Vec2Config, Wav2Vec2Model)
    return model_cls(cfg_cls(**config))


def load_transformers_speech_model(folder: str | Path) -> tuple[str, nn.Module]:
    """(kind, model) from a local transformers folder (config.json + weights); never downloads."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"speech encoder folder {folder} has no config.json; download e.g. "
            "facebook/wav2vec2-large-960h-lv60-self once (huggingface-cli download ... --local-dir DIR)"
        )
    from transformers import AutoConfig, HubertModel, Wav2Vec2Model

    cfg = AutoConfig.from_pretrained(folder, local_files_only=True)
    kind = "hubert" if cfg.model_type == "hubert" else "wav2vec2"
    model_cls = HubertModel if kind == "hubert" else Wav2Vec2Model
    return kind, model_cls.from_pretrained(folder, local_files_only=True)


def speech_config_dict(model: nn.Module) -> dict[str, Any]:
    """The constructor settings of a transformers speech model, JSON-serialisable."""
    d = model.config.to_diff_dict()
    for key in ("_name_or_path", "architectures", "transformers_version", "torch_dtype", "dtype"):
        d.pop(key, None)
    return d


class Wav2Vec2SpeechEncoder(nn.Module):
    """Frozen wav2vec 2.0 / HuBERT: (B, S) -> (B, F, hidden_size)."""

    def __init__(self, model: nn.Module, frames: int):
        super().__init__()
        self.model = model
        self.frames = frames
        self.model.requires_grad_(False)
        self.model.eval()

    def train(self, mode: bool = True) -> Wav2Vec2SpeechEncoder:
        super().train(mode)
        self.model.eval()  # frozen: always eval (no dropout)
        return self

    @torch.no_grad()
    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        h = self.model.feature_extractor(audio)  # (B, C, S')
        h = F.interpolate(h, size=self.frames, mode="linear", align_corners=True)  # (B, C, F)
        h = self.model.feature_projection(h.transpose(1, 2))
        if isinstance(h, tuple):  # wav2vec2 returns (projected, normed)
            h = h[0]
        return self.model.encoder(h).last_hidden_state  # (B, F, hidden)


# ----------------------------------------------------------------------------- log-mel
def mel_filterbank(
    n_fft: int, n_mels: int, sample_rate: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular HTK-mel filters."""
    fmax = fmax or sample_rate / 2

    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)

    freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    hz = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    fb = np.zeros((n_mels, len(freqs)))
    for i in range(n_mels):
        lo, mid, hi = hz[i], hz[i + 1], hz[i + 2]
        up = (freqs - lo) / max(mid - lo, 1e-9)
        down = (hi - freqs) / max(hi - mid, 1e-9)
        fb[i] = np.maximum(0.0, np.minimum(up, down))
    return fb.astype(np.float32)


class LogMelSpeechEncoder(nn.Module):
    """Trainable log-mel front-end: (B, S) -> (B, F, out_dim)."""

    def __init__(
        self,
        frames: int,
        out_dim: int,
        sample_rate: int = SAMPLE_RATE,
        n_mels: int = 80,
        channels: int = 256,
        n_fft: int = 400,
        hop: int = 160,
        out_norm: bool = False,
    ):
        super().__init__()
        self.frames, self.n_fft, self.hop = frames, n_fft, hop
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer(
            "fbank", torch.from_numpy(mel_filterbank(n_fft, n_mels, sample_rate)), persistent=False
        )
        # per-mel-bin affine on the log power. Not a per-frame LayerNorm over the mel bins: that would remove
        # each frame's energy, and the speech envelope is what jaw and mouth follow. Init maps the log power
        # of 16-bit-scaled speech (about -14 .. 0) to roughly [-1.5, 2].
        self.in_scale = nn.Parameter(torch.full((n_mels,), 0.25))
        self.in_shift = nn.Parameter(torch.full((n_mels,), 2.0))
        self.convs = nn.Sequential(
            nn.Conv1d(n_mels, channels, 3, padding=1),
            nn.GELU(),
            nn.Conv1d(channels, channels, 4, stride=2, padding=1),
            nn.GELU(),
            nn.Conv1d(channels, channels, 4, stride=2, padding=1),
            nn.GELU(),
        )
        self.out = nn.Linear(channels, out_dim)
        # out_norm: a LayerNorm on the output features (as wav2vec2's last layer ends), so that the speech
        # tokens enter TIMAR at the scale of its position codes. Without it they start far below them and
        # training grows them far above (measured in docs/synthetic-corpus.md, "Why the jaw is slow to lock on").
        self.out_norm = nn.LayerNorm(out_dim) if out_norm else nn.Identity()

    def log_mel(self, audio: torch.Tensor) -> torch.Tensor:
        # (B, S) -> (B, n_mels, S // hop + 1)
        spec = (
            torch.stft(
                audio.float(), self.n_fft, self.hop, window=self.window, center=True, return_complex=True
            ).abs()
            ** 2
        )  # (B, n_fft/2+1, T)
        return torch.log(torch.matmul(self.fbank, spec) + 1e-6)

    def features(self, log_mel: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, T) log power -> (B, F, out_dim): everything after the spectrogram."""
        m = log_mel * self.in_scale[:, None] + self.in_shift[:, None]
        m = F.interpolate(m, size=4 * self.frames, mode="linear", align_corners=True)  # (B, M, 4F)
        h = self.convs(m)  # (B, C, F)
        return self.out_norm(self.out(h.transpose(1, 2)))  # (B, F, out_dim)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.features(self.log_mel(audio))


def build_speech_encoder(config) -> nn.Module:
    """The speech encoder of a TimarConfig (random / empty weights; load a state dict afterwards)."""
    if config.speech_encoder == "logmel":
        return LogMelSpeechEncoder(
            config.frames_per_turn,
            config.speech_dim,
            config.sample_rate,
            config.logmel_n_mels,
            config.logmel_channels,
            out_norm=config.logmel_out_norm,
        )
    model = build_transformers_speech_model(config.speech_encoder, config.speech_encoder_config)
    hidden = model.config.hidden_size
    if hidden != config.speech_dim:
        raise ValueError(
            f"speech_encoder_config hidden_size {hidden} != TimarConfig.speech_dim {config.speech_dim}"
        )
    return Wav2Vec2SpeechEncoder(model, config.frames_per_turn)
