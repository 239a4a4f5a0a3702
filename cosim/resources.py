"""Where cosim's bundled data is: the scenario schemas, the bundled services and scenarios, the SDKs.

In a checkout (and in the editable install ``./inv`` makes) they are the repository's top-level directories
``schemas/``, ``containers/``, ``scenarios/`` and ``sdk/``. An installed cosim (``pip install .`` or the wheel)
carries copies of them as package data in ``cosim/_data/``, put there by ``setup.py``'s ``build_py`` step. Code
that needs bundled data asks :func:`data_path`, never for the checkout's root.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
INSTALLED_DATA = PACKAGE_DIR / "_data"  # only in a built wheel (setup.py copies the directories below into it)
CHECKOUT = PACKAGE_DIR.parent
BUNDLED = ("schemas", "containers", "scenarios", "sdk")  # the directories data_path can name first


def data_root() -> Path:
    """The directory holding ``schemas/``, ``containers/``, ``scenarios/`` and ``sdk/``."""
    return INSTALLED_DATA if INSTALLED_DATA.is_dir() else CHECKOUT


def data_path(*parts: str) -> Path:
    """A bundled file or directory, e.g. ``data_path("scenarios", "default.yaml")`` (it need not exist)."""
    if not parts or parts[0] not in BUNDLED:
        raise ValueError(f"data_path{parts!r}: the first part must be one of {', '.join(BUNDLED)}")
    return data_root().joinpath(*parts)


def template_path(name: str) -> Path:
    """A template of ``cosim new`` (``experiment``, ``service-python``, ``service-node``): package data."""
    return PACKAGE_DIR / "templates" / name
