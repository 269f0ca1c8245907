"""The layers hold in CI: import-linter's contracts (pyproject.toml) over the installed layout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from testkit.processes import ROOT


def test_every_import_points_down_the_layers(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    subprocess.run(
        [sys.executable, str(ROOT / "bin" / "source_tree.py"), str(tree)], check=True, timeout=60
    )
    lint_imports = Path(sys.executable).parent / "lint-imports"
    out = subprocess.run(
        [str(lint_imports), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout
