"""The one build step pyproject.toml cannot declare: cosim's bundled data goes into the wheel as package data.

The checkout's top-level ``schemas/``, ``containers/``, ``scenarios/`` and ``sdk/`` are copied into the wheel's
``cosim/_data/``, and ``cosim/templates/`` (the templates of ``cosim new``, dotfiles included) into its
``cosim/templates/``; cosim.resources finds them there. An editable install (what ``./inv`` does) copies
nothing: cosim.resources then reads the checkout itself. Everything else is in pyproject.toml; MANIFEST.in puts
the same directories into an sdist, so a wheel built from it has them too.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
DATA_DIRS = ("schemas", "containers", "scenarios", "sdk")
# Left out: caches, the wheelhouse (downloaded per host), installed node_modules, and packaging leftovers of
# sdk/python. Nothing else: a service folder's files (and the SDKs') name its image, so an installed cosim must
# carry exactly the files a checkout hashes (cosim.service_sources leaves out the same caches).
SKIPPED = shutil.ignore_patterns(".wheelhouse", "__pycache__", "*.pyc", "*.pyo", ".git", ".pytest_cache", ".mypy_cache",
                                 ".cosim", "node_modules", "*.egg-info")
SDK_PYTHON_LEFTOVERS = {"build", "dist"}  # an in-place build of the cosim-service distribution


def skipped(directory: str, names: list[str]) -> set[str]:
    extra = SDK_PYTHON_LEFTOVERS & set(names) if Path(directory) == ROOT / "sdk" / "python" else set()
    return set(SKIPPED(directory, names)) | extra


class build_py_with_data(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        package = Path(self.build_lib) / "cosim"
        for stale in (package / "_data", package / "templates"):  # build/ outlives a build: no file of an old one
            shutil.rmtree(stale, ignore_errors=True)
        for name in DATA_DIRS:
            if (ROOT / name).is_dir():
                shutil.copytree(ROOT / name, package / "_data" / name, ignore=skipped)
        shutil.copytree(ROOT / "cosim" / "templates", package / "templates", ignore=skipped)


setup(cmdclass={"build_py": build_py_with_data})
