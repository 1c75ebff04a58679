"""The result types of the predictions, neural-tangents' (`neural_tangents.predict`):

* `Gaussian(mean, covariance)`: a named tuple, so `mean, cov = ...` unpacks it;
* `PerGet`: one value per name of `get=("nngp", "ntk")` (a sequence of names), a named tuple
  whose fields are those names in `get`'s order (`.nngp`, `.ntk`, as neural-tangents'
  "Gaussians"); `result["ntk"]` also reads a field by its name.
"""
from __future__ import annotations

from collections import namedtuple
from functools import cache
from typing import Any, NamedTuple

import torch


class Gaussian(NamedTuple):
    """A `(mean, covariance)` named tuple (neural-tangents' `predict.Gaussian`): the mean has the
    shape of the outputs, the covariance that of the kernel over the same samples."""

    mean: torch.Tensor
    covariance: torch.Tensor


class PerGet(tuple):
    """One value per name of `get`, in `get`'s order: a named tuple (`.nngp`, `.ntk`) that
    also takes a name as index (`result["ntk"]`)."""

    __slots__ = ()
    _fields: tuple[str, ...]

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            if key not in self._fields:
                raise KeyError(f"{key!r}: this prediction holds {self._fields} (the names in get=)")
            return getattr(self, key)
        return super().__getitem__(key)


@cache
def _per_get_type(fields: tuple[str, ...]) -> type[PerGet]:
    return type("Gaussians", (PerGet, namedtuple("Gaussians", fields)), {"__slots__": ()})


def per_get(values: dict[str, Any]) -> PerGet:
    """`values` ({name: value}, in `get`'s order) as a `PerGet` named tuple."""
    return _per_get_type(tuple(values))(*values.values())
