"""Training recipes: the `TrainRecipe` a run is made of, read from YAML with `key=value` overrides, and the
model it builds (preset + overrides, optional pretrained speech encoder, staged training).

A recipe is a flat YAML mapping of `TrainRecipe` keys (config/train/*.yaml); on the command line
`key=value` overrides a key and `model.<field>=value` a TimarConfig field. Unknown keys are an error.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from timar_model.data.partner_motion import check_dropout
from timar_model.motion import MOTION_DIM

PRECISIONS = ("fp32", "bf16", "fp16")
MODEL_TYPES = ("timar", "dualtalk")  # what `model_type` builds: TIMAR, or the DualTalk baseline
SCHEDULES = ("constant", "cosine")


@dataclass
class TrainRecipe:
    """Everything a training run needs. Paths are relative to the working directory."""

    name: str = "timar"
    model_type: str = "timar"  # timar | dualtalk (the baseline: timar_model.model.dualtalk_baseline)
    preset: str = "small"  # timar_model.model.config preset (dualtalk: dualtalk_preset, small | paper)
    model: dict = field(default_factory=dict)  # TimarConfig (DualTalkConfig) field overrides
    speech_encoder_path: str | None = None  # local wav2vec2 / HuBERT folder (pretrained, frozen)
    train_data: str = "data/synth/train"  # DualTalk-layout split
    val_data: str | None = None  # split for periodic validation (None: no validation)
    cache_dir: str | None = None  # data cache (None: no cache)
    window_turns: int | None = None  # turns per training window (None: the model's context_turns)
    window_stride_turns: int | None = None  # turns between training windows of a clip (None: window length)
    motion_norm: bool = False  # per-dimension motion mean/std from train_data stored in the model config
    batch_size: int = 16  # per process
    lr: float | None = None  # absolute learning rate; None: blr * global_batch / 256
    blr: float = 1e-4
    min_lr: float = 0.0  # cosine floor
    schedule: str = "constant"  # after warm-up: constant | cosine
    epochs: float | None = None  # budget in epochs (one of epochs / max_steps)
    max_steps: int | None = None
    warmup_epochs: float = 0.0  # or warmup_steps (steps win if both are set)
    warmup_steps: int | None = None
    weight_decay: float = 0.02
    betas: list = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 3.0  # global grad-norm clip; 0 = off
    ema_decay: float = 0.9999
    precision: str = "fp32"  # autocast dtype on GPU: fp32 | bf16 | fp16
    cpu_bf16: bool = False  # also use bf16 autocast on CPU
    grad_checkpointing: bool = False
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda (under torchrun: cuda:LOCAL_RANK)
    threads: int | None = None  # torch CPU threads (None: torch default)
    num_workers: int = 0  # DataLoader workers per process
    log_every: int = 10  # steps between CSV/TensorBoard rows
    ckpt_every: int = 500  # steps between resumable checkpoints (and at the end)
    val_every: int = 0  # steps between validations (0: only at the end)
    val_clips: int = 2  # clips of val_data (each gives 2 samples)
    val_context: int = 7  # history turns n used for validation
    val_max_seconds: int | None = 20  # cut each validation sample
    export_fp16: bool = False  # store the exported EMA weights as float16
    find_unused_parameters: bool = False  # DDP option
    # staged training: start from the weights of an exported model (a `final/` folder or models/<name>):
    # every parameter whose name and shape match is copied, the rest keep their fresh init
    init_from: str | None = None
    # train only parameters whose names start with one of these prefixes (None: all). The others are frozen
    # (requires_grad False: left out of the optimiser, the EMA copies them unchanged)
    trainable: list | None = None
    # train without (part of) the partner's motion: {pose: p, none: q} gives each training window the
    # head-pose-only view with probability p and no partner motion with q (timar_model.data.partner_motion)
    partner_motion_dropout: dict = field(default_factory=dict)

    def validate(self, source: str = "recipe") -> None:
        def bad(msg: str) -> ValueError:
            return ValueError(f"{source}: {msg}")

        if self.model_type not in MODEL_TYPES:
            raise bad(f"model_type must be one of {MODEL_TYPES}, got {self.model_type!r}")
        try:
            check_dropout(self.partner_motion_dropout or {})
        except ValueError as e:
            raise bad(str(e)) from None
        if self.precision not in PRECISIONS:
            raise bad(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.schedule not in SCHEDULES:
            raise bad(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if (self.epochs is None) == (self.max_steps is None):
            raise bad("give exactly one of epochs or max_steps")
        if self.batch_size < 1:
            raise bad(f"batch_size must be >= 1, got {self.batch_size}")
        for k in ("window_turns", "window_stride_turns"):
            if getattr(self, k) is not None and getattr(self, k) < 1:
                raise bad(f"{k} must be >= 1 (or unset), got {getattr(self, k)}")
        if len(self.betas) != 2:
            raise bad(f"betas must be two numbers, got {self.betas}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise bad(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not isinstance(self.model, dict):
            raise bad(f"model must be a mapping of TimarConfig overrides, got {self.model!r}")
        for k in ("log_every", "ckpt_every"):
            if getattr(self, k) < 1:
                raise bad(f"{k} must be >= 1")
        if self.trainable is not None and (
            not isinstance(self.trainable, list) or not all(isinstance(x, str) and x for x in self.trainable)
        ):
            raise bad(f"trainable must be a list of parameter-name prefixes, got {self.trainable!r}")


def _coerce(text: str):
    """Command-line value -> python: YAML scalars, plus numbers YAML 1.1 leaves as strings ("1e-4")."""
    import yaml

    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def apply_overrides(d: dict, overrides: list[str]) -> dict:
    """['batch_size=8', 'model.depth=2'] applied to a recipe dict (a new dict is returned)."""
    d = copy.deepcopy(d)
    valid = {f.name for f in dataclasses.fields(TrainRecipe)}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r}: expected key=value")
        value = _coerce(text)
        if key.startswith("model."):
            d.setdefault("model", {})
            d["model"] = {**(d["model"] or {}), key[len("model.") :]: value}
        elif key in valid:
            d[key] = value
        else:
            raise ValueError(
                f"override {item!r}: unknown key {key!r}; valid keys: {', '.join(sorted(valid))}"
            )
    return d


def load_recipe(path: str | Path | None, overrides: list[str] | None = None) -> TrainRecipe:
    """Read a YAML recipe (or start from the defaults when path is None) and apply key=value overrides."""
    import yaml

    d: dict = {}
    source = "recipe"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"--config {path}: no such recipe file (see config/train/*.yaml)")
        source = str(path)
        d = yaml.safe_load(path.read_text()) or {}
        if not isinstance(d, dict):
            raise ValueError(f"{path}: a recipe must be a YAML mapping")
        valid = {f.name for f in dataclasses.fields(TrainRecipe)}
        unknown = sorted(set(d) - valid)
        if unknown:
            raise ValueError(f"{path}: unknown recipe keys {unknown}; valid keys: {', '.join(sorted(valid))}")
        d.setdefault("name", path.stem)
    d = apply_overrides(d, overrides or [])
    d["model"] = d.get("model") or {}
    d["partner_motion_dropout"] = d.get("partner_motion_dropout") or {}
    recipe = TrainRecipe(**d)
    for k in ("lr", "blr", "min_lr", "weight_decay", "grad_clip", "ema_decay", "warmup_epochs"):
        v = getattr(recipe, k)
        if v is not None:
            setattr(recipe, k, float(v))
    recipe.validate(source)
    return recipe


def build_config(recipe: TrainRecipe, extra: dict | None = None):
    """The model's TimarConfig: the preset with `extra` then the recipe's overrides (unknown fields are an
    error)."""
    from timar_model.model.config import TimarConfig, get_preset

    base = get_preset(recipe.preset).to_dict()
    unknown = sorted(set(recipe.model) - set(base))
    if unknown:
        raise ValueError(
            f"recipe model overrides {unknown} are not TimarConfig fields; valid: {', '.join(base)}"
        )
    return TimarConfig.from_dict({**base, **(extra or {}), **recipe.model})


def build_dualtalk(recipe: TrainRecipe) -> nn.Module:
    """The DualTalk baseline of a recipe with model_type dualtalk: dualtalk_preset(preset) + recipe.model
    overrides, motion statistics (motion_norm) and a pretrained speech encoder (speech_encoder_path, both
    speakers' encoders) as for TIMAR."""
    from timar_model.model.dualtalk_baseline import DualTalk, dualtalk_preset

    base = dualtalk_preset(recipe.preset).to_dict()
    unknown = sorted(set(recipe.model) - set(base))
    if unknown:
        raise ValueError(f"recipe model overrides {unknown} are not DualTalkConfig fields; valid: {', '.join(base)}")
    extra: dict = {}
    speech = None
    if recipe.speech_encoder_path:
        from timar_model.model.speech import load_transformers_speech_model, speech_config_dict

        kind, speech = load_transformers_speech_model(recipe.speech_encoder_path)
        extra = {"speech_encoder": kind, "speech_encoder_config": speech_config_dict(speech),
                 "speech_dim": speech.config.hidden_size}
    if recipe.motion_norm and "motion_std" not in recipe.model:
        extra.update(motion_statistics(Path(recipe.train_data)))
    from timar_model.model.dualtalk_baseline import DualTalkConfig

    model = DualTalk(DualTalkConfig.from_dict({**base, **extra, **recipe.model}))
    if speech is not None:
        for enc in (model.user_speech_encoder, model.agent_speech_encoder):
            enc.model.load_state_dict(speech.state_dict())
    if recipe.init_from:
        init_from_pretrained(model, Path(recipe.init_from))
    if recipe.trainable is not None:
        freeze_except(model, recipe.trainable)
    return model


def build_model(recipe: TrainRecipe) -> nn.Module:
    """A freshly initialised TIMAR for the recipe (or the DualTalk baseline: model_type dualtalk). With
    `speech_encoder_path` (a local transformers folder, e.g. wav2vec2-large-960h-lv60-self), its pretrained
    weights and config replace the preset's encoder."""
    from timar_model.model.timar import TIMAR

    if recipe.model_type == "dualtalk":
        return build_dualtalk(recipe)

    speech, extra = None, {}
    if recipe.speech_encoder_path:
        from timar_model.model.speech import load_transformers_speech_model, speech_config_dict

        kind, speech = load_transformers_speech_model(recipe.speech_encoder_path)
        extra = {
            "speech_encoder": kind,
            "speech_encoder_config": speech_config_dict(speech),
            "speech_dim": speech.config.hidden_size,
        }
    source = _init_config(recipe)  # the first stage's config (None without init_from)
    if recipe.motion_norm and "motion_std" not in recipe.model:
        if source is not None and source.motion_std is not None:  # keep the space the weights were trained in
            extra.update(motion_mean=list(source.motion_mean), motion_std=list(source.motion_std))
        else:
            extra.update(motion_statistics(Path(recipe.train_data)))
    config = build_config(recipe, extra)
    if config.partner_absent_embed and not recipe.partner_motion_dropout:
        raise ValueError("model.partner_absent_embed needs partner_motion_dropout (else its codes never train)")
    if source is not None and source.partner_absent_embed != config.partner_absent_embed:
        raise ValueError(
            f"model.partner_absent_embed is {config.partner_absent_embed} but init_from {recipe.init_from} was "
            f"trained with {source.partner_absent_embed}: set it the same in both stages"
        )
    model = TIMAR(config)
    if speech is not None:
        model.speech_encoder.model.load_state_dict(speech.state_dict())
    if recipe.init_from:
        init_from_pretrained(model, Path(recipe.init_from))
    if recipe.trainable is not None:
        freeze_except(model, recipe.trainable)
    return model


def _init_config(recipe: TrainRecipe):
    """The TimarConfig of recipe.init_from (None without one); a clear error when it is missing."""
    if not recipe.init_from:
        return None
    from timar_model.model.checkpoint import CONFIG_NAME
    from timar_model.model.config import TimarConfig

    path = Path(recipe.init_from) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"init_from {recipe.init_from}: no {CONFIG_NAME} there (train the first stage, e.g. "
            "`timar train --config config/train/small-synthetic-mlp.yaml`, or point at an exported model)"
        )
    return TimarConfig.load(path)


def init_from_pretrained(model: nn.Module, path: Path) -> tuple[list[str], list[str]]:
    """Copy every parameter / buffer of the exported model at `path` whose name and shape match into `model`.
    Returns (copied, kept) names: `kept` are the model's own entries that stayed freshly initialised (e.g.
    a diffusion head when starting from an MLP-head model)."""
    from timar_model.model.checkpoint import load_pretrained

    src = load_pretrained(path).state_dict()
    own = model.state_dict()
    copied = [k for k, v in src.items() if k in own and own[k].shape == v.shape]
    if not copied:
        raise ValueError(f"init_from {path}: no parameter matches this recipe's model (name and shape)")
    model.load_state_dict({k: src[k].to(own[k].dtype) for k in copied}, strict=False)
    kept = [k for k in own if k not in set(copied)]
    return copied, kept


def freeze_except(model: nn.Module, prefixes: list[str]) -> int:
    """requires_grad False for every parameter whose name starts with none of `prefixes`; returns the number
    of parameters left trainable (an error when none is)."""
    n = 0
    for name, p in model.named_parameters():
        keep = name.startswith(tuple(prefixes))
        p.requires_grad_(keep and p.requires_grad)
        n += p.numel() if p.requires_grad else 0
    if n == 0:
        raise ValueError(f"trainable {prefixes}: matches no trainable parameter")
    return n


def motion_statistics(train_dir: Path, min_std: float = 1e-3) -> dict[str, list[float]]:
    """Per-dimension mean and std of the agent motion of every sample of a DualTalk-layout split (both speaker
    roles, so every frame counts once per speaker). std is floored at `min_std` so that a dimension that
    hardly moves in the data is not blown up."""
    from timar_model.data.dualtalk import list_samples

    samples = list_samples(train_dir)
    if not samples:
        raise FileNotFoundError(f"train_data {train_dir}: no clips to compute motion statistics from")
    total = np.zeros(MOTION_DIM)
    total_sq = np.zeros(MOTION_DIM)
    count = 0
    for sample in samples:
        m = np.asarray(sample.agent_motion, dtype=np.float64)  # (T, MOTION_DIM)
        total += m.sum(0)
        total_sq += (m * m).sum(0)
        count += len(m)
        sample.release()
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
    return {"motion_mean": mean.tolist(), "motion_std": np.maximum(std, min_std).tolist()}
