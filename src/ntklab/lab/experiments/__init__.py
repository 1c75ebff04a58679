"""Reproducible experiments, registered by name (`ntklab list`, `ntklab run NAME`).

One scaffold for all of them.  An experiment is a function
`run(folder, cfg, *, seed, device, **options) -> summary`, registered with
`register(name, summary, config=Config, devices=...)`, where `Config` is a frozen dataclass of
its settings (defaults: the full run) with a classmethod `quick()` (small settings).  The
scaffold (`run(name, out, ...)`) owns what every run shares:

* the settings: `Config.quick()` or `Config()`, then the user's `config={field: value}`
  (`ntklab run NAME --set field=value`), each checked against the field's annotation; a claim
  (a field annotated `Claim`: statement, prediction, tolerance, source, fixed before the run) is
  changed by a mapping of some of its fields (`--set FIELD='{"prediction": 3}'`);
* the claims table's rows (`folder.claims`, from `Claim.check`): written into summary.json
  under "claims" (statement, source, prediction, tolerance, measured, se, verdict, why);
* the device and the experiment's options (refused when the experiment cannot honour them);
* the atomic run folder, the timing (`seconds` in summary.json, and the last line of report.md),
  `config.json` (the experiment, seed, quick, device, options, the settings as used, the
  fields set by the user, what the experiment recorded in `folder.config`, and the provenance:
  versions and machine) and `summary.json` (the returned summary).

The experiment computes (through `lab.studies`) and writes `metrics.csv`, `figures/*.png` and
`report.md`, and keeps resumable intermediate results (kernel stores) in the run folder's
`kernels/` (`folder.stores(key)`), never beside it."""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import time
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from ..._core.validation import resolve_device
from ..claims import Claim
from ..report import RunFolder, provenance

SCAFFOLD_KEYWORDS = ("seed", "device")
"""The keywords every experiment's `run` takes; any other keyword-only one is an option (`--data` ...)."""


@dataclass(frozen=True)
class Experiment:
    """A registered experiment: `run(folder, cfg, *, seed, device, **options) -> summary`, its
    settings class `config` (a dataclass with `quick()`), and the device types it honours."""

    name: str
    summary: str
    run: Callable[..., dict[str, Any]]
    config: type[Any]   # a dataclass with a classmethod quick()
    devices: tuple[str, ...] = ("cpu",)  # device types the experiment honours end to end

    def options(self) -> tuple[str, ...]:
        """The experiment-specific keyword-only arguments of `run` (e.g. data, scheduler)."""
        return tuple(name for name, parameter in inspect.signature(self.run).parameters.items()
                     if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name not in SCAFFOLD_KEYWORDS)


REGISTRY: dict[str, Experiment] = {}


def register(name: str, summary: str, *, config: type, devices: tuple[str, ...] = ("cpu",)):
    """Decorator registering `run(folder, cfg, *, seed, device, **options)` as experiment `name`
    with the settings dataclass `config` (its defaults the full run, `config.quick()` small)."""
    if not (dataclasses.is_dataclass(config) and callable(getattr(config, "quick", None))):
        raise TypeError(f"experiment {name!r}: config must be a dataclass with a quick() classmethod")

    def decorate(fn):
        REGISTRY[name] = Experiment(name, summary, fn, config, devices)
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


class _Mismatch(Exception):
    """A value that does not fit a settings field's annotation (reported by `settings`)."""


def _fit(value: Any, hint: Any) -> Any:
    """`value` converted to the annotation `hint` (bool, int, float, str, tuple[X, ...] (not
    empty), fixed tuples, dict[K, V], unions with None): JSON lists become tuples, ints become
    floats where a float is asked for; anything else raises _Mismatch."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            try:
                return _fit(value, arg)
            except _Mismatch:
                continue
    elif origin in (tuple, dict):
        return _fit_container(value, origin, typing.get_args(hint))
    elif hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif hint in (bool, int, str, type(None)) and type(value) is hint:   # True is not an int setting
        return value
    raise _Mismatch


def _fit_container(value: Any, origin: type, args: tuple) -> Any:
    """`_fit` for dict[K, V], tuple[X, ...] and fixed-length tuples, item by item."""
    if origin is dict and isinstance(value, dict):
        return {_fit(key, args[0]): _fit(item, args[1]) for key, item in value.items()}
    if origin is tuple and isinstance(value, (list, tuple)):
        if len(args) == 2 and args[1] is Ellipsis and value:   # a sweep over nothing is no setting
            return tuple(_fit(item, args[0]) for item in value)
        if len(args) == len(value):
            return tuple(_fit(item, arg) for item, arg in zip(value, args, strict=True))
    raise _Mismatch


def _describe(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def settings(experiment: Experiment, *, quick: bool = False, config: Mapping[str, Any] | None = None):
    """The settings of a run: `experiment.config.quick()` (or the defaults) with the fields of
    `config` replaced; an unknown field or a value of the wrong type is a ValueError naming the
    field, its type and the experiment's fields."""
    base = experiment.config.quick() if quick else experiment.config()
    if config is not None and not isinstance(config, Mapping):
        raise ValueError(f"config must be a mapping of settings to values, e.g. {{'seeds': 2}}; got {config!r}")
    overrides = dict(config or {})
    hints = typing.get_type_hints(experiment.config)
    names = [field.name for field in dataclasses.fields(base)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ValueError(f"experiment {experiment.name!r} has no setting {', '.join(map(repr, unknown))}; "
                         f"its settings are {', '.join(names)} (--set FIELD=VALUE)")
    for name, value in overrides.items():
        if hints[name] is Claim:   # a mapping of the claim's fields to change (a prediction fixed before the run)
            try:
                overrides[name] = getattr(base, name).replaced(value)
            except ValueError as error:
                raise ValueError(f"claim {name!r} of experiment {experiment.name!r}: {error}") from None
            continue
        try:
            overrides[name] = _fit(value, hints[name])
        except _Mismatch:
            current = json.dumps(getattr(base, name), default=str, separators=(",", ":"))
            raise ValueError(f"setting {name!r} of experiment {experiment.name!r} must be "
                             f"{_describe(hints[name])} (e.g. --set {name}={current}), got {value!r}") from None
    return dataclasses.replace(base, **overrides)


def experiment_device(experiment: Experiment, device: str | None) -> torch.device | str:
    """The device the experiment runs on: `None` -> CPU; "auto" -> CPU for a CPU-only
    experiment, else kept as "auto" (resolved where the work runs: CUDA when available,
    e.g. on each Dask worker); an explicit device the experiment cannot honour is
    refused (never silently ignored)."""
    if device == "auto":
        return "auto" if "cuda" in experiment.devices else torch.device("cpu")
    resolved = resolve_device(device)
    if resolved.type not in experiment.devices:
        raise ValueError(f"experiment {experiment.name!r} runs on {' or '.join(experiment.devices)} "
                         f"only, not --device {device}; drop --device (or use --device auto)")
    return resolved


def _checked_options(experiment: Experiment, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options given (None dropped); one the experiment does not take is a ValueError."""
    given = {key: value for key, value in options.items() if value is not None}
    unknown = sorted(set(given) - set(experiment.options()))
    if unknown:
        flags = ", ".join("--" + key.replace("_", "-") for key in unknown)
        raise ValueError(f"experiment {experiment.name!r} does not take {flags}")
    return given


@contextlib.contextmanager
def _threads(count: int | None):
    """Torch's thread count set to `count` for the block (None: unchanged), restored afterwards.
    Quick runs use one thread: their times then hold on a busy machine, where torch's threads spin
    on each other (the tests run that way too)."""
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run(name: str, out, *, seed: int = 0, quick: bool = False, device: str | None = None,
        overwrite: bool = False, config: Mapping[str, Any] | None = None,
        **options: Any) -> dict[str, Any]:
    """Run experiment `name` into the folder `out` (written atomically).

    Every argument is checked before any work: the settings (`config`), the options, the
    device and the output folder.

    Parameters
    ----------
    name : str
        A registered experiment (`ntklab list`).
    out : str or Path
        The run folder (must not exist unless `overwrite`; its folder must exist or be
        creatable and accept files).
    seed : int
    quick : bool
        Start from the small settings `Config.quick()` (seconds) instead of the defaults, on one
        torch thread (restored afterwards).
    device : str, optional
    overwrite : bool
    config : mapping, optional
        Settings to change, field -> value (`ntklab run NAME --set field=value`); lists are
        taken as tuples.  Unknown fields and values of the wrong type are refused.
    **options
        Experiment-specific options (e.g. data, train_size, scheduler); options left at None
        are dropped, any other an experiment does not take is an error.

    Returns
    -------
    dict
        The run's summary with its `seconds` (also written to summary.json).

    Examples
    --------
    >>> from pathlib import Path
    >>> from ntklab.lab import experiments
    >>> summary = experiments.run("dimension-sweep", "run", quick=True)   # writes the folder run/
    >>> sorted(p.name for p in Path("run").iterdir())   # doctest: +NORMALIZE_WHITESPACE
    ['config.json', 'extrapolation.csv', 'figures', 'fits.json', 'metrics.csv', 'n_half.csv',
     'report.md', 'summary.json']
    """
    experiment = get(name)
    cfg = settings(experiment, quick=quick, config=config)
    options = _checked_options(experiment, options)
    resolved = experiment_device(experiment, device)
    with RunFolder(out, overwrite=overwrite) as folder:
        started = time.perf_counter()
        with _threads(1 if quick else None):
            summary = experiment.run(folder, cfg, seed=seed, device=resolved, **options)
        seconds = round(time.perf_counter() - started, 1)
        if "seconds" in summary:
            raise RuntimeError(f"experiment {name!r} returned its own 'seconds'; the scaffold times runs")
        summary = {**summary, "seconds": seconds}
        if folder.claims:
            summary["claims"] = [{key: row[key] for key in ("claim", "source", "verdict", "why")} | row["numbers"]
                                 for row in folder.claims]
        folder.write_json("config.json", {
            "experiment": name, "seed": seed, "quick": quick, "device": str(resolved), "options": options,
            "config": dataclasses.asdict(cfg), "set": dict(config or {}), "recorded": folder.config,
            "provenance": provenance(resolved)})
        folder.write_json("summary.json", summary)
        if folder.path("report.md").is_file():
            report = folder.path("report.md").read_text()
            folder.write_text("report.md", report.rstrip("\n") + f"\n\nTime: {seconds:.0f} s.\n")
        return summary


from . import kernel_gd  # noqa: E402,F401  (each registers itself)
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
