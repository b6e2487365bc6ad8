"""DDP plumbing for ``torchrun``: process group, ranks, and a resumable sharded sampler."""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
from torch import distributed as dist
from torch.utils.data import Sampler


def init_distributed(device: str = "") -> tuple[int, int, torch.device]:
    """Initialise from torchrun's environment when WORLD_SIZE > 1; returns (rank, world size, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device(device or "cpu")


def is_main() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def world_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ShardedSampler(Sampler[int]):
    """Shuffled (or ordered) indices for one process, resumable mid-epoch.

    The permutation of epoch ``e`` is drawn from a generator seeded with ``seed + e``, so every process and
    every resumed run sees the same order. Training (``pad=True``) pads the permutation to a multiple of the
    world size so that all ranks take the same number of steps; evaluation (``pad=False``) shards without
    duplicates so that summed confusion matrices count each pixel once.
    """

    def __init__(self, size: int, *, shuffle: bool = True, seed: int = 0, pad: bool = True,
                 rank: int | None = None, world: int | None = None):
        r, w = world_info()
        self.size, self.shuffle, self.seed, self.pad = size, shuffle, seed, pad
        self.rank, self.world = (r if rank is None else rank), (w if world is None else world)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's permutation and skip its first ``start`` indices of this rank (resume)."""
        self.epoch, self.start = epoch, start

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            idx = torch.randperm(self.size, generator=g).tolist()
        else:
            idx = list(range(self.size))
        if self.pad and self.world > 1 and len(idx) % self.world:
            idx += idx[: self.world - len(idx) % self.world]
        return idx[self.rank :: self.world]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.start :])

    def __len__(self) -> int:
        return len(self._indices()) - self.start
