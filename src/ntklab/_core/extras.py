"""Optional dependencies: `import_extra("zarr", "engine")` imports a module that one of
ntklab's extras installs, or says which extra to install."""
from __future__ import annotations

from importlib import import_module
from types import ModuleType


PACKAGES = {"sklearn": "scikit-learn", "distributed": "dask[distributed]"}   # import name -> package name


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message says which extra installs it."""


def import_extra(module: str, extra: str) -> ModuleType:
    """`module`, imported; MissingExtra naming the extra to install when it is not there."""
    try:
        return import_module(module)
    except ModuleNotFoundError as err:
        name = module.split(".")[0]
        raise MissingExtra(f"this part of ntklab needs {PACKAGES.get(name, name)}, from the [{extra}] "
                          f"extra: pip install 'ntklab[{extra}]'") from err
