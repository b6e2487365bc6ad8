"""``fcnseg predict --ray ADDRESS``: the same prediction on a Ray cluster, through Ray Data.

The driver (this process) makes the plan that a plain run makes (:func:`fcnseg.predict._make_plan`: inputs,
output folder, checkpoint hash, what ``resume`` skips) and merges at the end (:func:`fcnseg.predict._merge`).
In between, a Ray dataset of the inputs to do streams through ``map_batches`` to ``ray_actors`` actors, each
holding the model (:class:`_Actor`): an actor reads an image with :func:`fcnseg.io.read_image` (the one image
reader), predicts it with :class:`fcnseg.predict.Predictor`, writes its outputs atomically and appends its
manifest line to a part of its own (``manifest.ray-<id>.jsonl``; RLE records to ``predictions.ray-<id>.jsonl``),
and returns one row of counts to the driver, which shows progress. Ray Data streams with backpressure, so the
driver holds counts, not images.

A worker that dies is restarted by Ray and its block done again: the outputs are written atomically under the
same names, and a duplicate manifest line or RLE record is resolved when read (one record per input), so the
folder ends with every output once. The output folder must be one every node sees (a shared file system);
inputs are local paths, read by the actors, so they too must be visible to every node.
"""

from __future__ import annotations

import logging
import os
import pickle
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ConfigError, DataError, FcnsegError, MissingDependency
from .progress import Progress

if TYPE_CHECKING:
    from .checkpoint import Checkpoint
    from .config import PredictConfig
    from .predict import _Plan

__all__ = ["check_ray", "predict_on_ray"]

log = logging.getLogger(__name__)


def check_ray(cfg: PredictConfig, world: int) -> None:
    """Refuse, before any work, a missing ``ray`` extra and options that do not fit a Ray run."""
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ModuleNotFoundError as e:
        raise MissingDependency(e.name or "ray", "ray", needed_for="fcnseg predict --ray") from e
    if world > 1:
        raise ConfigError("ray and torchrun both split the inputs: run one of them",
                          fix="leave out {ray} under torchrun, or start one process")
    if cfg.ray_actors < 1:
        raise ConfigError(f"ray_actors is {cfg.ray_actors}", fix="set {ray_actors} to 1 or more")


def _init_ray(address: str, actors: int) -> bool:
    """Connect to (``auto``, an address) or start (``local``) a cluster; True when this call started Ray."""
    import ray
    import ray.data

    ctx = ray.data.DataContext.get_current()  # fcnseg's own progress line instead of Ray Data's
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    for name in ("ray", "ray.data"):
        if not log.isEnabledFor(logging.DEBUG):
            logging.getLogger(name).setLevel(logging.WARNING)
    if ray.is_initialized():
        return False
    quiet = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    if address == "local":  # a cluster of this machine alone, bound to the loopback interface
        ray.init(address="local", num_cpus=max(actors, os.cpu_count() or 1), _node_ip_address="127.0.0.1", **quiet)
    else:
        ray.init(address=address, **quiet)
    return True


class _Actor:
    """One model on a Ray worker: ``batch`` of ``{"i": index in the plan}`` -> counts rows."""

    def __init__(self, ck: Checkpoint, cfg: PredictConfig, plan: _Plan, formats: tuple[str, ...]):
        from .manifest import AppendLog
        from .predict import Predictor
        from .scorer import ScorerSpec

        spec = ScorerSpec(ck, engine=cfg.engine, onnx_file=cfg.onnx_file, precision=cfg.precision,
                          device=cfg.device, flip=cfg.flip, window=cfg.window, shift_and_stitch=cfg.shift_and_stitch)
        self.predictor = Predictor(spec.build(), tile_pixels=cfg.tile_pixels)
        self.ck, self.cfg, self.plan, self.formats = ck, cfg, plan, formats
        self.out = Path(cfg.out_dir)
        tag = f"ray-{uuid.uuid4().hex[:12]}"  # one part per actor (a restarted one gets a new part)
        self.manifest = AppendLog(self.out / f"manifest.{tag}.jsonl", sync_every=20, sync_s=2.0)
        self.parts = AppendLog(self.out / f"predictions.{tag}.jsonl", sync_every=20, sync_s=2.0) \
            if "rle" in formats else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Counts of the batch's images (``images``, ``skipped``, ``seconds``), and ``error``: "" or a refusal
        (an :class:`~fcnseg.errors.FcnsegError`, pickled, as hex), which the driver raises: Ray's own wrapping
        of an exception loses it."""
        try:
            out = self._predict(batch["i"].tolist())
        except FcnsegError as e:
            return {"images": np.zeros(1, np.int64), "skipped": np.zeros(1, np.int64), "seconds": np.zeros(1),
                    "error": np.asarray([pickle.dumps(e).hex()])}
        return {**out, "error": np.asarray([""] * len(out["images"]))}

    def _predict(self, indices: list[int]) -> dict[str, np.ndarray]:
        from .io import read_image
        from .predict import _finish_one

        plan, cfg = self.plan, self.cfg
        rows: list[tuple[int, int, float]] = []  # (written, bad, seconds) of each image
        for i in indices:
            t0 = time.perf_counter()
            try:
                image = read_image(plan.files[i], max_pixels=cfg.max_pixels)  # uint8 (3, H, W)
            except DataError as e:
                if not cfg.skip_bad:
                    raise e.with_fix("turn on {skip_bad} to skip such images") from None
                self.manifest.append({"file": plan.files[i], "status": "bad", "model": plan.model,
                                      "settings": plan.settings, "run": plan.run, "error": str(e)[:1000]})
                rows.append((0, 1, time.perf_counter() - t0))
                continue
            labels = self.predictor(image, plan.files[i])
            _finish_one(self.out, i, plan, image.permute(1, 2, 0).numpy(), labels, self.ck, cfg.overlay,
                        self.formats, self.manifest, self.parts)
            _test_exit_once()
            rows.append((1, 0, time.perf_counter() - t0))
        done, bad, seconds = zip(*rows, strict=True) if rows else ((), (), ())
        return {"images": np.asarray(done, dtype=np.int64), "skipped": np.asarray(bad, dtype=np.int64),
                "seconds": np.asarray(seconds, dtype=np.float64)}

    def __del__(self) -> None:  # Ray ends actors without a call: fsync what was appended
        for log_ in (getattr(self, "manifest", None), getattr(self, "parts", None)):
            if log_ is not None:
                try:
                    log_.close()
                except Exception:  # noqa: BLE001 - a closing process cannot report; every line was written already
                    pass


EXIT_ONCE_ENV = "FCNSEG_TEST_RAY_EXIT_ONCE"
"""Tests only: a path; the first actor to finish an image while it does not exist creates it and exits at once
(``os._exit``), a worker dying as a preempted node's would."""


def _test_exit_once() -> None:
    marker = os.environ.get(EXIT_ONCE_ENV)
    if marker:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        os._exit(1)


def predict_on_ray(ck: Checkpoint, cfg: PredictConfig, plan: _Plan, formats: tuple[str, ...], *,
                   progress: bool = True) -> list[dict[str, Any]]:
    """Predict ``plan.todo`` on Ray actors; returns one counts entry (``images``, ``skipped``, ``seconds``:
    wall time on the driver) for :func:`fcnseg.predict._summary`. Stops Ray afterwards if it started it."""
    import ray
    import ray.data

    started = _init_ray(cfg.ray, cfg.ray_actors)
    t0 = time.perf_counter()
    images = skipped = 0
    try:
        if plan.todo:
            gpu = cfg.device.startswith("cuda")
            ds = ray.data.from_items([{"i": i} for i in plan.todo], override_num_blocks=min(len(plan.todo), 200))
            rows = ds.map_batches(_Actor, fn_constructor_args=(ck, cfg, plan, formats), batch_size=1,
                                  compute=ray.data.ActorPoolStrategy(size=cfg.ray_actors),
                                  num_cpus=0 if gpu else 1, num_gpus=1 if gpu else 0)
            with Progress(len(plan.todo), "predict", "img", enabled=progress) as bar:
                for batch in rows.iter_batches(batch_size=None, prefetch_batches=1):
                    refusals = [x for x in batch["error"].tolist() if x]
                    if refusals:
                        raise pickle.loads(bytes.fromhex(refusals[0]))
                    images += int(np.sum(batch["images"]))
                    skipped += int(np.sum(batch["skipped"]))
                    bar.update(len(batch["images"]))
    finally:
        if started:
            ray.shutdown()
    if skipped:
        log.warning("skipped %d of %d images that could not be read (skip_bad)", skipped, len(plan.todo))
    return [{"images": images, "skipped": skipped, "seconds": time.perf_counter() - t0}]
