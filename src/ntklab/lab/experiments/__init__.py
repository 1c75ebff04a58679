"""Reproducible experiments, registered by name (`ntklab list`, `ntklab run NAME`).

One scaffold for all of them: an experiment is `run(folder, *, seed, quick, device,
**options) -> summary`, registered with the devices it can use.  `run(name, out, ...)`
validates the device and the options, opens the atomic run folder, and writes what
every run has: `config.json` (the scaffold's settings, what the experiment put in
`folder.config`, and the provenance: versions and machine) and `summary.json` (the
returned summary); the experiment writes `metrics.csv`, `figures/*.png` and
`report.md`, and keeps resumable intermediate results (kernel stores) in the run
folder's `kernels/` (`folder.stores(key)`), never beside it."""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..._core.validation import resolve_device
from ..report import RunFolder, provenance


@dataclass(frozen=True)
class Experiment:
    name: str
    summary: str
    run: Callable[..., dict[str, Any]]  # run(folder, *, seed, quick, device, **options) -> summary
    devices: tuple[str, ...] = ("cpu",)  # device types the experiment honours end to end


REGISTRY: dict[str, Experiment] = {}


def register(name: str, summary: str, *, devices: tuple[str, ...] = ("cpu",)):
    def decorate(fn):
        REGISTRY[name] = Experiment(name, summary, fn, devices)
        return fn
    return decorate


def get(name: str) -> Experiment:
    """The registered experiment `name`; ValueError naming the available ones otherwise.

    Parameters
    ----------
    name : str

    Returns
    -------
    Experiment

    Examples
    --------
    >>> from ntklab.lab import experiments
    >>> experiments.get("finite-width").summary
    'Roberts-Yaida-Hanin: NTK fluctuations of deep MLPs, predicted at order L/n'
    """
    if name not in REGISTRY:
        raise ValueError(f"unknown experiment {name!r}; available: {', '.join(sorted(REGISTRY))} "
                         f"(see `ntklab list`)")
    return REGISTRY[name]


def experiment_device(experiment: Experiment, device: str | None) -> torch.device | str:
    """The device the experiment runs on: `None` -> CPU; "auto" -> CPU for a CPU-only
    experiment, else kept as "auto" (resolved where the work runs: CUDA when available,
    e.g. on each Dask worker); an explicit device the experiment cannot honour is
    refused (never silently ignored).
    """
    if device == "auto":
        return "auto" if "cuda" in experiment.devices else torch.device("cpu")
    resolved = resolve_device(device)
    if resolved.type not in experiment.devices:
        raise ValueError(f"experiment {experiment.name!r} runs on {' or '.join(experiment.devices)} "
                         f"only, not --device {device}; drop --device (or use --device auto)")
    return resolved


def run(name: str, out, *, seed: int = 0, quick: bool = False, device: str | None = None,
        overwrite: bool = False, **options: Any) -> dict[str, Any]:
    """Run experiment `name` into the folder `out` (written atomically).

    `options` (e.g. data, train_size, scheduler) go to experiments that take them;
    options left at None are dropped, any other an experiment does not take is an error.

    Parameters
    ----------
    name : str
        A registered experiment (`ntklab list`).
    out : str or Path
        The run folder (must not exist unless `overwrite`; checked before any work: its
        folder must exist or be creatable and accept files).
    seed : int
    quick : bool
        Small settings (seconds).
    device : str, optional
    overwrite : bool
    **options
        Experiment-specific options.

    Returns
    -------
    dict
        The run's summary (also written to summary.json).

    Examples
    --------
    >>> from pathlib import Path
    >>> from ntklab.lab import experiments
    >>> summary = experiments.run("dimension-sweep", "run", quick=True)   # writes the folder run/
    >>> sorted(p.name for p in Path("run").iterdir())
    ['config.json', 'curves.csv', 'figures', 'fits.json', 'metrics.csv', 'report.md', 'summary.json']
    """
    experiment = get(name)
    options = {key: value for key, value in options.items() if value is not None}
    accepted = inspect.signature(experiment.run).parameters
    unknown = sorted(key for key in options if key not in accepted)
    if unknown:
        flags = ", ".join("--" + key.replace("_", "-") for key in unknown)
        raise ValueError(f"experiment {name!r} does not take {flags}")
    resolved = experiment_device(experiment, device)
    with RunFolder(out, overwrite=overwrite) as folder:
        folder.config.update({"experiment": name, "seed": seed, "quick": quick,
                              "device": str(resolved), **options})
        summary = experiment.run(folder, seed=seed, quick=quick, device=resolved, **options)
        folder.write_json("config.json", {**folder.config, "provenance": provenance(resolved)})
        folder.write_json("summary.json", summary)
        return summary


from . import kernel_gd  # noqa: E402,F401  (registers itself)
from . import lazy_training  # noqa: E402,F401
from . import cntk_table  # noqa: E402,F401
from . import sample_complexity  # noqa: E402,F401
from . import transfer  # noqa: E402,F401
from . import sparse_coding  # noqa: E402,F401
from . import finite_width  # noqa: E402,F401
from . import nearly_kernel  # noqa: E402,F401
from . import linearization  # noqa: E402,F401
from . import resnet_kernels  # noqa: E402,F401
from . import overparameterization  # noqa: E402,F401
from . import dimension_sweep  # noqa: E402,F401
from . import ensemble_mean  # noqa: E402,F401
