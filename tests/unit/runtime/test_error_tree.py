"""One error tree: every error class of the product roots in `notaflow.errors.NotaflowError`
and is drawn in that module's docstring, so a reader finds every error in one picture and a
caller can tell retriable from permanent by one flag. Fails when a module grows an error
class of its own that roots elsewhere or is missing from the picture."""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil

from notaflow import errors
from notaflow.errors import NotaflowError, Permanent, Transient

# The sandbox plays the providers (its errors are the providers' answers, not ours) and is
# not in the production image. Alembic's migration scripts run only inside Alembic.
LAYERS = ("launch", "ingress", "consumers", "schemas")
OUTSIDE = ("notaflow.sandbox", "notaflow.store.migrations")


@functools.cache
def product_errors() -> list[type[BaseException]]:
    found: list[type[BaseException]] = []
    names = {"notaflow"}
    # The folders installed under `notaflow` (setup.py) each bring their own path.
    for top in ("notaflow", *(f"notaflow.{p}" for p in LAYERS)):
        package = importlib.import_module(top)
        names |= {i.name for i in pkgutil.walk_packages(package.__path__, top + ".")}
    for name_ in sorted(names):
        if name_.startswith(OUTSIDE):
            continue
        module = importlib.import_module(name_)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == module.__name__
                and not name.startswith("_")  # a module's private signal never leaves it
            ):
                found.append(value)
    return found


def test_the_walk_finds_the_errors_of_every_layer() -> None:
    names = {cls.__name__ for cls in product_errors()}
    # One per layer and per stray: guards against a walk that finds nothing and passes.
    assert {"InvalidDocument", "FocusError", "BodyTooLarge", "DestinationRefused", "FrameError",
            "TooManyHooks", "TopicsNotCoPartitioned", "ForeignPath"} <= names  # fmt: skip


def test_every_error_of_the_product_roots_in_notaflow_error() -> None:
    strays = [
        f"{c.__module__}.{c.__qualname__}"
        for c in product_errors()
        if not issubclass(c, NotaflowError)
    ]
    assert strays == []


def test_every_error_is_drawn_in_the_tree() -> None:
    picture = errors.__doc__ or ""
    missing = [c.__qualname__ for c in product_errors() if c.__qualname__ not in picture]
    assert missing == []


def test_retriable_is_one_flag() -> None:
    assert not Permanent("x").retriable
    assert Transient("x").retriable and Transient("x", retry_after=2).retry_after == 2
    for cls in product_errors():
        assert isinstance(cls.retriable, bool), cls  # type: ignore[attr-defined]
        if issubclass(cls, Permanent):
            assert not cls.retriable, cls
        if issubclass(cls, Transient):
            assert cls.retriable, cls
