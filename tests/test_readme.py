"""Every command line in the README's ``bash`` blocks runs as written, in order, from a project-like folder.

Training lines get ``--dry-run`` appended (all checks of data, flags and output folder, then a stop: hours of
training are not a test); every other line runs for real. The first block (``make demo`` / ``make test``) is
the set-up, which CI itself runs, and is not repeated here.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fcnseg.serve.probe import wait_ready

from conftest import REPO

_BLOCK = re.compile(r"```bash\n(.*?)```", re.S)


def readme_commands() -> list[str]:
    """Command lines of the README's ``bash`` blocks, continuation lines joined, comments dropped."""
    blocks = _BLOCK.findall((REPO / "README.md").read_text())
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" # ")[0].strip()
            if line and not line.startswith("#") and not line.startswith("make "):
                commands.append(" ".join(line.split()))
    return commands


def test_readme_has_commands() -> None:
    cmds = readme_commands()
    assert any(c.startswith("fcnseg train") for c in cmds) and any(c.startswith("fcnseg predict") for c in cmds)
    assert any(c.startswith("torchrun") for c in cmds) and any("--engine onnxruntime" in c for c in cmds)


def test_every_readme_command_runs_as_written(data_root: Path, tmp_path: Path) -> None:
    (tmp_path / "benchmarks").symlink_to(REPO / "benchmarks")  # the committed checkpoint, as from the root
    env = {**os.environ, "FCNSEG_DATA": str(data_root), "FCNSEG_CACHE": str(tmp_path / ".cache"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "OMP_NUM_THREADS": "1"}
    server: subprocess.Popen[str] | None = None
    try:
        for cmd in readme_commands():
            if cmd.startswith("fcnseg serve"):  # runs until stopped: the curl lines that follow talk to it
                server = subprocess.Popen(["bash", "-c", f"exec {cmd}"], cwd=tmp_path, env=env, text=True,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                wait_ready("http://127.0.0.1:8000", timeout=180, process=server)
                continue
            if "fcnseg.cli train" in cmd or cmd.startswith("fcnseg train"):
                cmd += " --dry-run"
            if cmd.startswith("curl"):
                cmd = cmd.replace("curl -s", "curl -sf", 1)  # an HTTP error fails the line
            r = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=env, capture_output=True, text=True,
                               timeout=600)
            assert r.returncode == 0, f"README command failed: {cmd}\n{r.stderr[-3000:]}"
            assert "Traceback" not in r.stderr, cmd
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.communicate(timeout=60)
    assert server is not None and server.returncode == 0  # SIGTERM drains and exits cleanly
    # What the lines promised is there.
    assert (tmp_path / "runs" / "camvid_val.json").is_file()
    assert len(list((tmp_path / "runs" / "camvid_val_predictions").glob("*_overlay.png"))) == 101
    assert (tmp_path / "runs" / "camvid_int8.onnx").is_file()
    assert not (tmp_path / "runs" / "isbi").exists()  # a dry run writes nothing
    assert (tmp_path / "runs" / "labels.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"



@pytest.mark.parametrize("command", ["train", "eval", "predict", "export", "convert", "serve", "hha", "models"])
def test_every_flag_has_help(command: str) -> None:
    r = subprocess.run([sys.executable, "-m", "fcnseg", command, "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0
    # argparse prints a flag's help after two spaces on its line or indented on the next; a flag without
    # help has neither.
    lines = r.stdout.splitlines()
    options = [i for i, line in enumerate(lines) if re.match(r"^  -", line)]
    bare = []
    for i in options:
        text = lines[i].strip()
        has_inline_help = re.search(r"\S\s{2,}\S", text) is not None
        has_next_help = i + 1 < len(lines) and lines[i + 1].startswith(" " * 20)
        if not (has_inline_help or has_next_help):
            bare.append(text)
    assert len(options) >= 3 and not bare, f"fcnseg {command}: flags without help: {bare}"
    if command == "train":
        assert "folder: images, masks" in " ".join(r.stdout.split())  # --dataset-arg keys per dataset


def test_version_and_module_entry_point() -> None:
    from fcnseg import __version__

    r = subprocess.run([sys.executable, "-m", "fcnseg", "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == f"fcnseg {__version__}"
