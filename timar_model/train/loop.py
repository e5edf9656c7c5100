"""`timar train`: train TIMAR (or the DualTalk baseline, `model_type: dualtalk`) from a YAML recipe (single
process, or many through torchrun + DDP).

    timar train --config config/train/small-synthetic.yaml [--out DIR] [--resume] [key=value ...]
    torchrun --nproc_per_node 8 -m timar_model.cli train --config config/train/large-dualtalk.yaml

The recipe (`timar_model.train.recipe`) is a flat YAML mapping of `TrainRecipe` keys; `key=value` overrides
on the command line, `model.<field>=value` for TimarConfig fields. The loop:
- optimiser: AdamW with the recipe's betas and weight decay on weight matrices only, learning rate with
  warm-up then constant or cosine (`timar_model.train.optim`);
- global grad-norm clip, EMA of the weights (saved, used for validation and exported);
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
Multi-GPU / multi-node: the same command under torchrun (`timar_model.train.distributed`),
DistributedDataParallel, a DistributedSampler, logging/validation/saving on rank 0 only.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import os
import re
import time
import types
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from timar_model.data.partner_motion import absent_fill, apply_dropout
from timar_model.train.distributed import (
    EpochBatchSampler,
    init_distributed,
    rng_state,
    seed_everything,
    set_rng_state,
)
from timar_model.train.optim import base_lr, lr_at, param_groups
from timar_model.train.recipe import TrainRecipe, build_model, load_recipe

CHECKPOINT_NAME = "checkpoints/last.pt"


# ----------------------------------------------------------------------------- gradient checkpointing


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


# ----------------------------------------------------------------------------- training module


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
    """Stream `samples` with the EMA weights; FD-exp, MSE-jaw, P-FD-pose and the jaw~speech correlation.
    (The DualTalk baseline: offline, whole-clip inference, as published.)"""
    from timar_model.eval.evaluate import evaluate_predictor, generator_predictor
    from timar_model.runtime.streaming import StreamingGenerator

    m = copy.deepcopy(model)
    ema.copy_to(m)
    m.eval()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # validation never perturbs the training RNG
        if recipe.model_type == "dualtalk":
            from timar_model.model.dualtalk_baseline import dualtalk_predictor

            predict = dualtalk_predictor(m, "offline")
        else:
            gen = StreamingGenerator(
                m, device=str(device), dtype="float32", context_turns=recipe.val_context + 1, seed=0
            )
            predict = generator_predictor(gen)
        res = evaluate_predictor(predict, samples, None, recipe.val_context, max_turns=recipe.val_max_seconds)
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
    partner_fill = absent_fill(config)  # what partner-motion dropout writes into unobserved parts
    if recipe.grad_checkpointing:
        enable_gradient_checkpointing(model)
    ema = EMA(model, recipe.ema_decay)
    seed_everything(recipe.seed + 1000 * info.rank)

    # data
    train_dir = Path(recipe.train_data)
    if not train_dir.is_dir():
        raise FileNotFoundError(f"train_data {train_dir}: not a directory (make one with `timar synth`)")
    window = recipe.window_turns or config.context_turns
    if window > config.context_turns:
        raise ValueError(f"window_turns {window} is longer than the model's context_turns {config.context_turns}")
    dataset = DualTalkWindows(
        train_dir,
        window_turns=window,
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
            if recipe.partner_motion_dropout:  # head-pose-only / no partner motion for some windows
                tensors[1] = apply_dropout(tensors[1], recipe.partner_motion_dropout, fill=partner_fill)
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
