"""Choosing the empirical-NTK strategy by measurement (`implementation="auto"`).

Each candidate is timed on the first 2 and 4 samples of `x1` (fixed probes, so the
only randomness is the timing itself) with `torch.utils.benchmark` (which
synchronizes CUDA), the median of repeated runs.  Feature strategies cost
a * (samples) + b * (pairs), fitted through the two timings; NTK-vector products cost
the same per pair of samples (timed on one pair, and only when a lower bound from the
measured forward time does not already rule them out).  Choices are cached per model
(weakly: the cache never keeps a model alive, and a new model with a recycled `id`
is never confused with an old one).  Pin the strategy with `implementation=` for
bit-reproducible runs.
"""
from __future__ import annotations

import weakref
from typing import Any, Callable

import torch
from torch import nn
from torch.utils import benchmark

from .structured import Plan

_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict[tuple, str]]" = weakref.WeakKeyDictionary()


def median_seconds(fn: Callable[[], Any], min_run_time: float = 0.02) -> float:
    """Median time of `fn()` by `torch.utils.benchmark` (CUDA-synchronized)."""
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def choose(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None, mode: str,
           plans: dict[str, Plan]) -> str:
    """The name of the plan predicted fastest at (N1, N2)."""
    n1 = len(x1)
    samples, pairs = (n1, n1 * (n1 + 1) / 2) if x2 is None else (n1 + len(x2), n1 * len(x2))
    some_plan = next(iter(plans.values()))
    key = (tuple(x1.shape[1:]), samples, pairs, mode, tuple(some_plan.chosen), x1.dtype, x1.device)
    cached = _CACHE.setdefault(model, {})
    if key in cached:
        return cached[key]
    m = 2
    probe = x1[:2 * m]
    costs = {}
    for name, plan in plans.items():   # feature strategies first, then NTK-vector products
        if name == "ntk_vp":
            # a vjp + jvp per output and pair costs at least ~3 O forward passes of a sample
            with torch.no_grad():
                forward = median_seconds(lambda: model(probe)) / len(probe)
                n_out = model(probe[:1]).numel()
            if costs and 3 * n_out * forward * pairs > min(costs.values()):
                continue
            costs[name] = median_seconds(lambda plan=plan: plan.ntk_vp_block(probe[:1], probe[:1], mode)) * pairs
            continue
        run = lambda xs, plan=plan: plan.kernel_block(plan.features(xs), plan.features(xs), mode)  # noqa: E731
        t1, t2 = median_seconds(lambda: run(probe[:m])), median_seconds(lambda: run(probe[:2 * m]))
        # features of 2n samples and n^2 pairs per run: t(n) = 2 a n + b n^2
        b = max((t2 - 2 * t1) / (2 * m * m), 0.0)
        a = max((t1 - b * m * m) / (2 * m), 0.0)
        costs[name] = a * samples + b * pairs
    cached[key] = min(costs, key=costs.get)
    return cached[key]
