"""Every page of the documentation site runs as written (the rules: ``tests/docblocks.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO
from docblocks import page_blocks, run_page

DOCS = REPO / "docs"
PAGES = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))


def test_the_site_has_pages() -> None:
    assert {"index.md", "getting-started.md", "faq.md"} <= set(PAGES)


@pytest.mark.parametrize("page", [p for p in PAGES if page_blocks((DOCS / p).read_text())])
def test_page_runs_as_written(page: str, data_root: Path, tmp_path: Path) -> None:
    ran = run_page(DOCS / page, data_root, tmp_path)
    assert ran  # the page had runnable blocks and each exited 0
