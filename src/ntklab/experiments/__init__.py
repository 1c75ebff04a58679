"""Reproducible experiments, registered by name (`ntklab list`, `ntklab run NAME`)."""
from __future__ import annotations

import inspect
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
        overwrite: bool = False, **options: Any) -> dict[str, Any]:
    """Run experiment `name` into the folder `out` (written atomically).

    `options` (e.g. data, train_size, scheduler) go to experiments that take them;
    options left at None are dropped, any other an experiment does not take is an error."""
    experiment = get(name)
    options = {key: value for key, value in options.items() if value is not None}
    accepted = inspect.signature(experiment.run).parameters
    unknown = sorted(key for key in options if key not in accepted)
    if unknown:
        flags = ", ".join("--" + key.replace("_", "-") for key in unknown)
        raise ValueError(f"experiment {name!r} does not take {flags}")
    with RunFolder(out, overwrite=overwrite) as folder:
        return experiment.run(folder, seed=seed, quick=quick, device=device, **options)


from . import kernel_gd  # noqa: E402,F401  (registers itself)
from . import lazy_training  # noqa: E402,F401
from . import cntk_table  # noqa: E402,F401
from . import sample_complexity  # noqa: E402,F401
from . import transfer  # noqa: E402,F401
from . import sparse_coding  # noqa: E402,F401
from . import finite_width  # noqa: E402,F401
from . import nearly_kernel  # noqa: E402,F401
