"""Exponential moving average of a model's parameters (and a copy of its buffers)."""

from __future__ import annotations

import torch
import torch.nn as nn


class EMA:
    def __init__(self, model: nn.Module, decay: float = 0.9999):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA: decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._trainable = {k for k, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """shadow = decay * shadow + (1 - decay) * param for trainable parameters; other entries copied."""
        for k, v in model.state_dict().items():
            if k in self._trainable and v.is_floating_point():
                self.shadow[k].lerp_(v.detach().to(self.shadow[k].dtype), 1.0 - self.decay)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.shadow.items()}

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        missing, unexpected = set(self.shadow) - set(sd), set(sd) - set(self.shadow)
        if missing or unexpected:
            raise KeyError(f"EMA.load_state_dict: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
        for k, v in sd.items():
            self.shadow[k].copy_(v)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        model.load_state_dict(self.shadow, strict=True)

    @torch.no_grad()
    def swap(self, model: nn.Module) -> None:
        """Exchange the model's weights and the EMA weights (call twice to restore)."""
        current = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow, strict=True)
        self.shadow = current
