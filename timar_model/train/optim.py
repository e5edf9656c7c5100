"""The optimiser's parameter groups and the learning-rate schedule.

- AdamW weight decay on weight matrices only: no decay on 1-d tensors (norms and biases), position
  embeddings, special-token / mask / fake-latent tokens and embedding tables (`param_groups`);
- peak learning rate `lr` if given, else `blr * global_batch / 256` (MAR's rule; global batch = batch_size
  x world size); linear warm-up from 0, then constant or cosine down to `min_lr` (`lr_at`, set every step).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from timar_model.train.recipe import SCHEDULES, TrainRecipe

# Parameter-name fragments that never get weight decay (besides every 1-d tensor).
NO_DECAY_NAME_PARTS = ("pos_embed", "token", "latent")


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
