"""DDP plumbing for ``torchrun``: process group, ranks, and a resumable sharded sampler."""

from __future__ import annotations

import datetime
import logging
import os
import pickle
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
from torch import distributed as dist
from torch.utils.data import Sampler

from .errors import DistributedError

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 600
"""Seconds a collective waits for every process before failing: long enough for a first validation pass or a
checkpoint save on rank 0, short enough that a stalled process is named within minutes, not hours."""


CHECKS_TIMEOUT_S = 4 * 3600
"""Seconds the other processes wait for rank 0's checks before work (a first validation pass over a large
dataset with a cold cache takes long, and is not a stall)."""

_GROUPS: dict[str, Any] = {}  # gloo side groups: "checks" (long timeout), "flags" (CPU flags under NCCL too)



def init_distributed(device: str = "", timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[int, int, torch.device]:
    """Initialise from torchrun's environment when WORLD_SIZE > 1; returns (rank, world size, device).

    ``timeout_s`` bounds every collective: a process that stalls (stopped, hung, killed) makes the others fail
    after that long, instead of waiting forever. On gloo (CPU) they raise a :class:`DistributedError` naming
    it (see :func:`collective`); on NCCL, PyTorch's watchdog ends the processes after the timeout.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
    if world > 1 and dist.is_initialized() and not _GROUPS:  # every rank creates them, in the same order
        _GROUPS["checks"] = dist.new_group(backend="gloo",
                                           timeout=datetime.timedelta(seconds=max(timeout_s, CHECKS_TIMEOUT_S)))
        _GROUPS["flags"] = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device(device or "cpu")


def is_main() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only; every rank returns its result or raises its error (same type and message).

    For the checks before work (output folder, data validation): a failure on rank 0 ends every process at
    once, with the same one-line message, instead of leaving the others waiting at their first collective.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return fn()
    payload: list[Any] = [None]
    error: Exception | None = None
    if is_main():
        try:
            payload = [("ok", fn())]
        except Exception as e:  # noqa: BLE001 - re-raised on every rank below
            error = e
            payload = [("error", _portable(e))]
    with collective("sharing rank 0's checks"):
        dist.broadcast_object_list(payload, src=0, group=_GROUPS.get("checks"))
    status = payload[0]
    if status[0] == "error":
        raise error if error is not None else status[1]
    return status[1]


def _portable(e: Exception) -> Exception:
    """``e`` itself when it pickles (an :class:`~fcnseg.errors.FcnsegError` keeps its fix and options), else an
    exception of its type (or a RuntimeError) with its message."""
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:  # noqa: BLE001 - any exception may fail to pickle or to rebuild
        pass
    try:
        return type(e)(str(e))
    except Exception:  # noqa: BLE001 - an exception type that does not take one message
        return RuntimeError(str(e))


def close_distributed() -> None:
    """Destroy this process's process groups after a finished run, so that torchrun's processes exit in order
    (left to the interpreter's exit, gloo's threads could abort a process that had finished its work)."""
    if dist.is_available() and dist.is_initialized():
        _GROUPS.clear()
        dist.destroy_process_group()


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is True on any (e.g. a stop request that reached one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([int(flag)])  # on the gloo side group: a CPU tensor works under NCCL too
    with collective("agreeing to stop"):
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_GROUPS.get("flags"))
    return bool(t.item())


class collective:  # noqa: N801 - used as a context manager, like torch.no_grad
    """Turn a failed or timed-out collective into a :class:`DistributedError` naming the ranks that stopped.

    When a collective fails, each surviving process writes an "alive" key to the process group's store and
    waits briefly for the others'; the ranks without a key are the ones that stopped answering.
    """

    def __init__(self, what: str):
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or isinstance(exc, DistributedError) or not _is_collective_failure(exc):
            return False
        if not (dist.is_available() and dist.is_initialized()):
            return False
        raise DistributedError(_describe_failure(self.what, exc),
                               fix="restart the run with {resume} from the last checkpoint; raise {dist_timeout} "
                                   "if a rank is slow") from exc


_COLLECTIVE_SIGNS = ("gloo", "Gloo", "NCCL", "nccl", "timed out", "Timed out", "Connection reset",
                     "Connection closed", "Broken pipe", "DistBackendError")


def _is_collective_failure(exc: BaseException) -> bool:
    backend_error = getattr(dist, "DistBackendError", None)
    if backend_error is not None and isinstance(exc, backend_error):
        return True
    return isinstance(exc, RuntimeError) and any(s in str(exc) for s in _COLLECTIVE_SIGNS)


def _describe_failure(what: str, exc: BaseException) -> str:
    rank, world = world_info()
    silent = unresponsive_ranks()
    if silent:
        names = ", ".join(str(r) for r in silent)
        return (f"rank {rank}: rank{'s' if len(silent) > 1 else ''} {names} of {world} stopped answering while "
                f"{what} (stalled, stopped or killed)")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"rank {rank}: a collective failed while {what} ({first})"


def unresponsive_ranks(wait_s: float = 5.0) -> list[int]:
    """Ranks that do not check in through the store within ``wait_s`` seconds (best effort: [] if unknown)."""
    try:
        store = dist.distributed_c10d._get_default_store()
        rank, world = world_info()
        store.set(f"fcnseg/alive/{rank}", "1")
        deadline = time.monotonic() + wait_s
        missing = list(range(world))
        while missing and time.monotonic() < deadline:
            missing = [r for r in missing if not store.check([f"fcnseg/alive/{r}"])]
            time.sleep(0.2)
        return missing
    except Exception as e:  # noqa: BLE001 - the store itself may be gone with the failed rank
        log.debug("could not ask the store which ranks are alive: %s", e)
        return []


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
