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
# Caches and build leftovers, and what a service image gets elsewhere (the wheelhouse is downloaded per host).
SKIPPED = shutil.ignore_patterns(".wheelhouse", "__pycache__", "*.pyc", "*.pyo", ".pytest_cache", ".mypy_cache",
                                 ".ruff_cache", "node_modules", "*.egg-info", "build", "dist")


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
                shutil.copytree(ROOT / name, package / "_data" / name, ignore=SKIPPED)
        shutil.copytree(ROOT / "cosim" / "templates", package / "templates", ignore=SKIPPED)


setup(cmdclass={"build_py": build_py_with_data})
