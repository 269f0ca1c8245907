"""`D/env`: the settings of a running `notaflow dev`, as `NOTAFLOW_*=value` lines, for the
operator verbs (`notaflow tenant create`, `dlq`, `reconcile` ...) to reach that stack without
hand-copied ports and secrets. Values are shell-quoted, so `set -a; . D/env` also works."""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from pathlib import Path

FILE_NAME = "env"
DEFAULT_DATA_DIR = ".notaflow"


def render(env: Mapping[str, str], header: str) -> str:
    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"{key}={shlex.quote(value)}" for key, value in sorted(env.items())]
    return "\n".join(lines) + "\n"


def parse(text: str) -> dict[str, str]:
    """The inverse of `render`; comments and blank lines ignored, a malformed line refused."""
    out: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, sep, raw = stripped.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"line {number}: expected NAME=value")
        words = shlex.split(raw) if raw else [""]
        if len(words) != 1:
            raise ValueError(f"line {number}: the value of {key} must be one (quoted) word")
        out[key] = words[0]
    return out


def write(path: Path, env: Mapping[str, str], header: str) -> None:
    """Written with mode 0600 and renamed into place: it holds the stack's secrets, and a verb
    must never read half of it."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(render(env, header))
    os.replace(tmp, path)


def read(path: Path) -> dict[str, str]:
    return parse(path.read_text())


def verb_environment(
    data_dir: str | None, environ: Mapping[str, str]
) -> tuple[dict[str, str], Path | None, list[str]]:
    """The environment an operator verb runs with: `D/env` (D from `--data-dir`, else
    `.notaflow/` when it has one) under the process's own `NOTAFLOW_*` variables, which win.
    Returns it, the file read (None: none) and the names the environment overrode.
    Raises FileNotFoundError when `--data-dir` names a directory without the file."""
    path = Path(data_dir or DEFAULT_DATA_DIR) / FILE_NAME
    if not path.is_file():
        if data_dir is not None:
            raise FileNotFoundError(path)
        return dict(environ), None, []
    from_file = read(path)
    overridden = sorted(k for k in from_file if k in environ and environ[k] != from_file[k])
    return {**from_file, **environ}, path, overridden
