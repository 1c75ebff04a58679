"""Shared parts of the benchmarks that time ntklab's analytic kernels against neural-tangents
in the same run: timing neural-tangents' kernel_fn (jit-compiled, or through nt.batch), and the
table (time per kernel entry and peak memory per method, the speed-up over the best nt method,
a check that the methods agree)."""
from __future__ import annotations

import importlib.util
import os
import sys
import time

import numpy as np

# neural-tangents' packages when it lives in a virtualenv of its own (same Python version)
NT_SITE_PACKAGES = os.environ.get("NT_SITE_PACKAGES", "/tmp/ntvenv/lib/python3.11/site-packages")


def find_nt() -> None:
    """Make `neural_tangents` importable: as installed, or from `NT_SITE_PACKAGES` (appended
    to the path, so this environment's own packages, torch and numpy, come first)."""
    if importlib.util.find_spec("neural_tangents") is None and os.path.isdir(NT_SITE_PACKAGES):
        sys.path.append(NT_SITE_PACKAGES)


def time_nt(kernel_fn, x: np.ndarray, batch_size: int | None) -> dict:
    """The NTK of `x` with itself by neural-tangents' `kernel_fn` (float64): jit-compiled for
    all of `x` at once (`batch_size=None`) or through `nt.batch`; the second call is timed
    (the first compiles for these shapes)."""
    find_nt()
    from jax import config
    config.update("jax_enable_x64", True)
    import jax
    import neural_tangents as nt
    if batch_size is None:
        kernel_fn = jax.jit(kernel_fn, static_argnames="get")
    else:
        kernel_fn = nt.batch(kernel_fn, batch_size=batch_size, store_on_device=False)
    np.asarray(kernel_fn(x, None, "ntk"))
    start = time.perf_counter()
    ntk = np.asarray(kernel_fn(x, None, "ntk"))
    return {"seconds": time.perf_counter() - start, "check": float(ntk[:3, :3].sum())}


def header(label_width: int) -> str:
    text = (f"{'case':>{label_width}} | {'ntklab us/entry':>15} {'GiB':>5} | {'nt us/entry':>14} "
            f"{'GiB':>5} | {'nt.batch us/entry':>17} {'GiB':>5} | speed-up vs best nt")
    return text + "\n" + "-" * len(text)


def row(label: str, label_width: int, results: dict[str, dict], n: int) -> str:
    """One line of the table: per method microseconds per entry (N^2 entries) and peak GiB,
    or its error; the speed-up of ntklab over the fastest neural-tangents method."""
    def cell(result, width):
        if result["seconds"] is None:
            return f"{result['error'][:width]:>{width}} {'':5}"
        return f"{result['seconds'] / n ** 2 * 1e6:{width}.1f} {result['peak_gib']:5.2f}"
    ours = results["ntklab"]["seconds"]
    best = min((results[m]["seconds"] for m in ("nt", "nt.batch") if results[m]["seconds"] is not None),
               default=None)
    ratio = f"{best / ours:.1f}x" if ours and best else "-" if ours else "ntklab failed"
    checks = [r["check"] for r in results.values() if r["check"] is not None]
    if len(checks) > 1 and max(checks) - min(checks) > 1e-8 * max(map(abs, checks)):
        ratio += " (VALUES DISAGREE)"
    return (f"{label:>{label_width}} | {cell(results['ntklab'], 15)} | {cell(results['nt'], 14)} | "
            f"{cell(results['nt.batch'], 17)} | {ratio}")


def skipped(reason: str) -> dict:
    return {"seconds": None, "error": reason, "peak_gib": None, "check": None}
