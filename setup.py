"""Which folders become which packages: everything installs under the one name `notaflow`.

The product owner fixed the repository's top-level folders (ingress/, consumers/, schemas/); a
wheel of them as they stand would put generic names (`ingress`, `consumers`, `schemas`) into
site-packages. Each folder is mapped under the namespace instead, and the packages are found by
walking the folders, since setuptools' discovery knows nothing of the mapping. A folder that is
absent is skipped: the production image does not copy the dev-only sandbox/, so its wheel has
no notaflow.sandbox. Everything else about the build is in pyproject.toml.
"""

from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent
FOLDERS = {
    "notaflow": "notaflow",
    "notaflow.launch": "launch",
    "notaflow.ingress": "ingress",
    "notaflow.consumers": "consumers",
    "notaflow.schemas": "schemas",
    "notaflow.sandbox": "sandbox",  # dev-only: present in a checkout, absent in the image
}


def packages() -> tuple[dict[str, str], list[str]]:
    where: dict[str, str] = {}
    found: list[str] = []
    for name, folder in FOLDERS.items():
        if not (ROOT / folder / "__init__.py").is_file():
            continue
        where[name] = folder
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            rel = init.parent.relative_to(ROOT / folder)
            found.append(".".join([name, *rel.parts]))
    return where, found


package_dir, package_names = packages()
setup(package_dir=package_dir, packages=package_names)
