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
    run_page(DOCS / page, data_root, tmp_path)  # asserts each block exits 0 without a traceback, naming it


def _hooks():
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cli_reference_holds_every_command_and_flag() -> None:
    import argparse

    from fcnseg.cli import build_parser

    text = _hooks().cli_reference()
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        section = text.split(f"## fcnseg {name}\n")[1].split("\n## ")[0]
        for action in parser._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}`" in section, (name, flag)
    assert "$FCNSEG_DATA/&lt;dataset&gt;" in text  # help text is escaped, not read as HTML


def test_the_http_reference_holds_every_route_and_refusal() -> None:
    hooks = _hooks()
    schema = hooks.openapi_schema()
    text = hooks.http_reference(schema)
    assert set(schema["paths"]) == {"/healthz", "/metrics", "/v1/model", "/v1/segment"}
    for path, methods in schema["paths"].items():
        for method in methods:
            assert f"## `{method.upper()} {path}`" in text
    segment = text.split("## `POST /v1/segment`")[1]
    for status in ("200", "400", "413", "415", "422", "503", "504"):
        assert f"| {status} |" in segment
    assert "`multipart/form-data`" in segment and "`image/*`" in segment
