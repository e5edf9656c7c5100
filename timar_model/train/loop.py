"""`timar train`: train TIMAR from a YAML recipe (single process, or many through torchrun + DDP).

    timar train --config config/train/small-synthetic.yaml [--out DIR] [--resume] [key=value ...]
    torchrun --nproc_per_node 8 -m timar_model.cli train --config config/train/large-dualtalk.yaml

Recipe (a flat YAML mapping, every key of `TrainRecipe`; `key=value` overrides on the command line,
`model.<field>=value` for TimarConfig fields):
- optimiser: AdamW, betas (0.9, 0.95), weight decay 0.02 on weight matrices only (no decay on 1-d
  tensors = norms and biases, position embeddings, special-token / mask / fake-latent tokens and
  embedding tables; see `param_groups`);
- learning rate: `lr` if given, else `blr * global_batch / 256` (MAR's rule; global batch = batch_size
  x world size); linear warm-up from 0 then constant or cosine (down to `min_lr`), set every step;
- grad clip 3.0 (global norm), EMA of the weights (saved, used for validation and exported);
- precision: `bf16` / `fp16` autocast on GPU (fp16 with a GradScaler), `fp32`; bf16 autocast on CPU only
  with `cpu_bf16: true`; optional gradient checkpointing of the transformer blocks;
- deterministic: the model is initialised from `seed`, the data order of epoch e comes from (seed, e),
  and `--resume` restores model, EMA, optimiser, scaler, step and every RNG state, so an interrupted run
  continues exactly like an uninterrupted one (same step count, same weights);
- logs: tqdm bar (loss, lr, samples/s), `OUT/train_log.csv`, `OUT/val_log.csv`, and TensorBoard event
  files in `OUT/tb/` when the `tensorboard` package is installed (otherwise CSV only);
- periodic validation (every `val_every` steps and at the end) streams a few clips of `val_data` with the
  StreamingGenerator on the EMA weights and logs FD-exp, MSE-jaw and P-FD-pose;
- output: `OUT/checkpoints/last.pt` (resumable), `OUT/final/` = save_pretrained(EMA weights, fp32 or fp16)
  + `recipe.yaml` (the resolved recipe).
Multi-GPU / multi-node: the same script under torchrun (LOCAL_RANK / RANK / WORLD_SIZE detected),
DistributedDataParallel, a DistributedSampler, logging/validation/saving on rank 0 only.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import math
import os
import random
import re
import time
import types
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULES = ("constant", "cosine")
# Parameter-name fragments that never get weight decay (besides every 1-d tensor).
NO_DECAY_NAME_PARTS = ("pos_embed", "token", "latent")
CHECKPOINT_NAME = "checkpoints/last.pt"


# ----------------------------------------------------------------------------- recipe


@dataclass
class TrainRecipe:
    """Everything a training run needs. Paths are relative to the working directory."""

    name: str = "timar"
    preset: str = "small"  # timar_model.model.config preset
    model: dict = field(default_factory=dict)  # TimarConfig field overrides
    speech_encoder_path: str | None = None  # local wav2vec2 / HuBERT folder (pretrained, frozen)
    train_data: str = "data/synth/train"  # DualTalk-layout split
    val_data: str | None = None  # split for periodic validation (None: no validation)
    cache_dir: str | None = None  # data cache (None: no cache)
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

    def validate(self, source: str = "recipe") -> None:
        def bad(msg: str) -> ValueError:
            return ValueError(f"{source}: {msg}")

        if self.precision not in PRECISIONS:
            raise bad(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.schedule not in SCHEDULES:
            raise bad(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if (self.epochs is None) == (self.max_steps is None):
            raise bad("give exactly one of epochs or max_steps")
        if self.batch_size < 1:
            raise bad(f"batch_size must be >= 1, got {self.batch_size}")
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


def build_model(recipe: TrainRecipe) -> nn.Module:
    """A freshly initialised TIMAR for the recipe. With `speech_encoder_path` (a local transformers folder,
    e.g. wav2vec2-large-960h-lv60-self), its pretrained weights and config replace the preset's encoder."""
    from timar_model.model.timar import TIMAR

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
    model = TIMAR(build_config(recipe, extra))
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
    total = np.zeros(56)
    total_sq = np.zeros(56)
    count = 0
    for sample in samples:
        m = np.asarray(sample.agent_motion, dtype=np.float64)  # (T, 56)
        total += m.sum(0)
        total_sq += (m * m).sum(0)
        count += len(m)
        sample.release()
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
    return {"motion_mean": mean.tolist(), "motion_std": np.maximum(std, min_std).tolist()}


# ----------------------------------------------------------------------------- optimiser / schedule


def no_weight_decay(name: str, param: torch.Tensor, embedding_params: set[str]) -> bool:
    """True for norms/biases (1-d), position embeddings, tokens, latents and embedding tables."""
    return param.ndim <= 1 or name in embedding_params or any(p in name for p in NO_DECAY_NAME_PARTS)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: [{params: decayed, weight_decay}, {params: not decayed, weight_decay: 0}].

    Not decayed: every 1-d tensor (LayerNorm weights, biases), names containing pos_embed / token /
    latent (position embeddings, mask_token, fake_latent) and the weights of nn.Embedding tables
    (sep_tok_emb). Linear weights whose module is merely called "*_embed" (the diffusion head's
    time_embed / cond_embed MLPs) are ordinary weight matrices and are decayed. Frozen parameters
    (requires_grad False, e.g. a pretrained speech encoder) are left out of the optimiser.
    """
    embedding_params = {
        f"{mod_name}.{p_name}" if mod_name else p_name
        for mod_name, mod in model.named_modules()
        if isinstance(mod, nn.Embedding)
        for p_name, _ in mod.named_parameters(recurse=False)
    }
    decay, no_decay, decay_names, no_decay_names = [], [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if no_weight_decay(name, p, embedding_params):
            no_decay.append(p)
            no_decay_names.append(name)
        else:
            decay.append(p)
            decay_names.append(name)
    return [
        {"params": decay, "weight_decay": weight_decay, "names": decay_names},
        {"params": no_decay, "weight_decay": 0.0, "names": no_decay_names},
    ]


def base_lr(recipe: TrainRecipe, world_size: int) -> float:
    """Peak learning rate: recipe.lr, or blr * global batch / 256 (MAR's scaling rule)."""
    if recipe.lr is not None:
        return recipe.lr
    return recipe.blr * recipe.batch_size * world_size / 256


def lr_at(step: int, peak: float, warmup: int, total: int, schedule: str, min_lr: float = 0.0) -> float:
    """Learning rate of optimiser step `step` (0-based): linear warm-up (step+1)/warmup * peak, then
    constant peak, or cosine from peak to min_lr at `total`."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak
    if schedule == "cosine":
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_lr + (peak - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")


def _checkpointed_forward(self: nn.Module, *args, **kwargs):
    """A block's forward recomputed in the backward pass (bound per block, so deepcopy rebinds it)."""
    from torch.utils.checkpoint import checkpoint

    forward = type(self).forward
    if self.training and torch.is_grad_enabled():
        return checkpoint(forward, self, *args, use_reentrant=False, **kwargs)
    return forward(self, *args, **kwargs)


def enable_gradient_checkpointing(model: nn.Module) -> int:
    """Recompute each transformer block in the backward pass (torch.utils.checkpoint, non-reentrant):
    activation memory of one block instead of all. Returns the number of wrapped blocks."""
    blocks = [b for attr in ("encoder_blocks", "decoder_blocks") for b in getattr(model, attr, [])]
    if not blocks:
        raise ValueError("grad_checkpointing: the model has no encoder_blocks / decoder_blocks to checkpoint")
    for block in blocks:
        block.forward = types.MethodType(_checkpointed_forward, block)
    return len(blocks)


# ----------------------------------------------------------------------------- data order


class EpochBatchSampler(torch.utils.data.Sampler):
    """Batches of a DistributedSampler for one epoch, skipping the first `skip` batches (resume)."""

    def __init__(
        self, sampler: torch.utils.data.distributed.DistributedSampler, batch_size: int, skip: int = 0
    ):
        self.sampler, self.batch_size, self.skip = sampler, batch_size, skip

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size - self.skip

    def __iter__(self):
        indices = list(self.sampler)
        for b in range(self.skip, len(indices) // self.batch_size):
            yield indices[b * self.batch_size : (b + 1) * self.batch_size]


# ----------------------------------------------------------------------------- distributed / rng


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_name: str) -> tuple[DistInfo, torch.device]:
    """Detect torchrun (WORLD_SIZE > 1) and start the process group; pick the device."""
    info = DistInfo(
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    if device_name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device_name!r} requested but CUDA is not available")
        device = torch.device("cuda", info.local_rank) if info.enabled else torch.device(device_name)
        torch.cuda.set_device(device)
    else:
        device = torch.device(device_name)
    if info.enabled and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info, device


def rng_state() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [torch.from_numpy(np.random.get_state()[1].astype(np.int64)), *np.random.get_state()[2:]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _LossModule(nn.Module):
    """DDP wraps forward(); TIMAR's training entry point is training_loss()."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, user_speech, user_motion, agent_speech, agent_motion):
        return self.model.training_loss(user_speech, user_motion, agent_speech, agent_motion)


# ----------------------------------------------------------------------------- logging


class MetricLogger:
    """Rows to CSV files (append, header once) and, when available, TensorBoard scalars."""

    def __init__(self, out: Path, enabled: bool):
        self.out, self.enabled, self.tb = out, enabled, None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tb"))
        except ImportError:
            print("note: the `tensorboard` package is not installed; metrics go to CSV only")

    def log(self, file: str, step: int, row: dict[str, float]) -> None:
        if not self.enabled:
            return
        path = self.out / file
        new = not path.exists()
        with open(path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["step", *row])
            w.writerow([step, *(f"{v:.8g}" if isinstance(v, float) else v for v in row.values())])
        if self.tb is not None:
            prefix = Path(file).stem
            for k, v in row.items():
                self.tb.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(
    path: Path, model: nn.Module, ema, optimizer, scaler, step: int, recipe: TrainRecipe
) -> None:
    """Resumable state, written atomically (tmp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "step": step,
        "recipe": dataclasses.asdict(recipe),
        "rng": rng_state(),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, device: torch.device) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {path} (start without --resume)")
    return torch.load(path, map_location=device, weights_only=True)


def export_model(model: nn.Module, ema, out_dir: Path, recipe: TrainRecipe) -> Path:
    """save_pretrained(EMA weights) into out_dir (fp16 floats if recipe.export_fp16) + recipe.yaml."""
    import yaml

    from timar_model.model.checkpoint import save_pretrained

    m = copy.deepcopy(model).to("cpu")
    ema.copy_to(m)
    if recipe.export_fp16:
        for p in m.parameters():
            p.data = p.data.half()
    save_pretrained(m, out_dir)
    (out_dir / "recipe.yaml").write_text(yaml.safe_dump(dataclasses.asdict(recipe), sort_keys=False))
    return out_dir


# ----------------------------------------------------------------------------- validation


def validate(
    model: nn.Module, ema, samples: list, recipe: TrainRecipe, device: torch.device
) -> dict[str, float]:
    """Stream `samples` with the EMA weights; FD-exp, MSE-jaw, P-FD-pose and the jaw~speech correlation."""
    from timar_model.eval.evaluate import evaluate_predictor, generator_predictor
    from timar_model.runtime.streaming import StreamingGenerator

    m = copy.deepcopy(model)
    ema.copy_to(m)
    m.eval()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # validation never perturbs the training RNG
        gen = StreamingGenerator(
            m, device=str(device), dtype="float32", context_turns=recipe.val_context + 1, seed=0
        )
        res = evaluate_predictor(
            generator_predictor(gen), samples, None, recipe.val_context, max_turns=recipe.val_max_seconds
        )
    keys = ("fid_exp", "mse_jaw", "p_fid_pose", "jaw_speech_pred")
    return {k: res.mean[k] for k in keys}


# ----------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    step: int
    final_dir: Path | None
    last_loss: float
    losses: list[float]


def train(
    recipe: TrainRecipe,
    out: str | Path,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Run (or continue) a training run into `out`. `stop_after`: save a checkpoint at that step and
    return without exporting (for time-limited jobs; continue later with resume=True)."""
    from timar_model.data.dualtalk import DualTalkWindows, list_samples
    from timar_model.train.ema import EMA

    out = Path(out)
    info, device = init_distributed(recipe.device)
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)

    # model (identical init on every rank), then per-rank training randomness
    seed_everything(recipe.seed)
    model = build_model(recipe).to(device)
    config = model.config
    if recipe.grad_checkpointing:
        enable_gradient_checkpointing(model)
    ema = EMA(model, recipe.ema_decay)
    seed_everything(recipe.seed + 1000 * info.rank)

    # data
    train_dir = Path(recipe.train_data)
    if not train_dir.is_dir():
        raise FileNotFoundError(f"train_data {train_dir}: not a directory (make one with `timar synth`)")
    dataset = DualTalkWindows(
        train_dir,
        window_turns=config.context_turns,
        audio_norm=config.audio_norm,
        cache_dir=recipe.cache_dir,
        stride_turns=recipe.window_stride_turns,
    )
    sampler = torch.utils.data.distributed.DistributedSampler(
        dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=recipe.seed, drop_last=True
    )
    steps_per_epoch = len(sampler) // recipe.batch_size
    if steps_per_epoch < 1:
        raise ValueError(
            f"train_data {train_dir}: {len(dataset)} windows are fewer than one global batch "
            f"({recipe.batch_size} x {info.world_size})"
        )
    total = recipe.max_steps if recipe.max_steps is not None else round(recipe.epochs * steps_per_epoch)
    warmup = (
        recipe.warmup_steps
        if recipe.warmup_steps is not None
        else round(recipe.warmup_epochs * steps_per_epoch)
    )
    peak = base_lr(recipe, info.world_size)

    groups = param_groups(model, recipe.weight_decay)
    optimizer = torch.optim.AdamW(
        [{k: v for k, v in g.items() if k != "names"} for g in groups], lr=peak, betas=tuple(recipe.betas)
    )
    use_cuda = device.type == "cuda"
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(recipe.precision)
    if not use_cuda and not (recipe.cpu_bf16 and recipe.precision == "bf16"):
        amp_dtype = None  # CPU trains in fp32 unless cpu_bf16 is set
    scaler = torch.amp.GradScaler(device.type, enabled=use_cuda and amp_dtype == torch.float16)

    step = 0
    ckpt_path = out / CHECKPOINT_NAME
    if resume:
        state = load_checkpoint(ckpt_path, device)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        step = int(state["step"])
        rank_rng = out / "checkpoints" / f"rng_rank{info.rank}.pt"
        set_rng_state(state["rng"] if info.is_main else torch.load(rank_rng, weights_only=True))
        changed = {
            k: (v, getattr(recipe, k)) for k, v in state["recipe"].items() if getattr(recipe, k, None) != v
        }
        if info.is_main and changed:
            print(f"resume: recipe differs from the checkpoint's: {changed}")

    wrapped: nn.Module = _LossModule(model)
    if info.enabled:
        wrapped = nn.parallel.DistributedDataParallel(
            wrapped,
            device_ids=[device.index] if use_cuda else None,
            find_unused_parameters=recipe.find_unused_parameters,
        )

    val_samples = []
    if recipe.val_data and info.is_main:
        val_samples = sorted(list_samples(Path(recipe.val_data)), key=lambda s: (s.clip, s.agent_speaker))
        clips = sorted({s.clip for s in val_samples})[: recipe.val_clips]
        val_samples = [s for s in val_samples if s.clip in set(clips)]

    logger = MetricLogger(out, info.is_main)
    if info.is_main:
        print(
            f"train: {sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6:.2f} M trainable "
            f"params, {len(dataset)} windows, {steps_per_epoch} steps/epoch, {total} steps, "
            f"warm-up {warmup}, "
            f"peak lr {peak:.3g}, world {info.world_size}, device {device}, "
            f"autocast {amp_dtype or 'off'}, from step {step}"
        )
    bar = None
    if progress and info.is_main:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=step, unit="step", dynamic_ncols=True)

    def save(at: int) -> None:
        if info.enabled:
            if not info.is_main:  # every rank keeps its own RNG stream
                torch.save(rng_state(), out / "checkpoints" / f"rng_rank{info.rank}.pt")
            dist.barrier()
        if info.is_main:
            save_checkpoint(ckpt_path, model, ema, optimizer, scaler, at, recipe)

    def run_validation(at: int) -> None:
        if info.is_main and val_samples:
            row = validate(model, ema, val_samples, recipe, device)
            logger.log("val_log.csv", at, row)
            msg = " ".join(f"{k} {v:.4g}" for k, v in row.items())
            (bar.write if bar else print)(f"val @ {at}: {msg}")
        if info.enabled:
            dist.barrier()

    if info.enabled and info.is_main:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    if info.enabled:
        dist.barrier()

    losses: list[float] = []
    last_loss = float("nan")
    end = total if stop_after is None else min(total, stop_after)
    model.train()
    t_last, n_last, window = time.perf_counter(), 0, []
    while step < end:
        epoch, skip = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=EpochBatchSampler(sampler, recipe.batch_size, skip),
            num_workers=recipe.num_workers,
            pin_memory=use_cuda,
            generator=torch.Generator().manual_seed(recipe.seed + epoch),
        )  # keeps the global RNG untouched
        for batch in loader:
            lr = lr_at(step, peak, warmup, total, recipe.schedule, recipe.min_lr)
            for g in optimizer.param_groups:
                g["lr"] = lr
            tensors = [
                batch[k].to(device, non_blocking=True)
                for k in ("user_speech", "user_motion", "agent_speech", "agent_motion")
            ]
            autocast = (
                torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
            )
            with autocast:
                loss = wrapped(*tensors)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"step {step}: loss is {loss.item()} (lr {lr:.3g}); lower the lr or use precision=fp32"
                )
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            grad_norm = (
                torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
                if recipe.grad_clip > 0
                else torch.tensor(float("nan"))
            )
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            ema.update(model)
            step += 1

            last_loss = loss.item()
            losses.append(last_loss)
            n_last += tensors[0].shape[0] * info.world_size
            window.append(last_loss)
            if step % recipe.log_every == 0 or step == end:
                now = time.perf_counter()
                rate = n_last / max(now - t_last, 1e-9)
                mean_loss = sum(window) / len(window)
                t_last, n_last, window = now, 0, []
                logger.log(
                    "train_log.csv",
                    step,
                    {
                        "epoch": step / steps_per_epoch,
                        "loss": mean_loss,  # mean since the previous row
                        "lr": lr,
                        "grad_norm": float(grad_norm),
                        "samples_per_s": rate,
                    },
                )
                if bar is not None:
                    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", sps=f"{rate:.1f}")
            if bar is not None:
                bar.update(1)
            if recipe.val_every and step % recipe.val_every == 0 and step < total:
                run_validation(step)
                t_last = time.perf_counter()  # throughput excludes validation
            if step % recipe.ckpt_every == 0 or step == end:
                save(step)
            if step >= end:
                break

    if bar is not None:
        bar.close()
    final_dir = None
    if step >= total:
        run_validation(step)
        final_dir = out / "final"
        if info.is_main:
            export_model(model, ema, final_dir, recipe)
            print(f"exported EMA weights to {final_dir}")
    logger.close()
    if info.enabled:
        dist.barrier()
        dist.destroy_process_group()
    return TrainResult(step, final_dir, last_loss, losses)


# ----------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, required=True, help="recipe YAML, e.g. config/train/small-synthetic.yaml"
    )
    parser.add_argument("--out", type=Path, help="run folder (default runs/<recipe name>)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt")
    parser.add_argument(
        "--stop-after", type=int, help="save a checkpoint at this step and exit (resume later)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    parser.add_argument("overrides", nargs="*", help="recipe overrides key=value (model.<field>=value)")


def run(args: argparse.Namespace) -> int:
    for o in args.overrides:
        if not re.match(r"^[A-Za-z_][\w.]*=", o):
            raise SystemExit(f"timar train: override {o!r} must look like key=value")
    recipe = load_recipe(args.config, args.overrides)
    out = args.out or Path("runs") / recipe.name
    result = train(recipe, out, resume=args.resume, stop_after=args.stop_after, progress=not args.no_progress)
    if result.final_dir is None:
        print(f"stopped at step {result.step}; continue with --resume --out {out}")
    return 0
