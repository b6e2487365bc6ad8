"""The README: at most 150 lines, the two set-up commands first, and every block runs as written.

The blocks run by the rules of ``tests/docblocks.py`` (the documentation's pages follow the same ones):
``bash`` lines from a project-like folder, training lines with ``--dry-run``, ``fcnseg serve`` in the
background for the ``curl`` lines after it; ``python`` blocks as whole scripts. The first block
(``make demo`` / ``make test``) is the set-up, which CI itself runs, and is not repeated here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from docblocks import page_blocks, run_page, shell_commands

README = REPO / "README.md"


def test_readme_is_short_and_starts_with_the_two_setup_commands() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines: move detail into docs/"
    first = lines[lines.index("```bash") + 1:lines.index("```bash") + 3]
    assert [line.split()[:2] for line in first] == [["make", "demo"], ["make", "test"]]
    assert lines.index("```bash") < 4  # the set-up comes first


def test_readme_does_the_three_things() -> None:
    cmds = shell_commands(README.read_text())
    assert any(c.startswith("fcnseg predict") for c in cmds)
    assert any(c.startswith("fcnseg train --dataset folder") for c in cmds)
    assert any(c.startswith("fcnseg serve") for c in cmds) and any(c.startswith("curl") for c in cmds)
    assert any(b.kind == "python" for b in page_blocks(README.read_text()))


def test_readme_links_and_picture_exist() -> None:
    text = README.read_text()
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if "://" not in t]
    assert "docs/img/camvid-overlay.png" in local
    missing = [t for t in local if not (REPO / t).exists()]
    assert not missing, f"README links to files that do not exist: {missing}"


def test_every_readme_block_runs_as_written(data_root: Path, tmp_path: Path) -> None:
    ran = run_page(README, data_root, tmp_path)
    assert len(ran) >= 4
    # What the lines promised is there.
    assert len(list((tmp_path / "runs" / "camvid_predictions").glob("*_overlay.png"))) == 101
    assert not (tmp_path / "runs" / "isbi").exists()  # a dry run writes nothing
    assert (tmp_path / "runs" / "overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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
