"""Run a Markdown page's code blocks as written: the README and every page of the documentation site.

The rules, the same for every page (``docs/contributing.md`` states them for writers):

- a `````bash`` block is run, line by line in page order, from a project-like folder (the committed
  ``benchmarks/`` linked in, ``FCNSEG_DATA`` set, ``runs/`` written there). Continuation lines are joined and
  comments dropped. Training lines get ``--dry-run`` appended (every check of data, flags and output folder,
  then a stop: hours of training are not a test). ``fcnseg serve ...`` is started in the background and
  waited on (``/healthz`` on its ``--port``, default 8000); the lines after it talk to it, and it is stopped
  with SIGTERM at the page's end, which must exit 0. ``curl -s`` becomes ``curl -sf``, so an HTTP error fails.
  ``make ...`` lines are the set-up, which CI runs itself, and are skipped;
- a `````python`` block is a whole script, run by itself in the same folder at its place in the page;
- `````sh``, `````text``, `````console``, `````yaml``... blocks are shown and never run: commands for data that
  is not on these machines, or output.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from fcnseg.serve.probe import wait_ready

REPO = Path(__file__).resolve().parents[1]

_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
_PORT = re.compile(r"--port[ =](\d+)")


@dataclass(frozen=True)
class Block:
    """One runnable piece of a page: a shell command line, or a whole Python script."""

    kind: str  # "bash" or "python"
    text: str


def page_blocks(text: str) -> list[Block]:
    """The runnable pieces of a Markdown text, in page order (only fences that start a line)."""
    out: list[Block] = []
    for lang, body in _FENCE.findall(text):
        if lang == "python":
            out.append(Block("python", body))
        elif lang == "bash":
            for line in body.replace("\\\n", " ").splitlines():
                line = line.split(" # ")[0].strip()
                if line and not line.startswith("#") and not line.startswith("make "):
                    out.append(Block("bash", " ".join(line.split())))
    return out


def shell_commands(text: str) -> list[str]:
    """Only the shell command lines of a page, as :func:`run_page` runs them (before ``--dry-run``)."""
    return [b.text for b in page_blocks(text) if b.kind == "bash"]


def project_folder(tmp: Path) -> Path:
    """A folder laid out like the project root for the pages' relative paths (``benchmarks/...``)."""
    (tmp / "benchmarks").symlink_to(REPO / "benchmarks")
    return tmp


def page_env(data_root: Path, tmp: Path) -> dict[str, str]:
    return {**os.environ, "FCNSEG_DATA": str(data_root), "FCNSEG_CACHE": str(tmp / ".cache"),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "OMP_NUM_THREADS": "1"}


def run_page(path: Path, data_root: Path, tmp: Path) -> list[Block]:
    """Run every block of the page at ``path`` (see the module's rules); returns what ran.

    Fails (AssertionError) at the first block that exits non-zero or prints a Python traceback, naming it.
    """
    cwd = project_folder(tmp)
    env = page_env(data_root, tmp)
    servers: list[tuple[str, subprocess.Popen[str]]] = []
    blocks = page_blocks(path.read_text())
    try:
        for i, block in enumerate(blocks):
            if block.kind == "python":
                script = tmp / f".block{i}.py"
                script.write_text(block.text)
                r = subprocess.run([sys.executable, str(script)], cwd=cwd, env=env, capture_output=True,
                                   text=True, timeout=600)
                where = f"{path.name}: python block {i}:\n{block.text}"
            else:
                cmd = block.text
                if cmd.startswith("fcnseg serve"):
                    server = subprocess.Popen(["bash", "-c", f"exec {cmd}"], cwd=cwd, env=env, text=True,
                                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                    servers.append((cmd, server))
                    port = _PORT.search(cmd)
                    wait_ready(f"http://127.0.0.1:{port.group(1) if port else 8000}", timeout=180,
                               process=server)
                    continue
                if "fcnseg.cli train" in cmd or cmd.startswith("fcnseg train"):
                    cmd += " --dry-run"
                if cmd.startswith("curl"):
                    cmd = cmd.replace("curl -s", "curl -sf", 1)
                r = subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True,
                                   timeout=600)
                where = f"{path.name}: {cmd}"
            assert r.returncode == 0, f"{where}\nexit {r.returncode}\n{r.stderr[-3000:]}"
            assert "Traceback" not in r.stderr, f"{where}\n{r.stderr[-3000:]}"
    finally:
        for _, server in servers:
            if server.poll() is None:
                server.send_signal(signal.SIGTERM)
            server.communicate(timeout=60)
    for cmd, server in servers:
        assert server.returncode == 0, f"{path.name}: {cmd} exited {server.returncode} after SIGTERM"
    return blocks
