"""DualTalk (Peng et al., CVPR 2025), the TIMAR paper's main baseline, as described in
../shared/design/TIMAR.md, with the same speech front-ends as TIMAR so that a comparison is about the model.

    user speech  -> speech encoder -> Linear(speech_dim -> feat) ----------------.  query
    user motion  -> MLP 56 -> motion_hidden -> feat (ReLU) ----------------------+- key/value: multi-head
                                                                                    attention (feat, heads)
                 -> 2-layer bidirectional LSTM (lstm_hidden per direction) -> concat with
    agent speech -> speech encoder -> Linear(speech_dim -> feat)   (2 * lstm_hidden + feat = model_dim)
                 -> Transformer encoder (enc_layers, model_dim, heads, dropout 0.5, no mask)
                 -> Transformer decoder (1 layer; target and memory: the encoder output)
                 -> x + 0.1 * Linear(x) -> Linear -> 56

One speech encoder per speaker (two instances of TIMAR's front-end: the trainable log-mel encoder of the
small preset, or a frozen wav2vec 2.0 / HuBERT for `paper`), each 1 s of audio encoded on its own as in
TIMAR (the release encodes whole files with wav2vec 2.0). Loss: MSE of exp, jaw and pose (each averaged,
summed) + `velocity_weight` x the same on frame-to-frame differences, in the model's motion space (the
per-dimension motion normalisation of `motion_norm`, as TIMAR-small). Not causal: the BiLSTM and the
unmasked attention see the whole input, so every output frame depends on the future.

Inference (`dualtalk_predictor`): `offline` = the whole clip at once, as published (deterministic);
`sliding` = a streaming use (NOT the published protocol): for each 1 s turn k the model runs on turns
[k - n, k] and its last turn is emitted, so the output is causal with n turns of history.

`DualTalkConfig` is saved in config.json with "model_type": "dualtalk" (`timar_model.model.checkpoint`
reads either model).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from timar_model.model.config import WAV2VEC2_LARGE_LV60, ConfigError
from timar_model.model.speech import build_speech_encoder
from timar_model.motion import FPS, FRAMES_PER_TURN, MOTION_DIM, PARTS, SAMPLE_RATE

MODEL_TYPE = "dualtalk"
INFERENCE = ("offline", "sliding")


@dataclass
class DualTalkConfig:
    name: str = "dualtalk-small"
    model_type: str = MODEL_TYPE
    # --- time (context_turns: the training window, 8 s as published) ---
    motion_fps: int = FPS
    sample_rate: int = SAMPLE_RATE
    frames_per_turn: int = FRAMES_PER_TURN
    context_turns: int = 8
    motion_dim: int = MOTION_DIM
    # --- speech front-end (same choices as TimarConfig) ---
    speech_encoder: str = "logmel"
    speech_encoder_config: dict[str, Any] | None = None
    speech_dim: int = 256
    logmel_n_mels: int = 80
    logmel_channels: int = 256
    logmel_out_norm: bool = False  # TimarConfig.logmel_out_norm (frame-aligned fusion here: no position codes to swamp)
    audio_norm: str = "none"
    # --- model ---
    feat_dim: int = 256  # per-speaker audio feature and partner-motion feature
    motion_hidden: int = 128
    cross_heads: int = 4
    lstm_hidden: int = 128  # per direction
    lstm_layers: int = 2
    num_heads: int = 4
    enc_layers: int = 3
    dec_layers: int = 1
    ffn_dim: int = 2048
    dropout: float = 0.5
    velocity_weight: float = 1.0
    motion_mean: list[float] | None = None
    motion_std: list[float] | None = None

    def __post_init__(self) -> None:
        if self.model_type != MODEL_TYPE:
            raise ValueError(f"DualTalkConfig.model_type must be {MODEL_TYPE!r}, got {self.model_type!r}")
        if self.speech_encoder not in ("wav2vec2", "hubert", "logmel"):
            raise ValueError(f"DualTalkConfig.speech_encoder={self.speech_encoder!r}")
        if self.audio_norm not in ("file", "turn", "running", "none"):
            raise ValueError(f"DualTalkConfig.audio_norm={self.audio_norm!r}")
        if self.model_dim % self.num_heads or self.feat_dim % self.cross_heads:
            raise ValueError("DualTalkConfig: model_dim / feat_dim must be divisible by the numbers of heads")
        if (self.motion_mean is None) != (self.motion_std is None):
            raise ValueError("DualTalkConfig: motion_mean and motion_std are set together")

    @property
    def model_dim(self) -> int:
        return 2 * self.lstm_hidden + self.feat_dim

    @property
    def samples_per_turn(self) -> int:
        return self.frames_per_turn * self.sample_rate // self.motion_fps

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DualTalkConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"DualTalkConfig: unknown keys {unknown}")
        return cls(**d)

    @classmethod
    def load(cls, path: str | Path) -> DualTalkConfig:
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{path}: not a valid DualTalk config ({e})") from e


def dualtalk_preset(name: str, **overrides: Any) -> DualTalkConfig:
    """`small`: TIMAR-small's log-mel front-end and a size comparable to TIMAR-small (about 7 M parameters);
    `paper`: the published sizes with wav2vec 2.0 large features (1024-d; weights from a local folder)."""
    presets = {
        "small": DualTalkConfig(name="dualtalk-small", feat_dim=192, motion_hidden=96, lstm_hidden=96,
                                ffn_dim=768, audio_norm="none"),
        "paper": DualTalkConfig(name="dualtalk-paper", speech_encoder="wav2vec2",
                                speech_encoder_config=dict(WAV2VEC2_LARGE_LV60), speech_dim=1024,
                                audio_norm="file"),
    }
    if name not in presets:
        raise ValueError(f"unknown DualTalk preset {name!r}; known: {', '.join(presets)}")
    cfg = presets[name]
    return dataclasses.replace(cfg, **overrides) if overrides else cfg


class DualTalk(nn.Module):
    def __init__(self, config: DualTalkConfig):
        super().__init__()
        self.config = c = config
        self.frames_per_turn = c.frames_per_turn
        has_norm = c.motion_std is not None
        mean = torch.tensor(c.motion_mean, dtype=torch.float32) if has_norm else torch.zeros(c.motion_dim)
        std = torch.tensor(c.motion_std, dtype=torch.float32) if has_norm else torch.ones(c.motion_dim)
        self.register_buffer("motion_mean", mean, persistent=False)
        self.register_buffer("motion_std", std, persistent=False)
        self.user_speech_encoder = build_speech_encoder(c)
        self.agent_speech_encoder = build_speech_encoder(c)
        self.user_speech_proj = nn.Linear(c.speech_dim, c.feat_dim)
        self.agent_speech_proj = nn.Linear(c.speech_dim, c.feat_dim)
        self.motion_encoder = nn.Sequential(
            nn.Linear(c.motion_dim, c.motion_hidden), nn.ReLU(), nn.Linear(c.motion_hidden, c.feat_dim), nn.ReLU()
        )
        self.cross_attn = nn.MultiheadAttention(c.feat_dim, c.cross_heads, batch_first=True)
        self.lstm = nn.LSTM(c.feat_dim, c.lstm_hidden, num_layers=c.lstm_layers, batch_first=True,
                            bidirectional=True)
        D = c.model_dim
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(D, c.num_heads, c.ffn_dim, c.dropout, batch_first=True), c.enc_layers,
            enable_nested_tensor=False,
        )
        self.decoder = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(D, c.num_heads, c.ffn_dim, c.dropout, batch_first=True), c.dec_layers
        )
        self.residual = nn.Linear(D, D)
        self.out = nn.Linear(D, c.motion_dim)

    # ------------------------------------------------------------------ pieces
    def motion_to_model(self, motion: torch.Tensor) -> torch.Tensor:
        return (motion - self.motion_mean.to(motion.dtype)) / self.motion_std.to(motion.dtype)

    def motion_from_model(self, motion: torch.Tensor) -> torch.Tensor:
        return motion * self.motion_std.to(motion.dtype) + self.motion_mean.to(motion.dtype)

    def _speech(self, encoder: nn.Module, audio: torch.Tensor) -> torch.Tensor:
        """(B, n * samples_per_turn) -> (B, n * F, speech_dim), each turn encoded on its own (as TIMAR)."""
        B, S = audio.shape
        spt = self.config.samples_per_turn
        if S % spt:
            raise ValueError(f"DualTalk: {S} audio samples is not a whole number of turns of {spt}")
        n = S // spt
        return encoder(audio.reshape(B * n, spt)).reshape(B, n * self.frames_per_turn, -1)

    def forward_model_space(self, user_speech: torch.Tensor, user_motion: torch.Tensor,
                            agent_speech: torch.Tensor) -> torch.Tensor:
        """Normalised audio (B, n * spt) x2, raw partner motion (B, n * F, 56) -> agent motion in the model's
        motion space (B, n * F, 56)."""
        T = user_motion.shape[1]
        su = self.user_speech_proj(self._speech(self.user_speech_encoder, user_speech))
        sa = self.agent_speech_proj(self._speech(self.agent_speech_encoder, agent_speech))
        if su.shape[1] != T or sa.shape[1] != T:
            raise ValueError(f"DualTalk: speech gives {su.shape[1]} / {sa.shape[1]} frames, motion {T}")
        m = self.motion_encoder(self.motion_to_model(user_motion))
        x, _ = self.cross_attn(su, m, m, need_weights=False)  # partner audio attends to partner motion
        x, _ = self.lstm(x)
        h = self.encoder(torch.cat([x, sa], dim=-1))
        h = self.decoder(h, h)
        h = h + 0.1 * self.residual(h)
        return self.out(h)

    def forward(self, user_speech: torch.Tensor, user_motion: torch.Tensor, agent_speech: torch.Tensor
                ) -> torch.Tensor:
        """-> raw agent motion (B, n * F, 56)."""
        return self.motion_from_model(self.forward_model_space(user_speech, user_motion, agent_speech))

    def training_loss(self, user_speech: torch.Tensor, user_motion: torch.Tensor, agent_speech: torch.Tensor,
                      agent_motion: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """MSE (exp + jaw + pose) + velocity_weight x MSE of frame-to-frame differences, model space."""
        if user_motion.shape != agent_motion.shape or agent_motion.shape[-1] != self.config.motion_dim:
            raise ValueError(f"DualTalk.training_loss: motion shapes {tuple(user_motion.shape)} / "
                             f"{tuple(agent_motion.shape)}")
        pred = self.forward_model_space(user_speech, user_motion, agent_speech)
        gt = self.motion_to_model(agent_motion)
        loss = pred.new_zeros(())
        for a, b in PARTS.values():
            loss = loss + F.mse_loss(pred[..., a:b], gt[..., a:b])
            if self.config.velocity_weight:
                dv = torch.diff(pred[..., a:b], dim=1) - torch.diff(gt[..., a:b], dim=1)
                loss = loss + self.config.velocity_weight * dv.pow(2).mean()
        return loss


# ----------------------------------------------------------------------------- inference


def _norm_audio(x: np.ndarray, mode: str) -> np.ndarray:
    """Audio normalisation of the config; "file" = the statistics of the audio given (offline: the clip)."""
    if mode == "file":
        x = np.asarray(x, np.float64)
        return ((x - x.mean()) / np.sqrt(x.var() + 1e-7)).astype(np.float32)
    from timar_model.data.dualtalk import normalize_window_audio

    return normalize_window_audio(np.asarray(x, np.float32), mode)


@torch.no_grad()
def predict_window(model: DualTalk, user_speech: np.ndarray, user_motion: np.ndarray, agent_speech: np.ndarray
                   ) -> np.ndarray:
    """One forward pass over whole turns: audio (n * spt,), partner motion (n * F, 56) -> (n * F, 56)."""
    model.eval()
    dev = next(model.parameters()).device
    mode = model.config.audio_norm
    us = torch.from_numpy(_norm_audio(user_speech, mode))[None].to(dev)
    ag = torch.from_numpy(_norm_audio(agent_speech, mode))[None].to(dev)
    um = torch.from_numpy(np.asarray(user_motion, np.float32))[None].to(dev)
    return model(us, um, ag)[0].float().cpu().numpy()


def dualtalk_predictor(model: DualTalk, inference: str = "offline", history: int | None = None):
    """A `timar eval` predictor (sample, turns) -> (turns * F, 56). offline: the whole clip in one pass (the
    published protocol; `history` unused); sliding: turn k from a window of turns [k - history, k]."""
    if inference not in INFERENCE:
        raise ValueError(f"DualTalk inference {inference!r}: choose one of {', '.join(INFERENCE)}")
    c = model.config
    F_, S = c.frames_per_turn, c.samples_per_turn
    if inference == "sliding" and (history is None or not 0 <= history < c.context_turns):
        raise ValueError(f"DualTalk sliding window: history must be in [0, {c.context_turns - 1}], got {history}")

    def offline(sample, turns: int) -> np.ndarray:
        return predict_window(model, np.asarray(sample.user_audio[: turns * S]),
                              np.asarray(sample.user_motion[: turns * F_]), np.asarray(sample.agent_audio[: turns * S]))

    def sliding(sample, turns: int) -> np.ndarray:
        out = []
        for k in range(turns):
            lo = max(0, k - history)
            pred = predict_window(model, np.asarray(sample.user_audio[lo * S:(k + 1) * S]),
                                  np.asarray(sample.user_motion[lo * F_:(k + 1) * F_]),
                                  np.asarray(sample.agent_audio[lo * S:(k + 1) * S]))
            out.append(pred[-F_:])
        return np.concatenate(out, axis=0)

    return offline if inference == "offline" else sliding
