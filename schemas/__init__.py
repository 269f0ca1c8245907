"""The JSON Schema files of notaflow (`<name>.schema.json`, draft 2020-12) and their validators.

Schemas ship as package data, so they are read through importlib.resources rather than a path
relative to the working directory. Each file is parsed and compiled once per process: the
compiled jsonschema_rs validator sits on the ingress hot path.
"""

from __future__ import annotations

import copy
import json
import re
from functools import cache
from importlib import resources
from typing import Any

import jsonschema
import jsonschema_rs

__all__ = ["load", "meta_check", "names", "validator"]

_SUFFIX = ".schema.json"
# Names become file names: keep them to plain identifiers so no caller can reach outside.
_NAME = re.compile(r"[a-z0-9_]+")


def names() -> list[str]:
    """Every schema of the package, sorted."""
    files = resources.files(__name__).iterdir()
    return sorted(f.name.removesuffix(_SUFFIX) for f in files if f.name.endswith(_SUFFIX))


@cache
def _parsed(name: str) -> dict[str, Any]:
    if not _NAME.fullmatch(name):
        raise ValueError(f"invalid schema name {name!r}")
    text = resources.files(__name__).joinpath(name + _SUFFIX).read_text(encoding="utf-8")
    schema = json.loads(text)
    if not isinstance(schema, dict):
        raise ValueError(f"schema {name!r} is not a JSON object")
    return schema


def load(name: str) -> dict[str, Any]:
    """The parsed schema `schemas/<name>.schema.json`.

    The file is read once; each caller gets its own copy, so nobody can change the schema that
    `validator` compiled for everyone else.
    """
    return copy.deepcopy(_parsed(name))


@cache
def validator(name: str) -> jsonschema_rs.Validator:
    """The compiled draft 2020-12 validator of schema `name`, shared by the whole process."""
    return jsonschema_rs.Draft202012Validator(_parsed(name))


def meta_check(name: str) -> None:
    """Raise `jsonschema.SchemaError` if schema `name` breaks the draft 2020-12 meta-schema.

    Uses python-jsonschema rather than jsonschema_rs so the file is judged by a second,
    independent implementation.
    """
    jsonschema.Draft202012Validator.check_schema(_parsed(name))
