"""Faults caused for real: SIGKILL and SIGINT/SIGTERM of training processes, bad data under --overwrite,
outputs that cannot be written (a file in the way, a read-only or full file system), lossy masks of another
size, a malicious pickle. Nothing finished may be lost, and every refusal is one line naming the fix.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fcnseg.checkpoint import CheckpointError, load_checkpoint
from fcnseg.cli import main

from conftest import TINY

# A run small enough to repeat, with a model large enough (a few MB a checkpoint) that a kill can land
# inside a checkpoint write. Validation every 2 steps writes best.pt and last.pt often.
STEPS = 10
WIDTH = 1 / 8


def _train_args(data_root: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--dataset", "camvid", "--data", str(data_root / "camvid"), "--model", "fcn8s",
            "--model-arg", f"width={WIDTH}", "--batch-size", "2", "--crop-size", "64", "--max-steps", str(STEPS),
            "--val-every", "2", "--log-every", "1", "--max-val-images", "2", "--workers", "0", "--lr", "1e-3",
            "--optimizer", "adamw", "--out", str(out), "--quiet", *extra]


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
            "FCNSEG_CACHE": str(tmp_path / "cache")}


def _spawn(args: list[str], tmp_path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "fcnseg", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(tmp_path))


def _run(args: list[str], tmp_path: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fcnseg", *args], capture_output=True, text=True,
                          env=_env(tmp_path), timeout=timeout)


def _log_steps(run: Path) -> list[dict]:
    path = run / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _assert_one_line(stderr: str, *needles: str) -> None:
    lines = [line for line in stderr.strip().splitlines() if not line.startswith(("INFO ", "WARNING "))]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture(scope="module")
def reference_run(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run every interrupted one must end up equal to."""
    tmp = tmp_path_factory.mktemp("reference")
    r = _run(_train_args(data_root, tmp / "run"), tmp)
    assert r.returncode == 0, r.stderr[-2000:]
    return tmp / "run"


def _wait_for(cond, timeout: float, proc: subprocess.Popen[str] | None = None, poll: float = 0.001) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(poll)
    return False


def _temp_files(run: Path) -> list[Path]:
    return list(run.glob(".*.tmp")) if run.is_dir() else []


def _assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = load_checkpoint(a).state_dict, load_checkpoint(b).state_dict
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _assert_run_consistent(run: Path) -> None:
    """best.pt holds the best validation of the log; each step is logged once; no temp file is left."""
    records = _log_steps(run)
    losses = [r["step"] for r in records if "loss" in r]
    vals = [r for r in records if "val_mean_iu" in r]
    assert losses == sorted(set(losses)) == list(range(1, STEPS + 1)), losses
    assert [r["step"] for r in vals] == list(range(2, STEPS + 1, 2))
    best = load_checkpoint(run / "best.pt")
    best_val = max(vals, key=lambda r: r["val_mean_iu"])  # the first of equal maxima, as training keeps
    assert best.metrics["step"] == best_val["step"]
    assert best.metrics["mean_iu"] == pytest.approx(best_val["val_mean_iu"], abs=1e-12)
    assert load_checkpoint(run / "last.pt").train_state["step"] == STEPS
    assert not _temp_files(run)
    assert (run / "best.pt").stat().st_mode & 0o777 == 0o644


def test_sigkill_at_random_moments_loses_nothing(data_root: Path, tmp_path: Path, reference_run: Path) -> None:
    rng = random.Random(1234)
    killed_inside_a_write = 0
    trials = int(os.environ.get("FCNSEG_FAULT_TRIALS", "4"))  # RESULTS.md's reliability run uses 20
    for trial in range(trials):
        run = tmp_path / f"run{trial}"
        proc = _spawn(_train_args(data_root, run), tmp_path)
        if trial % 2 == 0:
            # Aim at a checkpoint write: kill the moment a temporary checkpoint file appears.
            _wait_for(lambda run=run: bool(_temp_files(run)), 120, proc, poll=0.0005)
        else:
            # Anywhere: after a random number of logged steps (0 = during start-up or the first steps).
            n = rng.randint(0, STEPS - 1)
            _wait_for(lambda run=run, n=n: len([r for r in _log_steps(run) if "loss" in r]) >= n, 120, proc,
                      poll=0.005)
            time.sleep(rng.uniform(0, 0.2))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        killed_inside_a_write += bool(_temp_files(run))
        # Whatever the moment, every checkpoint on disk loads.
        for name in ("best.pt", "last.pt"):
            if (run / name).exists():
                load_checkpoint(run / name)
        if (run / "last.pt").exists():
            r = _run(["train", "--resume", str(run / "last.pt"), "--quiet"], tmp_path)
        else:  # killed before the first checkpoint: start again
            r = _run(_train_args(data_root, run, "--overwrite"), tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
        _assert_run_consistent(run)
        _assert_same_weights(run / "last.pt", reference_run / "last.pt")
        _assert_same_weights(run / "best.pt", reference_run / "best.pt")
    assert killed_inside_a_write >= 1, "no kill landed inside a checkpoint write: the test did not test that"
    print(f"\nSIGKILL trials: {trials}, inside a checkpoint write: {killed_inside_a_write}, all resumed to the "
          f"uninterrupted run's weights")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_saves_the_current_step_and_says_how_to_resume(data_root: Path, tmp_path: Path,
                                                                 sig: signal.Signals) -> None:
    run = tmp_path / "run"
    args = _train_args(data_root, run)
    args[args.index("--max-steps") + 1] = "400"
    args[args.index("--val-every") + 1] = "1000"  # no checkpoint but the one the signal makes
    proc = _spawn(args, tmp_path)
    assert _wait_for(lambda: len(_log_steps(run)) >= 3, 120, proc, poll=0.01)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    _assert_one_line(err, f"interrupted: {sig.name} at step", "fix: resume with --resume")
    step = int(err.split(" at step ")[1].split(":")[0])
    ck = load_checkpoint(run / "last.pt")
    assert ck.train_state["step"] == step >= 3
    # The resumed run goes on from that step and logs each step once.
    r = _run(["train", "--resume", str(run / "last.pt"), "--stop-at", str(step + 2), "--quiet"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    steps = [rec["step"] for rec in _log_steps(run) if "loss" in rec]
    assert steps == list(range(1, step + 3))


def _write_isbi_like(root: Path, data_root: Path, n: int, *, mask_size: int | None, jpeg: bool) -> Path:
    """A figure-ground folder as users bring it: images, and masks as JPEG (lossy) at another size."""
    src = data_root / "isbi2012" / "train"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for p in sorted((src / "image").iterdir())[:n]:
        Image.open(p).save(root / "images" / f"{p.stem}.png")
        mask = Image.open(src / "label" / p.name).convert("L")
        if mask_size:
            mask = mask.resize((mask_size, mask_size), Image.Resampling.BILINEAR)
        mask.save(root / "masks" / (f"{p.stem}.jpg" if jpeg else f"{p.stem}.png"), quality=75)
    return root


def test_jpeg_masks_of_another_size_train_with_two_dataset_args(data_root: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str],
                                                                caplog: pytest.LogCaptureFixture) -> None:
    root = _write_isbi_like(tmp_path / "horses", data_root, 6, mask_size=256, jpeg=True)
    grey = np.asarray(Image.open(next((root / "masks").iterdir())))
    assert len(np.unique(grey)) > 2  # lossy: grey values besides 0 and 255
    base = ["train", "--dataset", "folder", "--data", str(root), "--train-split", "train", "--val-split", "val",
            "--dataset-arg", "holdout=2", "--model", "fcn32s", "--model-arg", f"width={TINY}", "--batch-size", "2",
            "--crop-size", "48", "--max-steps", "2", "--val-every", "2", "--workers", "0", "--quiet"]

    def attempt(name: str, *args: str) -> tuple[int, str]:
        capsys.readouterr()
        code = main([*base, "--out", str(tmp_path / name), *args])
        return code, capsys.readouterr().err

    code, err = attempt("a", "--dataset-arg", "binary=true")
    assert code == 2
    _assert_one_line(err, "label values", "--dataset-arg threshold=128")
    code, err = attempt("b", "--dataset-arg", "threshold=128")
    assert code == 2
    _assert_one_line(err, "mask is 256x256 (WxH)", "512x512", "--dataset-arg resize=image")
    assert not (tmp_path / "b").exists()  # refused before any output
    code, err = attempt("c", "--dataset-arg", "threshold=128", "--dataset-arg", "resize=image")
    assert code == 0, err
    ck = load_checkpoint(tmp_path / "c" / "best.pt")
    assert ck.classes == ["background", "foreground"] and ck.metrics["pixels"] == 2 * 512 * 512
    assert "4 of 4 samples differ in size" in caplog.text  # the count of resized masks is reported


def test_overwrite_keeps_the_old_run_when_the_new_data_is_bad(data_root: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    good = _write_isbi_like(tmp_path / "good", data_root, 4, mask_size=None, jpeg=False)
    args = ["train", "--dataset", "folder", "--data", str(good), "--train-split", "all", "--val-split", "all",
            "--dataset-arg", "binary=true", "--model", "fcn32s", "--model-arg", f"width={TINY}", "--batch-size",
            "2", "--crop-size", "48", "--max-steps", "1", "--val-every", "1", "--workers", "0", "--out", str(run),
            "--quiet"]
    assert main(args) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert {"best.pt", "last.pt", "log.jsonl", "config.json"} <= before.keys()
    bad = _write_isbi_like(tmp_path / "bad", data_root, 4, mask_size=None, jpeg=False)
    Image.fromarray(np.full((512, 512), 7, np.uint8)).save(next((bad / "masks").iterdir()))
    capsys.readouterr()
    assert main([*[str(bad) if a == str(good) else a for a in args], "--overwrite"]) == 2
    _assert_one_line(capsys.readouterr().err, "label values 7", "--skip-bad")
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert after == before


@contextmanager
def _mount_tmpfs(path: Path, options: str) -> Iterator[None]:
    """A small tmpfs at ``path`` (read-only or tiny): a real file system fault, not a mock. Needs root."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture(scope="module")
def tiny_checkpoint(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("tiny") / "run"
    assert main(["train", "--dataset", "camvid", "--data", str(data_root / "camvid"), "--model-arg",
                 f"width={TINY}", "--batch-size", "1", "--crop-size", "32", "--max-steps", "1", "--val-every", "1",
                 "--max-val-images", "1", "--workers", "0", "--out", str(run), "--quiet"]) == 0
    return run / "best.pt"


def test_bad_output_paths_are_refused_before_work(data_root: Path, tmp_path: Path, tiny_checkpoint: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("in the way")
    image = str(sorted((data_root / "camvid" / "val").iterdir())[0])
    cases = [
        (["predict", "--checkpoint", str(tiny_checkpoint), image, "-o", str(a_file)], "is a file, not a folder"),
        (["predict", "--checkpoint", str(tiny_checkpoint), image, "-o", str(a_file / "sub")],
         "is a file, not a folder"),
        (["eval", "--checkpoint", str(tiny_checkpoint), "--out", str(a_file / "m.json")], "is a file, not a folder"),
        (["eval", "--checkpoint", str(tiny_checkpoint), "--out", str(a_file)], "exists; fix: pass --overwrite"),
        (["export", str(tiny_checkpoint), "-o", str(a_file / "m.onnx")], "is a file, not a folder"),
        (["train", "--dataset", "camvid", "--data", str(data_root / "camvid"), "--out", str(a_file / "run")],
         "is a file, not a folder"),
    ]
    for argv, needle in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        captured = capsys.readouterr()
        _assert_one_line(captured.err, needle)
        assert "pixel acc" not in captured.out  # refused before any work
    assert a_file.read_text() == "in the way"


def test_read_only_and_full_file_systems(data_root: Path, tmp_path: Path, tiny_checkpoint: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    image = str(sorted((data_root / "camvid" / "val").iterdir())[0])
    ro, full = tmp_path / "ro", tmp_path / "full"
    with _mount_tmpfs(ro, "ro,size=1m"):
        for argv in (["predict", "--checkpoint", str(tiny_checkpoint), image, "-o", str(ro / "pred")],
                     ["eval", "--checkpoint", str(tiny_checkpoint), "--out", str(ro / "m.json")],
                     ["train", "--dataset", "camvid", "--data", str(data_root / "camvid"), "--out", str(ro / "r")]):
            capsys.readouterr()
            assert main(argv) == 2
            _assert_one_line(capsys.readouterr().err, "read-only", "fix: choose another")
    with _mount_tmpfs(full, "size=64k"):
        # Training refuses to start on a disk that cannot hold its checkpoints.
        capsys.readouterr()
        assert main(["train", "--dataset", "camvid", "--data", str(data_root / "camvid"), "--model-arg",
                     f"width={WIDTH}", "--out", str(full / "run"), "--workers", "0", "--quiet"]) == 2
        _assert_one_line(capsys.readouterr().err, "MiB free, checkpoints need about", "free disk space")
        # The disk fills during a command: the failed write is named, nothing torn is left behind.
        (full / "filler").write_bytes(b"\0" * (60 * 1024))
        capsys.readouterr()
        code = main(["predict", "--checkpoint", str(tiny_checkpoint), image, "-o", str(full / "pred"),
                     "--workers", "0", "--quiet"])
        assert code == 2
        _assert_one_line(capsys.readouterr().err, "no space left on the device", "free disk space")
        written = list((full / "pred").iterdir())
        assert not [p for p in written if p.name.endswith(".tmp")]  # the failed write's temp file is gone
        for p in written:  # what was written is whole (atomic writes): the label PNG fit, the overlay did not
            Image.open(p).load()


def test_a_malicious_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "evil.pt"
    bad.write_bytes(pickle.dumps({"format": "fcnseg", "payload": Evil()}))
    with pytest.raises(CheckpointError, match="could not be read"):
        load_checkpoint(bad)
    assert not marker.exists()


def _torchrun(args: list[str], tmp_path: Path) -> subprocess.Popen[str]:
    port = str(31500 + (os.getpid() + hash(str(tmp_path))) % 1000)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
           "-m", "fcnseg.cli", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tmp_path),
                            start_new_session=True)


def _children_with_rank(parent: int, rank: int) -> list[int]:
    """Worker processes of a torchrun agent whose environment says RANK=<rank>."""
    found = []
    for pid in subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout.split():
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            found.append(int(pid))
    return found


def _proc_state(pid: int) -> str:
    try:
        return "(zombie)" if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z" else "alive"
    except OSError:
        return "(zombie)"


def test_a_stalled_rank_is_named_and_every_rank_stops(data_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    args = _train_args(data_root, run, "--device", "cpu", "--dist-timeout", "8")
    args[args.index("--max-steps") + 1] = "500"
    args[args.index("--val-every") + 1] = "1000"
    proc = _torchrun(args, tmp_path)
    stopped: list[int] = []
    try:
        assert _wait_for(lambda: len(_log_steps(run)) >= 2, 180, proc, poll=0.05), proc.communicate()[1][-3000:]
        stopped = _children_with_rank(proc.pid, 1)
        rank0 = _children_with_rank(proc.pid, 0)
        assert stopped and rank0, "rank processes not found"
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)  # alive but silent: the fault a timeout exists for
        # Rank 0 must give up by itself (timeout, then naming rank 1) and exit ...
        assert _wait_for(lambda: not Path(f"/proc/{rank0[0]}").exists()
                         or "(zombie)" in _proc_state(rank0[0]), 150, poll=0.2)
        for pid in stopped:  # ... then the stopped rank may take torchrun's SIGTERM
            os.kill(pid, signal.SIGCONT)
        _, err = proc.communicate(timeout=150)
    finally:
        for pid in stopped:  # let torchrun's SIGTERM/SIGKILL reach it, whatever happened
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    assert "rank 0: rank 1 of 2 stopped answering" in err, err[-3000:]
    assert "--dist-timeout" in err


def test_a_rank_0_failure_ends_every_rank(data_root: Path, tmp_path: Path) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("in the way")
    proc = _torchrun(_train_args(data_root, a_file / "run", "--device", "cpu"), tmp_path)
    try:
        _, err = proc.communicate(timeout=120)  # within seconds in practice; never the 600 s timeout
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    # Both ranks stop with rank 0's one-line message (what follows is torchrun's own failure report).
    ours = [line for line in err.splitlines() if line.startswith("fcnseg train: error:")]
    assert len(ours) == 2 and all("is a file, not a folder" in line for line in ours), err[-3000:]


def test_a_fault_inside_a_loader_worker_is_one_line_and_skippable(data_root: Path, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    # A truncated JPEG has a good header: only decoding, inside a DataLoader worker process, finds it.
    root = _write_isbi_like(tmp_path / "d", data_root, 4, mask_size=None, jpeg=False)
    victim = sorted((root / "images").iterdir())[1]
    Image.open(victim).convert("RGB").save(victim.with_suffix(".jpg"), quality=90)
    victim.unlink()
    data = victim.with_suffix(".jpg").read_bytes()
    victim.with_suffix(".jpg").write_bytes(data[: len(data) // 2])
    args = ["train", "--dataset", "folder", "--data", str(root), "--train-split", "all", "--val-split", "all",
            "--dataset-arg", "binary=true", "--check-data", "headers", "--model", "fcn32s", "--model-arg",
            f"width={TINY}", "--batch-size", "4", "--crop-size", "32", "--max-steps", "1", "--val-every", "1",
            "--workers", "1", "--quiet"]
    r = _run([*args, "--out", str(tmp_path / "a")], tmp_path)
    assert r.returncode == 2
    _assert_one_line(r.stderr, f"{victim.with_suffix('.jpg')}: cannot decode image", "--skip-bad")
    # --skip-bad checks every image in full before training (a sample failing inside the loop would leave a
    # batch empty): the truncated one is skipped up front, in the training and the validation split, counted.
    r = _run([*args, "--out", str(tmp_path / "b"), "--skip-bad"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stderr.count("skipped 1 bad samples of 4 (skip_bad)") == 2, r.stderr[-2000:]
