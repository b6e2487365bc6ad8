"""``fcnseg predict --ray ADDRESS``: the same prediction on a Ray cluster, through Ray Data.

The driver (this process) makes the plan that a plain run makes (:func:`fcnseg.predict._make_plan`: inputs,
output folder, checkpoint hash, what ``resume`` skips) and merges at the end (:func:`fcnseg.predict._merge`).
In between, Ray Data reads the inputs to do (``ray.data.read_binary_files``: local paths, and URLs through
pyarrow's file systems or fsspec's, :func:`_read_groups`) and streams their bytes through ``map_batches`` to
``ray_actors`` actors, each holding the model (:class:`_Actor`): an actor decodes an image with
:func:`fcnseg.io.read_image` (the one image reader), predicts it with :class:`fcnseg.predict.Predictor`, writes
its outputs atomically and appends its manifest line to a part of its own (``manifest.ray-<id>.jsonl``; RLE
records to ``predictions.ray-<id>.jsonl``), and returns one row of counts to the driver, which shows progress.
Ray Data streams with backpressure, so neither the driver nor the object store holds the whole job's images.

A worker that dies is restarted by Ray and its block done again: the outputs are written atomically under the
same names, and a duplicate manifest line or RLE record is resolved when read (one record per input), so the
folder ends with every output once. The output folder must be one every node sees (a shared file system);
local inputs are read by Ray's read tasks on any node, so they too must be visible to every node (URLs are
read from wherever a task runs). With ``skip_bad`` an input gone before Ray reads it is listed as bad.
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

from .errors import ConfigError, DataError, FcnsegError, MissingDependency, PredictionError, StateError
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
    if cfg.ray_object_store_mb < MIN_OBJECT_STORE_MB:
        raise ConfigError(f"ray_object_store_mb is {cfg.ray_object_store_mb}",
                          fix=f"set {{ray_object_store_mb}} to {MIN_OBJECT_STORE_MB} or more (Ray's least)")


MIN_OBJECT_STORE_MB = 80
"""The least object store (MiB) that ``--ray local`` accepts: Ray refuses less than 75 MiB."""


def _init_ray(address: str, actors: int, store_mb: int) -> bool:
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
        # A bounded object store: each actor maps the pages of the store that it has read blocks from, so with
        # Ray's default (30% of memory) its resident memory grows over a long job towards that size (measured
        # over 10,000 images: +1,028 MiB RSS); with 512 MiB the tree stayed within 4.0-5.0 GiB, no growth after
        # the first thousand (benchmarks/RESULTS.md, issue 21).
        ray.init(address="local", num_cpus=max(actors, os.cpu_count() or 1), _node_ip_address="127.0.0.1",
                 object_store_memory=store_mb * 2**20, **quiet)
    else:
        ray.init(address=address, **quiet)
    return True


class _Actor:
    """One model on a Ray worker: a batch of rows as Ray Data read them (``path``, ``bytes``) -> counts rows."""

    def __init__(self, ck: Checkpoint, cfg: PredictConfig, plan: _Plan, formats: tuple[str, ...],
                 where: dict[str, list[int]]):
        from .manifest import AppendLog
        from .predict import Predictor
        from .scorer import ScorerSpec

        spec = ScorerSpec(ck, engine=cfg.engine, onnx_file=cfg.onnx_file, precision=cfg.precision,
                          device=cfg.device, flip=cfg.flip, window=cfg.window, shift_and_stitch=cfg.shift_and_stitch)
        self.predictor = Predictor(spec.build(), tile_pixels=cfg.tile_pixels)
        self.ck, self.cfg, self.plan, self.formats = ck, cfg, plan, formats
        self.where = where  # {name as Ray Data gives it back: indices in the plan}
        self.out = Path(cfg.out_dir)
        tag = f"ray-{uuid.uuid4().hex[:12]}"  # one part per actor (a restarted one gets a new part)
        self.manifest = AppendLog(self.out / f"manifest.{tag}.jsonl", sync_every=20, sync_s=2.0)
        self.parts = AppendLog(self.out / f"predictions.{tag}.jsonl", sync_every=20, sync_s=2.0) \
            if "rle" in formats else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Counts of the batch's images (``i``: index in the plan, ``images``, ``skipped``, ``seconds``) from its
        rows (``path`` and ``bytes``, as Ray Data read them), and ``error``: "" or a refusal (an
        :class:`~fcnseg.errors.FcnsegError`, pickled, as hex), which the driver raises: Ray's own wrapping of an
        exception loses it."""
        try:
            out = self._predict(list(batch["path"]), list(batch["bytes"]))
        except FcnsegError as e:
            return {"i": np.full(1, -1, np.int64), "images": np.zeros(1, np.int64),
                    "skipped": np.zeros(1, np.int64), "seconds": np.zeros(1),
                    "error": np.asarray([pickle.dumps(e).hex()])}
        return {**out, "error": np.asarray([""] * len(out["images"]))}

    def _indices(self, path: str) -> list[int]:
        try:
            return self.where[_ray_key(path)]
        except KeyError:
            raise StateError(f"Ray read {path}, which is not among the inputs",
                             fix="report this with --debug: the path was changed on its way through Ray") from None

    def _predict(self, paths: list[str], data: list[bytes]) -> dict[str, np.ndarray]:
        from .io import read_image
        from .predict import _finish_one
        from .remote import named_stream

        plan, cfg = self.plan, self.cfg
        rows: list[tuple[int, int, int, float]] = []  # (index, written, bad, seconds) of each image
        for path, raw in zip(paths, data, strict=True):
            first, *again = self._indices(str(path))
            t0 = time.perf_counter()
            try:
                image = read_image(named_stream(bytes(raw), plan.files[first]), max_pixels=cfg.max_pixels)
            except DataError as e:
                if not cfg.skip_bad:
                    raise e.with_fix("turn on {skip_bad} to skip such images") from None
                for i in (first, *again):
                    self.manifest.append({"file": plan.files[i], "status": "bad", "model": plan.model,
                                          "settings": plan.settings, "run": plan.run, "error": str(e)[:1000]})
                    rows.append((i, 0, 1, time.perf_counter() - t0))
                continue
            labels = self.predictor(image, plan.files[first])
            for i in (first, *again):  # the same file under each name it was given
                _finish_one(self.out, i, plan, image.permute(1, 2, 0).numpy(), labels, self.ck, cfg.overlay,
                            self.formats, self.manifest, self.parts)
                rows.append((i, 1, 0, time.perf_counter() - t0))
            _test_exit_once()
        index, done, bad, seconds = zip(*rows, strict=True) if rows else ((), (), (), ())
        return {"i": np.asarray(index, dtype=np.int64), "images": np.asarray(done, dtype=np.int64),
                "skipped": np.asarray(bad, dtype=np.int64), "seconds": np.asarray(seconds, dtype=np.float64)}

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


_PYARROW_SCHEMES = frozenset({"file", "s3", "s3a", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "http", "https"})
"""URL schemes that Ray Data resolves itself (pyarrow's file systems; http(s) through fsspec); the others are
read through fsspec's file system for the scheme, wrapped for pyarrow."""


def _ray_path(name: str) -> str:
    """How an input is named to Ray Data: an absolute path for a local file (a read task may run elsewhere)."""
    from .remote import is_url

    return name if is_url(name) else os.path.abspath(name)


def _ray_key(path: str) -> str:
    """A name as Ray Data gives it back in ``path``: without its scheme (``file:///a`` -> ``/a``, ``s3://b/k``
    -> ``b/k``), except http(s) URLs, which it keeps whole."""
    from .remote import is_url, scheme

    if is_url(path) and scheme(path) not in ("http", "https"):
        return path.split("://", 1)[1]
    return path


def _read_groups(plan: _Plan) -> tuple[list[tuple[list[str], Any]], dict[str, list[int]]]:
    """``[(paths, filesystem)]`` of ``plan.todo``, one ``read_binary_files`` call each, since Ray Data reads one
    file system a call: local paths, and each URL scheme (``filesystem`` None where Ray resolves the paths itself:
    local, pyarrow's schemes, http; else fsspec's for the scheme, in a pyarrow ``PyFileSystem``); and
    ``{name as Ray gives it back: indices in the plan}``: a file named twice (a path and its ``file://`` URL) is
    read once and written under each of its output names, as a plain run does."""
    from .remote import filesystem, is_url, scheme

    groups: dict[str, tuple[list[str], Any]] = {}
    where: dict[str, list[int]] = {}
    for i in plan.todo:
        name = plan.files[i]
        kind = scheme(name) if is_url(name) else ""
        fsspec_only = kind and kind not in _PYARROW_SCHEMES
        path = filesystem(name)[1] if fsspec_only else _ray_path(name)
        if _ray_key(path) in where:
            where[_ray_key(path)].append(i)
            continue
        if kind not in groups:
            fs = None
            if fsspec_only:
                from pyarrow.fs import FSSpecHandler, PyFileSystem

                fs = PyFileSystem(FSSpecHandler(filesystem(name)[0]))
            groups[kind] = ([], fs)
        groups[kind][0].append(path)
        where[_ray_key(path)] = [i]
    return list(groups.values()), where


def predict_on_ray(ck: Checkpoint, cfg: PredictConfig, plan: _Plan, formats: tuple[str, ...], *,
                   progress: bool = True) -> list[dict[str, Any]]:
    """Predict ``plan.todo`` on Ray actors; returns one counts entry (``images``, ``skipped``, ``seconds``:
    wall time on the driver) for :func:`fcnseg.predict._summary`. Stops Ray afterwards if it started it.

    With ``skip_bad``, an input that Ray Data did not find when it read (gone since it was listed) is listed as
    bad by the driver at the end."""
    import ray
    import ray.data

    started = _init_ray(cfg.ray, cfg.ray_actors, cfg.ray_object_store_mb)
    t0 = time.perf_counter()
    images = skipped = 0
    seen = np.zeros(len(plan.files), dtype=bool)
    try:
        if plan.todo:
            gpu = cfg.device.startswith("cuda")
            with Progress(len(plan.todo), "predict", "img", enabled=progress) as bar:
                try:
                    ds, (groups, where) = None, _read_groups(plan)
                    for paths, fs in groups:  # reading is I/O: the read tasks reserve no CPU (the actors may
                        # hold every one), and at most one runs per actor (else Ray starts a process per block)
                        part = ray.data.read_binary_files(
                            paths, include_paths=True, filesystem=fs, ignore_missing_paths=cfg.skip_bad, num_cpus=0,
                            concurrency=cfg.ray_actors, override_num_blocks=min(len(paths), max(200, len(paths) // 20)))
                        ds = part if ds is None else ds.union(part)
                    rows = ds.map_batches(_Actor, fn_constructor_args=(ck, cfg, plan, formats, where), batch_size=1,
                                          compute=ray.data.ActorPoolStrategy(size=cfg.ray_actors),
                                          num_cpus=0 if gpu else 1, num_gpus=1 if gpu else 0)
                    for batch in rows.iter_batches(batch_size=None, prefetch_batches=1):
                        refusals = [x for x in batch["error"].tolist() if x]
                        if refusals:
                            raise pickle.loads(bytes.fromhex(refusals[0]))
                        seen[batch["i"]] = True
                        images += int(np.sum(batch["images"]))
                        skipped += int(np.sum(batch["skipped"]))
                        bar.update(len(batch["images"]))
                except FcnsegError:
                    raise
                except Exception as e:  # noqa: BLE001 - Ray's errors (a read that failed, a cluster lost)
                    raise PredictionError(f"the Ray job failed: {_last_line(e)}",
                                          fix="run again with --debug for Ray's report; --resume does only the "
                                              "rest") from e
            missing = [i for i in plan.todo if not seen[i]]
            if missing:
                _list_missing(Path(cfg.out_dir), plan, missing)
                skipped += len(missing)
    finally:
        if started:
            ray.shutdown()
    if skipped:
        log.warning("skipped %d of %d images that could not be read (skip_bad)", skipped, len(plan.todo))
    return [{"images": images, "skipped": skipped, "seconds": time.perf_counter() - t0}]


def _list_missing(out: Path, plan: _Plan, missing: list[int]) -> None:
    """The inputs Ray Data skipped as missing (``skip_bad``): one bad line each in the driver's manifest part."""
    from .manifest import AppendLog

    with AppendLog(out / f"manifest.ray-driver-{uuid.uuid4().hex[:8]}.jsonl") as manifest:
        for i in missing:
            log.warning("skipping %s: not found when Ray read it", plan.files[i])
            manifest.append({"file": plan.files[i], "status": "bad", "model": plan.model,
                             "settings": plan.settings, "run": plan.run, "error": "not found when Ray read it"})


def _last_line(e: BaseException) -> str:
    """The last non-empty line of an error's text (Ray's errors carry the worker's whole traceback)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = lines[-1] if lines else type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."
