"""Processes and randomness of a training run: torchrun detection (LOCAL_RANK / RANK / WORLD_SIZE), the
device, the per-epoch data order and the RNG states a checkpoint saves, so that a resumed run continues
exactly like an uninterrupted one.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


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
