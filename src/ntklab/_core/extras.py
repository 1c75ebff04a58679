"""Optional dependencies: `import_extra("zarr", "engine")` imports a module that one of
ntklab's extras installs, or says which extra to install."""
from __future__ import annotations

from importlib import import_module
from types import ModuleType


def import_extra(module: str, extra: str) -> ModuleType:
    try:
        return import_module(module)
    except ModuleNotFoundError as err:
        raise ImportError(f"this part of ntklab needs {module.split('.')[0]}, from the [{extra}] "
                          f"extra: pip install 'ntklab[{extra}]'") from err
