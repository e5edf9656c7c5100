"""TimarConfig: every setting of a TIMAR model, with named presets.

Presets:
  reference-tiny  the settings of ../shared/reference/timar_tiny (parity fixture), tiny wav2vec2 inside
  small           our CPU default: width 256, 6 blocks, diffusion head 3 x 256, built-in log-mel front-end
  base            24 x 768 (12 heads), wav2vec2-large speech features (1024-d)
  large           the published model: 32 x 1024 (16 heads), token 1024, diffusion head 3 x 1024
  huge            40 x 1280 (16 heads)

A turn is `frames_per_turn` motion frames (25 = 1 s at 25 fps) and `samples_per_turn` audio samples; the
context window holds `context_turns` turns of `4 * frames_per_turn + 10` tokens each.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from timar_model.errors import UserError
from timar_model.motion import FPS, FRAMES_PER_TURN, MOTION_DIM, SAMPLE_RATE

NUM_SPECIAL_TOKENS = 10
# Fields of earlier versions that no longer exist; their config files still load (the key is ignored).
# cfg: a classifier-free guidance scale that the sampler never read.
REMOVED_FIELDS = ("cfg",)


class ConfigError(UserError, ValueError):
    """A model config file that cannot be read: invalid JSON / YAML, unknown keys or invalid values."""


# The declared types of the scalar fields (annotations are strings here) -> what a config file may hold.
_SCALAR_TYPES: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool}


def _is_a(value: Any, expected: type) -> bool:
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


_CHOICES = {
    "attention": ("turn_causal", "bidirectional"),
    "backbone": ("encoder_only", "encoder_decoder"),
    "head": ("diffusion", "mlp"),
    "speech_encoder": ("wav2vec2", "hubert", "logmel"),
    "audio_norm": ("file", "turn", "running", "none"),
    "noise_schedule": ("cosine", "linear"),
    "pos_embed_init": ("random", "frame_sincos", "time_sincos"),
}


@dataclass
class TimarConfig:
    name: str = "custom"
    # --- time ---
    motion_fps: int = FPS
    sample_rate: int = SAMPLE_RATE
    frames_per_turn: int = FRAMES_PER_TURN  # F: motion frames per turn (chunk_second * motion_fps)
    context_turns: int = 8  # window length in turns (max_context_time / chunk_second)
    motion_dim: int = MOTION_DIM
    # --- tokens ---
    token_dim: int = 256  # token_embed_dim
    speech_dim: int = 256  # speech encoder output size (speech_snippet_embed_dim)
    # --- backbone ---
    width: int = 256  # encoder_embed_dim
    depth: int = 6  # blocks of the encoder (encoder-only: all blocks; public: encoder_depth + decoder_depth)
    num_heads: int = 4
    decoder_width: int = 256  # encoder_decoder ablation only
    decoder_depth: int = 0  # encoder_decoder ablation only
    decoder_num_heads: int = 4
    mlp_ratio: float = 4.0
    attn_dropout: float = 0.1
    proj_dropout: float = 0.1
    norm_eps: float = 1e-6
    attention: str = "turn_causal"
    # init of the learned position embedding: "random" (N(0, 0.02), the release) or "frame_sincos": sin/cos
    # codes of the frame index inside the turn, of the turn index and of the token's stream, so that the
    # tokens of one frame (user speech, user motion, agent speech, agent motion) start out similar and the
    # masked agent-motion tokens can find their frame's speech early in training (still learned afterwards);
    # "time_sincos": the same with the frame's time in the window instead of its index inside the turn, so
    # the same frame of an earlier turn no longer shares the code (docs/synthetic-corpus.md, lock-on)
    pos_embed_init: str = "random"
    backbone: str = "encoder_only"
    # --- training ---
    mask_ratio_min: float = 0.7  # 1.0: always mask every agent-motion token (as streaming inference does)
    cond_drop_prob: float = 0.1
    # Learned "not observed" codes for the partner's motion: NaN in a part of the user motion (the face =
    # expression + jaw, or the head rotation) marks it as unobserved (a head-pose tracker has no face, a
    # robot without a tracker has neither); the part enters as the training mean and its code is added to
    # the token (TIMAR.encode_motion). Off = the release: absent parts are fed as zeros, indistinguishable
    # from a partner who holds a neutral face (timar_model/data/partner_motion.py).
    partner_absent_embed: bool = False
    # --- head ---
    head: str = "diffusion"
    diffloss_depth: int = 3
    diffloss_width: int = 256
    num_sampling_steps: str = "5"
    noise_schedule: str = "cosine"
    diffusion_batch_mul: int = 4
    temperature: float = 1.0
    # Sampling only (training is unchanged): clamp the learned-range variance output to its design range
    # [-1, 1] (variance between the clipped posterior variance and beta). Off = the public code, which
    # extrapolates; a briefly trained head can output far outside the range (the shipped small model does:
    # `timar diagnose`), and the extrapolated noise of the few respaced steps then swamps the sample.
    clamp_variance: bool = False
    # Sampling only, streaming: correlation rho of the diffusion noise from one frame to the next (an AR(1)
    # process with unit variance per frame, continuous across turns, one per sampling step and channel).
    # 0 = an independent draw per token, as the public code; each frame's marginal is N(0, I) either way,
    # but independent draws make a per-token head jitter from frame to frame (`head_speed_ratio`).
    noise_correlation: float = 0.0
    # Sampling only, streaming: a causal one-pole low-pass on the head rotation (columns 53:56) of the output,
    # y_f = a * y_(f-1) + (1 - a) * x_f, continuous across turns; 0 = off (the samples as drawn). The head's
    # remaining frame-to-frame jitter at a noise correlation that keeps FD-exp (`head_speed_ratio`) is
    # removed at a delay of about a / (1 - a) frames; expression and jaw are untouched
    # (models/timar-small-synth/SMOOTHNESS.md).
    head_smoothing: float = 0.0
    # --- speech front-end ---
    speech_encoder: str = "logmel"
    speech_encoder_config: dict[str, Any] | None = None  # transformers config dict (wav2vec2 / hubert)
    logmel_n_mels: int = 80
    logmel_channels: int = 256
    # a LayerNorm on the log-mel front-end's output features (speech.LogMelSpeechEncoder): speech tokens then
    # enter the backbone at the scale of the position codes instead of far below them (an experiment on the
    # jaw, docs/synthetic-corpus.md "What TIMAR-small learns of v2"; off in the presets and the shipped model)
    logmel_out_norm: bool = False
    audio_norm: str = "turn"  # causal substitute for the published whole-file normalisation ("none": as is)
    # --- motion normalisation (not in the published runs, which model raw values: None there) ---
    # Per-dimension statistics of the training motion (56 each). When set, motion inputs and diffusion /
    # MLP targets are (x - mean) / std inside the model and samples are mapped back, so that the small jaw
    # and head-rotation dimensions weigh as much as the expression in the loss. Outputs stay raw FLAME values.
    motion_mean: list[float] | None = None
    motion_std: list[float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key, allowed in _CHOICES.items():
            value = getattr(self, key)
            if value not in allowed:
                raise ValueError(f"TimarConfig.{key}={value!r}; expected one of {allowed}")
        if self.width % self.num_heads:
            raise ValueError(f"TimarConfig: width {self.width} not divisible by num_heads {self.num_heads}")
        if self.sample_rate % self.motion_fps:
            raise ValueError("TimarConfig: sample_rate must be a multiple of motion_fps")
        if self.frames_per_turn < 1 or self.context_turns < 1:
            raise ValueError("TimarConfig: frames_per_turn and context_turns must be >= 1")
        if self.speech_encoder in ("wav2vec2", "hubert") and self.speech_encoder_config is None:
            raise ValueError(
                f"TimarConfig: speech_encoder={self.speech_encoder!r} needs speech_encoder_config"
            )
        if (self.motion_mean is None) != (self.motion_std is None):
            raise ValueError("TimarConfig: motion_mean and motion_std are set together")
        if self.motion_std is not None:
            if len(self.motion_mean) != self.motion_dim or len(self.motion_std) != self.motion_dim:
                raise ValueError(f"TimarConfig: motion_mean/motion_std need {self.motion_dim} values each")
            if min(self.motion_std) <= 0:
                raise ValueError("TimarConfig: motion_std must be > 0 in every dimension")
        if not 0.0 < self.mask_ratio_min <= 1.0:
            raise ValueError(f"TimarConfig: mask_ratio_min must be in (0, 1], got {self.mask_ratio_min}")
        if not 0.0 <= self.head_smoothing < 1.0:
            raise ValueError(f"TimarConfig: head_smoothing must be in [0, 1), got {self.head_smoothing}")
        if self.backbone == "encoder_decoder" and self.decoder_depth < 1:
            raise ValueError("TimarConfig: backbone='encoder_decoder' needs decoder_depth >= 1")

    # derived sizes
    @property
    def samples_per_turn(self) -> int:
        return self.frames_per_turn * self.sample_rate // self.motion_fps

    @property
    def tokens_per_turn(self) -> int:
        return 4 * self.frames_per_turn + NUM_SPECIAL_TOKENS

    @property
    def seq_len(self) -> int:
        return self.context_turns * self.tokens_per_turn

    @property
    def head_width(self) -> int:
        """Width of the backbone output z that conditions the head."""
        return self.decoder_width if self.backbone == "encoder_decoder" else self.width

    # serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TimarConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known - set(REMOVED_FIELDS))
        if unknown:
            raise ValueError(f"TimarConfig.from_dict: unknown keys {unknown}")
        return cls(**{k: v for k, v in d.items() if k in known})

    def save(self, path: str | Path) -> None:
        path = Path(path)
        if path.suffix in (".yaml", ".yml"):
            import yaml

            path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        else:
            path.write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> TimarConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"TimarConfig.load: no such file {path}")
        is_yaml = path.suffix in (".yaml", ".yml")
        try:
            if is_yaml:
                import yaml

                d = yaml.safe_load(path.read_text())
            else:
                d = json.loads(path.read_text())
        except Exception as e:  # invalid JSON (a ValueError), invalid YAML (a yaml.YAMLError), not UTF-8 text
            if not isinstance(e, ValueError) and not type(e).__module__.startswith("yaml"):
                raise
            kind, msg = ("YAML" if is_yaml else "JSON"), " ".join(str(e).split())
            raise ConfigError(f"{path}: not valid {kind} ({msg}); fix it or copy it again from the model") from e
        if not isinstance(d, dict):
            raise ConfigError(f"TimarConfig.load: {path} does not hold a mapping")
        for f in dataclasses.fields(cls):
            expected = _SCALAR_TYPES.get(str(f.type))
            if expected is not None and f.name in d and not _is_a(d[f.name], expected):
                raise ConfigError(
                    f"{path}: {f.name}={d[f.name]!r} is not a {f.type}; fix the value or copy the file again "
                    "from the model"
                )
        try:
            return cls.from_dict(d)
        except (TypeError, ValueError) as e:  # unknown keys, values of the wrong type or out of range
            raise ConfigError(f"{path}: {e}; fix the value or copy the file again from the model") from e

    def replace(self, **changes: Any) -> TimarConfig:
        return dataclasses.replace(self, **changes)


# The tiny wav2vec2 of the reference fixture (stable layer norm, like wav2vec2-large-lv60).
REFERENCE_TINY_WAV2VEC2: dict[str, Any] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": [32] * 7,
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_bias": True,
    "feat_extract_norm": "layer",
    "do_stable_layer_norm": True,
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 2,
    "hidden_dropout": 0.0,
    "attention_dropout": 0.0,
    "activation_dropout": 0.0,
    "feat_proj_dropout": 0.0,
    "layerdrop": 0.0,
    "apply_spec_augment": False,
}

# facebook/wav2vec2-large-960h-lv60-self architecture (weights come from a local folder).
WAV2VEC2_LARGE_LV60: dict[str, Any] = {
    "model_type": "wav2vec2",
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "conv_dim": [512] * 7,
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_bias": True,
    "feat_extract_norm": "layer",
    "do_stable_layer_norm": True,
    "num_conv_pos_embeddings": 128,
    "num_conv_pos_embedding_groups": 16,
    "hidden_dropout": 0.1,
    "attention_dropout": 0.1,
    "activation_dropout": 0.1,
    "feat_proj_dropout": 0.1,
    "layerdrop": 0.1,
    "apply_spec_augment": True,
}


def _presets() -> dict[str, TimarConfig]:
    published = dict(
        speech_encoder="wav2vec2",
        speech_encoder_config=WAV2VEC2_LARGE_LV60,
        speech_dim=1024,
        token_dim=1024,
        audio_norm="turn",
        diffloss_depth=3,
        diffloss_width=1024,
    )
    return {
        "reference-tiny": TimarConfig(
            name="reference-tiny",
            context_turns=4,
            token_dim=64,
            speech_dim=32,
            width=64,
            depth=4,  # encoder_depth 2 + decoder_depth 2, use_encoder_only
            num_heads=4,
            decoder_width=64,
            decoder_num_heads=4,
            diffloss_depth=2,
            diffloss_width=64,
            speech_encoder="wav2vec2",
            speech_encoder_config=dict(REFERENCE_TINY_WAV2VEC2),
            audio_norm="file",
        ),
        "small": TimarConfig(
            name="small",
            token_dim=256,
            speech_dim=256,
            width=256,
            depth=6,
            num_heads=4,
            decoder_width=256,
            diffloss_depth=3,
            diffloss_width=256,
            speech_encoder="logmel",
            logmel_n_mels=80,
            logmel_channels=256,
            audio_norm="none",  # the log-mel front-end sees the level as recorded (see speech.py)
            pos_embed_init="frame_sincos",
        ),
        "base": TimarConfig(
            name="base",
            width=768,
            depth=24,
            num_heads=12,
            decoder_width=768,
            decoder_num_heads=12,
            **published,
        ),
        "large": TimarConfig(
            name="large",
            width=1024,
            depth=32,
            num_heads=16,
            decoder_width=1024,
            decoder_num_heads=16,
            **published,
        ),
        "huge": TimarConfig(
            name="huge",
            width=1280,
            depth=40,
            num_heads=16,
            decoder_width=1280,
            decoder_num_heads=16,
            **published,
        ),
    }


PRESETS = tuple(_presets())


def get_preset(name: str, **overrides: Any) -> TimarConfig:
    """A fresh TimarConfig for preset `name` (see PRESETS), with optional field overrides."""
    presets = _presets()
    if name not in presets:
        raise ValueError(f"get_preset: unknown preset {name!r}; known: {', '.join(presets)}")
    cfg = presets[name]
    return cfg.replace(**overrides) if overrides else cfg
