"""Lay the source out as it installs, for the tools that read folders instead of importing.

setup.py maps the repository's top-level folders under one name (ingress/ -> notaflow.ingress,
...). Python follows the mapping at run time (the editable install's finder); mypy and
import-linter (grimp) do not: they find a package's modules by walking its folder. This builds
DEST/notaflow/... with real folders and a symlink per file, so both see the installed names while
their findings still point at the files you edit. Usage: python bin/source_tree.py DEST
"""

from __future__ import annotations

import ast
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def folders() -> dict[str, str]:
    """setup.py's FOLDERS, read as a literal (importing setup.py would run a build)."""
    for node in ast.parse((ROOT / "setup.py").read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "FOLDERS":
            return dict(ast.literal_eval(node.value))
    raise SystemExit("setup.py has no FOLDERS mapping")


def build(dest: Path) -> Path:
    """Return DEST, holding notaflow/ as installed (symlinks to the checkout's files)."""
    if dest.exists():
        shutil.rmtree(dest)
    for name, folder in folders().items():
        source = ROOT / folder
        if not (source / "__init__.py").is_file():
            continue
        target = dest.joinpath(*name.split("."))
        for path in sorted(source.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            rel = path.relative_to(source)
            # Another mapped folder nested here (none today) would be laid out by its own entry.
            link = target / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(path)
    return dest


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python bin/source_tree.py DEST")
    print(build(Path(sys.argv[1]).resolve()))
