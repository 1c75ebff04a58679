"""Reproducible experiments, registered by name (`ntklab list`, `ntklab run NAME`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..report import RunFolder


@dataclass(frozen=True)
class Experiment:
    name: str
    summary: str
    run: Callable[..., dict[str, Any]]  # run(out: RunFolder, *, seed, quick, device) -> summary


REGISTRY: dict[str, Experiment] = {}


def register(name: str, summary: str):
    def decorate(fn):
        REGISTRY[name] = Experiment(name, summary, fn)
        return fn
    return decorate


def get(name: str) -> Experiment:
    if name not in REGISTRY:
        raise ValueError(f"unknown experiment {name!r}; available: {', '.join(sorted(REGISTRY))} "
                         f"(see `ntklab list`)")
    return REGISTRY[name]


def run(name: str, out, *, seed: int = 0, quick: bool = False, device: str | None = None,
        overwrite: bool = False) -> dict[str, Any]:
    """Run experiment `name` into the folder `out` (written atomically)."""
    experiment = get(name)
    with RunFolder(out, overwrite=overwrite) as folder:
        return experiment.run(folder, seed=seed, quick=quick, device=device)


from . import kernel_gd  # noqa: E402,F401  (registers itself)
from . import lazy_training  # noqa: E402,F401
