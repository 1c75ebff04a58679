"""Kernels that leave the floating-point range: detected, located and explained.

A deep network multiplies its pre-activation variance by about the same factor at every layer
(for ReLU, W_std² / 2 per Dense + Relu pair: He et al. 2015; in general the slope of the
variance map of Poole et al. 2016).  Away from criticality the variance overflows to inf (and
the correlations to NaN) or underflows to subnormal numbers and then to exact zeros, after a
few hundred layers in float64 and a few dozen in float32.  `Serial.kernel` checks each block's
output with `in_float_range` (one pass over its variances) and, when the check fails, reruns
the block layer by layer (`out_of_range_message`) to say where and why the kernel left the range.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from .._core.transforms import values
from .state import KernelState

if TYPE_CHECKING:
    from .serial import Serial


def _states(state) -> list[KernelState]:
    return state if isinstance(state, list) else [state]


def _variances(state: KernelState) -> list[torch.Tensor]:
    """Each input's per-position variances (the diagonal of an all-pixel-pairs layout)."""
    var1 = state.marginal(state.var1)
    return [var1] if state.symmetric else [var1, state.marginal(state.var2)]


def _tensors(state: KernelState) -> list[torch.Tensor]:
    ntk = [state.ntk] if isinstance(state.ntk, torch.Tensor) else []
    return [state.nngp, *ntk, state.var1, *([] if state.symmetric else [state.var2])]


def _finite(t: torch.Tensor) -> bool:
    """No inf or NaN in `t`: its sum is finite (one reduction, no mask), else entry by entry
    (a sum of finite numbers may itself overflow)."""
    t = values(t)
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def in_float_range(state: KernelState) -> bool:
    """True when every number of the output state is finite and every variance is at least the
    smallest normal number.  A False may still be a correct kernel (an exact zero variance,
    e.g. of an all-zero input with b_std = 0): `out_of_range_message` decides."""
    tiny = torch.finfo(state.nngp.dtype).tiny
    return (all(_finite(t) for t in _tensors(state))
            and all(float(values(v).min()) >= tiny for v in _variances(state)))


class _LeftRange(Exception):
    def __init__(self, layer: int, kind: str):
        super().__init__(kind)
        self.layer, self.kind = layer, kind


def out_of_range_message(net: "Serial", x1: torch.Tensor, x2: torch.Tensor | None, *,
                         need_ntk: bool, full: bool, pattern=None, mask=None) -> str | None:
    """Recompute the block `x1`, `x2` layer by layer and describe the first layer whose output
    overflows (inf), is NaN, or has a variance that underflows (subnormal, or 0 where the
    layer's input variance was positive: every layer that keeps positions apart maps a positive
    variance to a positive one, W_std > 0; a layer mixing positions, e.g. a sum pool, may cancel
    to an exact 0); None when no layer does (zero variances of zero inputs are exact).
    `pattern`, `mask`: the block's graphs and masked positions, as `Serial.inputs_map`."""
    largest: list[tuple[int, float]] = []   # (layer, largest variance of its output)
    positive: list[list[torch.Tensor]] = []  # which samples' variances are positive, per layer

    def check(i: int, state) -> None:
        states = _states(state)
        for s in states:
            if not all(_finite(t) for t in _tensors(s)):
                raise _LeftRange(i, "overflow" if any(bool(values(t).isinf().any()) for t in _tensors(s))
                                 else "nan")
        variances = [v for s in states for v in _variances(s)]
        tiny = torch.finfo(variances[0].dtype).tiny
        per_sample = [v.reshape(len(v), -1).amax(1) for v in variances]   # shapes change with pooling
        mixes = bool(getattr(net.layers[i], "needs_all_pixel_pairs", False))   # pooling: signs may cancel to 0
        lost = (not mixes and positive and len(positive[-1]) == len(variances) and any(
            bool(values(before & (now < tiny)).any()) for before, now in zip(positive[-1], per_sample, strict=True)))
        if lost or any(bool(values((v > 0) & (v < tiny)).any()) for v in variances):
            raise _LeftRange(i, "underflow")   # subnormal, or a positive variance became 0
        positive.append([now > 0 for now in per_sample])
        largest.append((i, max(float(values(v).abs().max()) for v in variances)))

    try:
        with torch.no_grad():
            net.inputs_map(x1, x2, need_ntk=need_ntk, full=full, after_layer=check, pattern=pattern,
                           mask=mask)
    except _LeftRange as found:
        return _explain(net, found, largest, x1.dtype)
    return None


def _explain(net: "Serial", found: _LeftRange, largest: list[tuple[int, float]],
             dtype: torch.dtype) -> str:
    finfo = torch.finfo(dtype)
    layer = net.layers[found.layer]
    affine = next((earlier for earlier in reversed(net.layers[:found.layer + 1])
                   if hasattr(earlier, "W_std")), None)
    where = f"at layer {found.layer}, {layer!r}" + (
        f" (after {affine!r})" if affine is not None and affine is not layer else "")
    history = [(i, v) for i, v in largest if v > 0]
    inputs = ", or rescale the inputs" if found.layer == 0 else ""
    trend = ""
    if len(history) >= 2:
        (i0, v0), (i1, v1) = history[0], history[-1]
        factor = math.exp((math.log(v1) - math.log(v0)) / max(i1 - i0, 1))
        trend = (f": the largest variance went from {v0:.3g} after layer {i0} to {v1:.3g} after "
                 f"layer {i1} (x{factor:.3g} per layer)")
    critical = ("ReLU keeps the variance constant at W_std = sqrt(2); the critical W_std of other "
                "activations is where the variance map has slope 1, Poole et al. 2016")
    if found.kind == "underflow":
        return (f"the kernel underflows {dtype} {where}{trend}; below {finfo.tiny:.3g} its digits "
                f"are lost and it would come out as zeros. Use a larger W_std or b_std ({critical}), "
                f"fewer layers, or nk.LayerNorm() between layers{inputs}")
    what = "overflows to inf" if found.kind == "overflow" else "becomes NaN (an inf or 0/0 inside the layer)"
    return (f"the kernel {what} in {dtype} {where}{trend}; the largest {dtype} number is "
            f"{finfo.max:.3g} and products of variances pass it first. Use a smaller W_std "
            f"({critical}), fewer layers, nk.LayerNorm() between layers"
            + (", or float64 inputs" if dtype != torch.float64 else "") + inputs)
