"""MkDocs hooks: the reference pages that the code itself writes.

- ``<!-- fcnseg:cli -->`` becomes every ``fcnseg`` command with its usage and a table of its options, read from
  the parser the CLI runs (:func:`fcnseg.cli.build_parser`), so a flag cannot be documented wrong or missed.
- ``<!-- fcnseg:http -->`` becomes the service's routes, read from FastAPI's OpenAPI schema of the app that
  ``fcnseg serve`` runs; the schema itself is published with the site as ``reference/openapi.json``.
- ``<!-- fcnseg:results -->`` becomes benchmarks/RESULTS.md, where every benchmark writes its numbers.
- ``<!-- fcnseg:changelog -->`` becomes CHANGELOG.md (one file, at the root, as packaging tools expect).
"""

from __future__ import annotations

import argparse
import html
import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "benchmarks" / "camvid" / "fcn8s_efficientnet_lite0_camvid.pt"


def _cell(text: object) -> str:
    """``text`` as one Markdown table cell: no line breaks, ``|`` escaped, ``<dataset>`` shown, not parsed as HTML."""
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ").strip()


def _flag(action: argparse.Action) -> str:
    if not action.option_strings:
        name = action.metavar or action.dest.upper()
        return f"`{name}{' ...' if action.nargs in ('*', '+') else ''}`"
    return ", ".join(f"`{o}`" for o in action.option_strings)


def cli_reference() -> str:
    """Markdown for every subcommand of ``fcnseg``: description, usage, options."""
    from fcnseg.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = ["Generated from `fcnseg.cli.build_parser()` when this site is built. "
           "Global options, before the command: `--version`, `-v/--verbose` (debug logging), "
           "`--debug` (show Python tracebacks of errors).", ""]
    for name, p in sub.choices.items():
        usage = "\n".join("    " + line for line in p.format_usage().strip().splitlines())
        out += [f"## fcnseg {name}", "", _cell(p.description), "", '??? note "usage"', "", "    ```text", usage,
                "    ```", "",
                "| option | what it does (defaults as the help states them) |", "|---|---|"]
        formatter = p._get_formatter()
        for action in p._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            help_text = formatter._expand_help(action) if action.help else ""
            if action.choices and not isinstance(action.choices, dict):
                help_text += f" One of {', '.join(f'`{c}`' for c in action.choices)}."
            out.append(f"| {_flag(action)} | {_cell(help_text)} |")
        out.append("")
    return "\n".join(out)


def openapi_schema() -> dict[str, Any]:
    """FastAPI's OpenAPI schema of the app ``fcnseg serve`` runs, for the committed CamVid checkpoint."""
    from fcnseg.serve.app import create_app
    from fcnseg.serve.config import ServeConfig

    return create_app(ServeConfig(checkpoint=str(CHECKPOINT))).openapi()


def http_reference(schema: dict[str, Any]) -> str:
    out = [f"Generated from FastAPI's OpenAPI schema ({schema.get('openapi', '3')}) when this site is built; "
           "the whole schema: [openapi.json](openapi.json). A running server also serves it at `/openapi.json` "
           "and an interactive page at `/docs`.", ""]
    for path, methods in schema["paths"].items():
        for method, op in methods.items():
            out += [f"## `{method.upper()} {path}`", "", op.get("description") or op.get("summary", ""), ""]
            params = op.get("parameters", [])
            if params:
                out += ["| parameter | in | type | what it is |", "|---|---|---|---|"]
                for prm in params:
                    kind = prm.get("schema", {}).get("type") or " or ".join(
                        s.get("type", "") for s in prm.get("schema", {}).get("anyOf", []))
                    out.append(f"| `{prm['name']}` | {prm['in']} | {kind} | {_cell(prm.get('description', ''))} |")
                out.append("")
            body = op.get("requestBody")
            if body:
                media = ", ".join(f"`{m}`" for m in body.get("content", {}))
                out += [f"Request body ({media}): {body.get('description', '')}.", ""]
            out += ["| status | content |", "|---|---|"]
            for status, resp in op.get("responses", {}).items():
                media = ", ".join(f"`{m}`" for m in resp.get("content", {})) or "-"
                out.append(f"| {status} | {media} ({_cell(resp.get('description', ''))}) |")
            out.append("")
    return "\n".join(out)


_schema: dict[str, Any] | None = None


def on_files(files: Any, config: Any) -> Any:
    """Adds ``reference/openapi.json``, the schema, to the site's files (so pages may link to it)."""
    from mkdocs.structure.files import File

    global _schema
    _schema = openapi_schema()
    files.append(File.generated(config, "reference/openapi.json", content=json.dumps(_schema, indent=2) + "\n"))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if "<!-- fcnseg:cli -->" in markdown:
        markdown = markdown.replace("<!-- fcnseg:cli -->", cli_reference())
    if "<!-- fcnseg:http -->" in markdown:
        assert _schema is not None
        markdown = markdown.replace("<!-- fcnseg:http -->", http_reference(_schema))
    if "<!-- fcnseg:results -->" in markdown:
        text = (ROOT / "benchmarks" / "RESULTS.md").read_text()
        markdown = markdown.replace("<!-- fcnseg:results -->", text.split("\n", 1)[1])
    if "<!-- fcnseg:changelog -->" in markdown:
        text = (ROOT / "CHANGELOG.md").read_text()
        markdown = markdown.replace("<!-- fcnseg:changelog -->", text.split("\n", 1)[1])  # its own title dropped
    return markdown


_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|exc|obj|const):(?=<code>)")
_TILDE = re.compile(r"<code>~(?:\w+\.)*(\w+)</code>")


def on_page_content(html_text: str, page: Any, config: Any, files: Any) -> str:
    """The docstrings' Sphinx roles (``:func:`x```, ``~pkg.mod.Name``) shown as plain code, as Sphinx shows them."""
    return _TILDE.sub(r"<code>\1</code>", _ROLE.sub("", html_text))
