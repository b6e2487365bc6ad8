"""Dynamic batching: concurrent requests run through the model together, grouped by image size.

The policy of TorchServe's and Triton's dynamic batchers: a batch closes when it holds ``max_batch`` images or
when its oldest image has waited ``max_wait_s``, whichever comes first. An FCN's output near the border depends
on the padding, so images are never padded to a common size: a batch holds images of one size only, and
images of other sizes wait for their own batch (each size keeps its own deadline, so none starves).

Inference runs on one worker thread, off the caller's thread (and off the server's event loop): the caller
gets a :class:`concurrent.futures.Future` (``asyncio.wrap_future`` awaits it). The queue is bounded:
:meth:`Batcher.submit` raises :class:`QueueFull` when it holds ``queue_size`` images, so a server under
overload refuses at once instead of answering late.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import ConfigError, DataError, FcnsegError
from .model import Labeler

__all__ = ["Batcher", "BatchResult", "QueueFull"]

log = logging.getLogger(__name__)


class QueueFull(FcnsegError, RuntimeError):
    """The batcher's queue holds ``queue_size`` images: try again later (HTTP 503 with ``Retry-After``)."""

    exit_code = 1


class BatcherClosed(FcnsegError, RuntimeError):
    """The batcher is shutting down and takes no new images."""

    exit_code = 1


@dataclass(frozen=True)
class BatchResult:
    """One image's labels, uint8 (H, W), with how it was run: batch size and seconds queued / in the model."""

    labels: np.ndarray
    batch_size: int
    queued_s: float
    inference_s: float


@dataclass
class _Item:
    image: torch.Tensor  # uint8 (3, H, W)
    future: Future[BatchResult]
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def size(self) -> tuple[int, int]:
        return int(self.image.shape[-2]), int(self.image.shape[-1])


class Batcher:
    """A bounded queue of images and a worker thread that runs them through ``labeler`` in same-size batches.

    Args:
        labeler: uint8 (N, 3, H, W) -> uint8 (N, H, W); called on the worker thread only.
        max_batch: most images in one call of ``labeler``.
        max_wait_s: longest a batch waits for more images after its first arrived.
        queue_size: most images waiting (not counting the batch in the model); beyond it ``submit`` refuses.
        on_batch: called on the worker thread after every batch with (batch size, seconds in ``labeler``).

    ``close()`` stops taking images, runs every image already queued, then joins the worker.
    """

    def __init__(self, labeler: Labeler, *, max_batch: int = 4, max_wait_s: float = 0.005, queue_size: int = 64,
                 on_batch: Callable[[int, float], None] | None = None):
        if max_batch < 1 or queue_size < 1 or max_wait_s < 0:
            raise ConfigError(f"batcher limits out of range: max_batch {max_batch}, queue_size {queue_size}, "
                              f"max_wait_s {max_wait_s:g}",
                              fix="set {max_batch} and {queue_size} to 1 or more, {max_wait_ms} to 0 or more")
        self.labeler = labeler
        self.max_batch, self.max_wait_s, self.queue_size = max_batch, max_wait_s, queue_size
        self.on_batch = on_batch
        self._queue: deque[_Item] = deque()  # arrival order, all sizes
        self._cond = threading.Condition()
        self._closing = False
        self._worker = threading.Thread(target=self._run, name="fcnseg-batcher", daemon=True)
        self._worker.start()

    @property
    def depth(self) -> int:
        """Images waiting for a batch (not counting those in the model now)."""
        return len(self._queue)

    def submit(self, image: torch.Tensor) -> Future[BatchResult]:
        """Queue one uint8 (3, H, W) image; the future gets its :class:`BatchResult` or the labeler's error.

        Raises :class:`QueueFull` when ``queue_size`` images wait, :class:`BatcherClosed` after ``close()``.
        Cancelling the future before its batch starts takes the image out of the batch.
        """
        if image.dtype != torch.uint8 or image.ndim != 3:
            raise DataError(f"expected a uint8 (3, H, W) image, got {image.dtype} {tuple(image.shape)}",
                            fix="decode it with fcnseg.io.read_image")
        item = _Item(image, Future())
        with self._cond:
            if self._closing:
                raise BatcherClosed("the server is shutting down")
            if len(self._queue) >= self.queue_size:
                raise QueueFull(f"queue full ({self.queue_size} images waiting)")
            self._queue.append(item)
            self._cond.notify()
        return item.future

    def close(self, timeout: float | None = None) -> None:
        """Refuse new images, finish every queued one, and stop the worker (waits up to ``timeout`` s)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._worker.join(timeout)

    def _next_batch(self) -> list[_Item] | None:
        """Block until a batch is due and take it out of the queue; None when closed and empty.

        A size's batch is due when it is full, when its oldest image has waited ``max_wait_s``, or at
        shutdown; of the due sizes, the one whose oldest image came first goes first.
        """
        with self._cond:
            while True:
                if not self._queue:
                    if self._closing:
                        return None
                    self._cond.wait()
                    continue
                groups: dict[tuple[int, int], list[_Item]] = {}
                for it in self._queue:  # dicts keep insertion order: sizes by their oldest image
                    groups.setdefault(it.size, []).append(it)
                now = time.monotonic()
                for items in groups.values():
                    if len(items) >= self.max_batch or items[0].enqueued + self.max_wait_s <= now or self._closing:
                        batch = items[: self.max_batch]
                        taken = {id(it) for it in batch}
                        self._queue = deque(it for it in self._queue if id(it) not in taken)
                        return batch
                self._cond.wait(self._queue[0].enqueued + self.max_wait_s - now)  # the earliest deadline

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            # A request that timed out cancelled its future: drop it rather than compute for nobody.
            batch = [it for it in batch if it.future.set_running_or_notify_cancel()]
            if not batch:
                continue
            start = time.monotonic()
            try:
                labels = self.labeler(torch.stack([it.image for it in batch]))  # (N, H, W)
            except Exception as e:  # noqa: BLE001 - the error belongs to the requests, the worker goes on
                log.exception("inference failed for a batch of %d", len(batch))
                for it in batch:
                    it.future.set_exception(e)
                continue
            seconds = time.monotonic() - start
            if self.on_batch is not None:
                self.on_batch(len(batch), seconds)
            for i, it in enumerate(batch):
                it.future.set_result(BatchResult(labels[i], len(batch), start - it.enqueued, seconds))
