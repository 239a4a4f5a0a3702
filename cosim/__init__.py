"""cosim: run real containerised edge services inside a deterministic, virtual-time co-simulation."""

import importlib.util as _importlib_util
import sys as _sys
from pathlib import Path as _Path

__version__ = "0.1.0"

# TEMPORARY shim, until cosim's own distribution ships the SDK package (pyproject package-dir mapping to
# sdk/python/cosim_service): an install of a checkout that predates it finds cosim_service in sdk/python.
if _importlib_util.find_spec("cosim_service") is None:  # pragma: no cover (depends on how cosim was installed)
    _sys.path.append(str(_Path(__file__).resolve().parent.parent / "sdk" / "python"))
