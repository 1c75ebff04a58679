"""Choosing the empirical-NTK strategy by counting (`implementation="auto"`).

As neural-tangents' automatic choice (which compares the FLOPs that XLA's cost analysis
reports for each implementation), the choice depends on the model and the shapes only,
never on timings, so the same call makes the same choice and gives bitwise the same
kernel in every run.  The cost of each candidate is counted on the first 2 and 4 samples
of `x1` (as XLA's cost analysis reports FLOPs and bytes): the FLOPs of matrix products and
convolutions by torch's formulas (`torch.utils.flop_counter`), plus the bytes written by
every other operation (elementwise maps, reductions, copies: memory-bound, and without
them a model of LayerNorms would cost nothing), views nothing.  One byte per FLOP keeps
the choices that timings made on the benchmark's networks (structured for MLPs and CNNs,
per-sample Jacobians where nothing is structured) and picks per-sample Jacobians over
NTK-vector products for a LayerNorm model, which they compute 12x faster (N = 512,
mode="full"), where FLOPs alone picked NTK-vector products.  Feature strategies
cost a * (samples) + b * (pairs), fitted through the two counts; NTK-vector products cost
the same per pair of samples (counted on one pair).  The lowest cost wins (ties: the
first of "structured"/"jacobian", then "ntk_vp").  Choices are cached per model (weakly:
the cache never keeps a model alive, and a new model with a recycled `id` is never
confused with an old one).
"""
from __future__ import annotations

import functools
import weakref
from typing import Any, Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import flop_registry

from .structured import Plan

_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict[tuple, str]]" = weakref.WeakKeyDictionary()


_ALIASES = ("_unsafe_view", "_reshape_alias", "alias", "detach", "lift_fresh")   # views too


class _OperationCounter(TorchDispatchMode):
    """Counts the cost of every torch call it sees (below autograd and vmap)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func.overloadpacket)
        if formula is not None:   # matrix products, convolutions: torch's FLOP formulas
            self.count += formula(*args, **kwargs, out_val=out)
        elif not (func.is_view or func.overloadpacket.__name__ in _ALIASES):
            self.count += sum(t.numel() * t.element_size() for t in tree_leaves(out)
                              if isinstance(t, torch.Tensor))
        return out


def count_cost(fn: Callable[[], Any]) -> int:
    """Cost of `fn()`: FLOPs of matrix products and convolutions plus the bytes written by
    any other operation (views: none)."""
    with _OperationCounter() as counter:
        fn()
    return counter.count


def _sizes(x1: torch.Tensor, x2: torch.Tensor | None) -> tuple[int, float]:
    """Samples whose features are made, and pairs contracted (upper triangle for x2=None)."""
    n1 = len(x1)
    return (n1, n1 * (n1 + 1) / 2) if x2 is None else (n1 + len(x2), n1 * len(x2))


def _feature_block(plan: Plan, xs: torch.Tensor, mode: str) -> torch.Tensor:
    """The kernel block of `xs` with itself from its features (a feature strategy's work)."""
    return plan.kernel_block(plan.features(xs), plan.features(xs), mode)


def estimated_cost(x1: torch.Tensor, x2: torch.Tensor | None, mode: str,
                    plans: dict[str, Plan]) -> dict[str, float]:
    """Cost of each plan for the whole kernel at (N1, N2), extrapolated from probes."""
    samples, pairs = _sizes(x1, x2)
    m = 2
    probe = x1[:2 * m]
    costs = {}
    for name, plan in plans.items():
        if name == "ntk_vp":
            costs[name] = count_cost(functools.partial(plan.ntk_vp_block, probe[:1], probe[:1], mode)) * pairs
            continue
        c1, c2 = (count_cost(functools.partial(_feature_block, plan, probe[:size], mode)) for size in (m, 2 * m))
        # features of 2n samples and n^2 pairs per run: c(n) = 2 a n + b n^2
        b = max((c2 - 2 * c1) / (2 * m * m), 0.0)
        a = max((c1 - b * m * m) / (2 * m), 0.0)
        costs[name] = a * samples + b * pairs
    return costs


def choose(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None, mode: str,
           plans: dict[str, Plan]) -> str:
    """The name of the plan with the lowest estimated cost at (N1, N2)."""
    some_plan = next(iter(plans.values()))
    key = (tuple(x1.shape[1:]), *_sizes(x1, x2), mode, tuple(some_plan.chosen), x1.dtype, x1.device)
    cached = _CACHE.setdefault(model, {})
    if key not in cached:
        costs = estimated_cost(x1, x2, mode, plans)
        cached[key] = min(costs, key=costs.__getitem__)   # the first of equal costs
    return cached[key]
