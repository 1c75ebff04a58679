"""Run folders: config.json, metrics.csv, figures/*.png, report.md.

A run is written into a hidden staging folder next to its destination and
renamed into place only when complete, so an interrupted run never leaves a
folder that looks whole; each file inside is also written to a temporary name
and renamed (atomic on POSIX).  Resumable intermediate results (kernel stores) live
in the run's `kernels/` folder and survive an interrupted run for the next one."""
from __future__ import annotations

import csv
import io
import json
import os
import platform
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import matplotlib
import numpy as np

from .claims import COLUMNS as CLAIM_COLUMNS
from .._core.files import (atomic_write_bytes, check_writable, discard_folder, make_temporary_folder,
                    remove_stale_staging)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def strict_json(value: Any) -> Any:
    """`value` with every float that is not finite replaced by None (JSON's null), numpy values
    converted, containers walked, and anything else JSON cannot hold as its str."""
    if isinstance(value, np.ndarray | np.generic) or type(value).__module__ == "torch" and hasattr(value, "tolist"):
        value = value.tolist()   # numpy and torch values (a torch NaN became the string "tensor(nan)")
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): strict_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(item) for item in value]
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)


def provenance(device=None) -> dict[str, Any]:
    """Versions and machine of a run (written into every run's config.json)."""
    import torch

    versions: dict[str, str | None] = {}
    for package in ("ntklab", "torch", "numpy", "scipy", "scikit-learn", "matplotlib", "zarr"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    machine: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
               "processor": platform.machine(), "cpus": os.cpu_count(),
               "torch_threads": torch.get_num_threads()}
    if device is not None and getattr(device, "type", None) == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(device)
    return {"versions": versions, "machine": machine}


class RunFolder:
    """Context manager collecting a run's outputs; `out` appears only on success.
    `config` collects what the experiment records beside its settings (the scaffold writes it
    to config.json as "recorded").

    `claims` collects the rows of the run's claims table (`Claim.check`), which the scaffold
    writes into summary.json.

    `out` is checked before any work: it must not exist unless `overwrite`, and its folder
    must exist or be creatable and accept files.  `stores(key)` gives the run's folder of
    resumable intermediate results (`kernels/`, e.g. zarr kernel stores), also inside `out`.
    """

    STORES = "kernels"

    def __init__(self, out: str | Path, *, overwrite: bool = False):
        self.config: dict[str, Any] = {}
        self.claims: list[dict[str, Any]] = []   # rows of Claim.check; the scaffold puts them in summary.json
        self.out = Path(out)
        if self.out.exists() and not overwrite:
            raise ValueError(f"--out {str(self.out)!r} already exists; choose another folder "
                             f"or pass --overwrite to replace it")
        if self.out.exists() and not self.replaceable(self.out):
            raise ValueError(f"--out {str(self.out)!r} exists and is not a run folder (no "
                             f"config.json); --overwrite replaces only the folder of an earlier run "
                             f"(or an empty folder): choose another path")
        check_writable(self.out, "--out")
        self.overwrite, self._borrowed = overwrite, False
        self.stage = make_temporary_folder(self.out.parent, f".{self.out.name}.partial-")

    @staticmethod
    def replaceable(path: Path) -> bool:
        """An earlier run's folder (it holds config.json) or an empty folder."""
        return path.is_dir() and ((path / "config.json").is_file() or not any(path.iterdir()))

    def __enter__(self) -> "RunFolder":
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is not None:   # only the stores stay, for the next run into `out` to resume
            if self._borrowed and self.out.is_dir() and not (self.out / self.STORES).exists():
                (self.stage / self.STORES).replace(self.out / self.STORES)   # the replaced run's
            for entry in self.stage.iterdir():
                if entry.name != self.STORES:
                    shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink()
            if not any(self.stage.iterdir()):
                self.stage.rmdir()
            return
        if self.out.exists():
            discard_folder(self.out)
        os.replace(self.stage, self.out)
        remove_stale_staging(self.out)   # left by runs into the same folder that were killed

    def stores(self, key: Mapping[str, Any]) -> Path:
        """The folder `kernels/` of this run (inside `out`) for resumable intermediate results.

        `key` (JSON) names what determines its contents (inputs, sizes...).  The stores of an
        interrupted run into the same `out` (left in its staging folder), or with `overwrite`
        those of the run being replaced, are taken over when they were made with the same
        key; otherwise the folder starts empty, so stale stores of another configuration are
        never reused (they go with the staging folders and the replaced run).  Call it
        before any work."""
        folder = self.stage / self.STORES
        if folder.is_dir():
            return folder
        record = json.dumps(key, sort_keys=True, default=str)
        replaced = [self.out / self.STORES] if self.overwrite else []
        for candidate in replaced + list(self.out.parent.glob(f".{self.out.name}.partial-*/{self.STORES}")):
            try:
                if (candidate / "key.json").read_text() == record:
                    candidate.replace(folder)
                    self._borrowed = candidate in replaced   # given back if this run fails
                    return folder
            except OSError:   # gone meanwhile (another run took it), or unreadable
                continue
        folder.mkdir()
        atomic_write_bytes(folder / "key.json", record.encode())
        return folder

    def path(self, name: str) -> Path:
        """Where `name` is written: inside the staging folder until the run completes."""
        return self.stage / name

    def write_text(self, name: str, text: str) -> None:
        """Write `text` to `name` in the run folder (atomically)."""
        atomic_write_bytes(self.path(name), text.encode())

    def write_json(self, name: str, obj: Any) -> None:
        """Write `obj` as strict JSON (RFC 8259), indented with sorted keys: NaN and infinities,
        which JSON has no number for, become null; numpy scalars and arrays their values; other
        non-JSON values their str."""
        self.write_text(name, json.dumps(strict_json(obj), indent=2, sort_keys=True, allow_nan=False) + "\n")

    def write_csv(self, name: str, rows: Iterable[Mapping[str, Any]]) -> None:
        """Write dict rows as CSV, the columns in order of first appearance; no rows is an error."""
        rows = list(rows)
        if not rows:
            raise ValueError(f"{name}: no rows to write")
        fields = list(dict.fromkeys(key for row in rows for key in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        self.write_text(name, buffer.getvalue())

    def save_figure(self, name: str, fig: "plt.Figure") -> str:
        """Save to figures/NAME.png; returns the relative path for report.md."""
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
        plt.close(fig)
        relative = f"figures/{name}.png"
        atomic_write_bytes(self.path(relative), buffer.getvalue())
        return relative


def power_guides(ax, x, anchor: float, exponents, *, label: str = "x", styles=(":", "--", "-.")) -> None:
    """Grey guide lines anchor * (x / x[0])^e on a log-log panel, one per exponent, labelled
    `label^e`: the rates a report claims, drawn beside the measurements."""
    x = np.asarray(x, float)
    for exponent, style in zip(exponents, styles[:len(exponents)], strict=True):
        ax.plot(x, anchor * (x / x[0]) ** exponent, color="0.35", ls=style, lw=1.2,
                label=f"{label}^{exponent:g}")


def claims_table(claims: Sequence[Mapping[str, Any]]) -> str:
    """The table each report opens with: the claim, its source, the prediction and tolerance fixed
    before the run, the measurement ± its standard error, the verdict of `claims.verdict` and why
    (rows from `Claim.check`)."""
    return markdown_table(claims, CLAIM_COLUMNS)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, digits: int = 3) -> str:
    """A GitHub-flavoured markdown table of `rows` restricted to `columns` (a `|` inside a
    header or a cell, as in |z| or ||W||, is escaped so that it does not split the cell)."""
    def fmt(value):
        text = f"{value:.{digits}g}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|")
    lines = ["| " + " | ".join(fmt(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value) across seeds."""
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def grouped(rows: Sequence[Mapping[str, Any]], keys: tuple[str, ...]) -> dict[tuple, list]:
    """Rows grouped by the values of `keys`, groups in order of first appearance."""
    groups: dict[tuple, list] = {}
    for row in rows:
        groups.setdefault(tuple(row[key] for key in keys), []).append(row)
    return groups
