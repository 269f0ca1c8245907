"""The chart README's values table, generated from values.yaml in helm-docs' format.

A `# -- text` comment (continued by the `#` lines after it) documents the key below it; a
documented map is one row and its own documented keys get rows too. The table sits between the
`<!-- values:begin -->` and `<!-- values:end -->` markers of helm/notaflow/README.md.

    .venv/bin/python -m testkit.helm_docs     # rewrite the README's table
    tests/unit/chart/test_chart.py::test_readme_values_table_is_current   # fails on drift

(helm-docs itself is a Go binary the test machines cannot download; this reads the same
comment convention, so running real helm-docs later gives the same table.)
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[1] / "helm" / "notaflow"
BEGIN, END = "<!-- values:begin -->", "<!-- values:end -->"
KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.-]+|\"[^\"]+\"):(?:\s|$)")
LONG = 60  # defaults longer than this (as JSON) are left to values.yaml


def documented_keys(text: str) -> list[tuple[str, str]]:
    """(dotted key, description) for every `# --` documented key, in file order."""
    out: list[tuple[str, str]] = []
    stack: list[tuple[int, str]] = []
    doc: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            doc = [stripped[4:].strip()]
            continue
        if stripped.startswith("#"):
            if doc is not None:
                doc.append(stripped[1:].strip())
            continue
        match = KEY.match(line)
        if not match or stripped.startswith("-"):
            doc = None if stripped else doc
            continue
        indent, key = len(match["indent"]), match["key"].strip('"')
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        if doc is not None:
            out.append((".".join(k for _, k in stack), " ".join(doc).strip()))
        doc = None
    return out


def lookup(values: Any, dotted: str) -> Any:
    for part in _split(dotted, values):
        values = values[part]
    return values


def _split(dotted: str, values: Any) -> list[str]:
    # Keys may contain dots (topic configs such as retention.ms): match the longest known key.
    parts: list[str] = []
    rest = dotted
    node = values
    while rest:
        for key in sorted(node, key=len, reverse=True):
            if rest == key or rest.startswith(key + "."):
                parts.append(key)
                node = node[key]
                rest = rest[len(key) + 1 :]
                break
        else:
            raise KeyError(dotted)
    return parts


def kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if value is None:
        return "string"
    return "object"


def default(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return "`(see values.yaml)`" if len(text) > LONG else f"`{text}`"


def table() -> str:
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    rows = ["| Key | Type | Default | Description |", "| --- | --- | --- | --- |"]
    for key, description in documented_keys(text):
        value = lookup(values, key)
        cell = description.replace("|", "\\|")
        rows.append(f"| `{key}` | {kind(value)} | {default(value)} | {cell} |")
    return "\n".join(rows)


def render_readme(readme: str) -> str:
    start, end = readme.index(BEGIN) + len(BEGIN), readme.index(END)
    return f"{readme[:start]}\n{table()}\n{readme[end:]}"


def main() -> int:
    path = CHART / "README.md"
    path.write_text(render_readme(path.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
