"""Sliding windows over the spatial axes of kernel tensors: the one primitive behind the
infinite-width maps of convolutions (strided, SAME / VALID / CIRCULAR) and of pooling.

Padding follows lax / neural-tangents: for a window of `size` taps and `stride`,
  * "VALID":    no padding, `n_out = (n_in - size) // stride + 1`;
  * "SAME":     `n_out = ceil(n_in / stride)`, zeros padded, `total = max((n_out - 1) stride
                + size - n_in, 0)` split as `low = total // 2` before and the rest after;
  * "CIRCULAR": the SAME amounts, padded by wrapping around (the input is a torus).
Output position `o` reads input positions `o * stride + d - low`, `d = 0..size-1`.
"""
from __future__ import annotations

from typing import Sequence

import torch

PADDINGS = ("SAME", "VALID", "CIRCULAR")


def padding_for(n_in: int, size: int, stride: int, padding: str) -> tuple[int, int, int]:
    """`(low, high, n_out)`: the padding before and after one spatial axis, and its output size."""
    if padding == "VALID":
        return 0, 0, (n_in - size) // stride + 1
    n_out = -(-n_in // stride)
    total = max((n_out - 1) * stride + size - n_in, 0)
    return total // 2, total - total // 2, n_out


def output_size(n_in: int, size: int, stride: int, padding: str) -> int:
    """Positions of a window layer's output along one axis (`padding_for`'s third number)."""
    return padding_for(n_in, size, stride, padding)[2]


def _wrap(t: torch.Tensor, axis: int, low: int, high: int) -> torch.Tensor:
    """Circular padding of one axis: `low` entries from its end before, `high` from its start after."""
    n = t.shape[axis]
    parts = [t.narrow(axis, n - low, low)] if low else []
    parts.append(t)
    if high:
        parts.append(t.narrow(axis, 0, high))
    return torch.cat(parts, axis) if len(parts) > 1 else t


def strided(t: torch.Tensor, axis: int, start: int, count: int, stride: int) -> torch.Tensor:
    """`count` entries of `axis` from `start` every `stride` (a view)."""
    index = [slice(None)] * t.ndim
    index[axis] = slice(start, start + (count - 1) * stride + 1, stride)
    return t[tuple(index)]


def window_sum(t: torch.Tensor, axes: Sequence[int], size: int, stride: int = 1,
               padding: str = "VALID", out: torch.Tensor | None = None) -> torch.Tensor:
    """`out[o] = sum_d t[o * stride + d - low]`, the index shifted **jointly** on every axis of
    `axes` (all of the same length): one axis sums a window (pooling); two axes, the two
    positions of a pixel pair, sum the diagonal shifts `K[i + d, j + d]` of a convolution.

    Zero padding contributes nothing; the offsets are added in a fixed order starting from
    the one that reaches every output (no zero fill), so the diagonal of a pair-layout result
    equals, bitwise, the same-position result.  `out` (contiguous, of the result's shape, not
    overlapping `t`; padding "SAME" or "VALID") receives the sum instead of a new tensor."""
    axes = [axis % t.ndim for axis in axes]
    n_in = t.shape[axes[0]]
    low, high, n_out = padding_for(n_in, size, stride, padding)
    if padding == "CIRCULAR":
        for axis in axes:
            t = _wrap(t, axis, low, high)
        n_in, low = n_in + low + high, 0
    result: torch.Tensor | None = None
    for offset in (low, *range(low), *range(low + 1, size)):  # offset `low` reaches all outputs
        shift = offset - low  # input index = output index * stride + shift
        first = max(0, -(shift // stride))  # first output whose input index is >= 0
        stop = min(n_out, (n_in - 1 - shift) // stride + 1)
        if stop <= first:
            continue
        source = t
        for axis in axes:
            source = strided(source, axis, first * stride + shift, stop - first, stride)
        if result is None:
            result = source.clone(memory_format=torch.contiguous_format) if out is None else out.copy_(source)
            continue
        target = result
        for axis in axes:
            target = target.narrow(axis, first, stop - first)
        target.add_(source)
    if result is None:   # no output (n_out = 0): the empty sum
        shape = list(t.shape)
        for axis in axes:
            shape[axis] = max(n_out, 0)
        return t.new_zeros(shape)
    return result


def window_counts(n_in: int, size: int, stride: int, padding: str) -> torch.Tensor:
    """Number of real (not zero-padded) inputs in each output window, float64 `[n_out]`."""
    low, _, n_out = padding_for(n_in, size, stride, padding)
    if padding != "SAME":
        return torch.full((n_out,), float(size), dtype=torch.float64)
    starts = torch.arange(n_out, dtype=torch.float64) * stride - low
    return (starts + size).clamp(max=n_in) - starts.clamp(min=0)


def transpose_padding(size: int, stride: int, padding: str) -> tuple[int, int]:
    """`(low, high)` zeros around the stride-dilated input of a transposed convolution, as
    `lax.conv_transpose` (jax's `_conv_transpose_padding`); CIRCULAR pads as VALID and then
    folds (`fold`), as neural-tangents."""
    if padding == "SAME":
        total = size + stride - 2
        low = size - 1 if stride > size - 1 else -(-total // 2)
    else:
        total = size + stride - 2 + max(size - stride, 0)
        low = size - 1
    return low, total - low


def transpose_output_size(n_in: int, size: int, stride: int, padding: str) -> int:
    """Positions of a transposed convolution's output along one axis: `n_in * stride` (SAME,
    CIRCULAR), `n_in * stride + max(size - stride, 0)` (VALID)."""
    return n_in * stride + (max(size - stride, 0) if padding == "VALID" else 0)


def dilate(t: torch.Tensor, axis: int, stride: int, low: int, high: int) -> torch.Tensor:
    """`t` along `axis` with `stride - 1` zeros between entries, `low` zeros before and `high` after."""
    axis %= t.ndim
    n = t.shape[axis]
    shape = list(t.shape)
    shape[axis] = (n - 1) * stride + 1 + low + high
    out = t.new_zeros(shape)
    strided(out, axis, low, n, stride).copy_(t)
    return out


def fold(t: torch.Tensor, axis: int, n_out: int) -> torch.Tensor:
    """Circular folding of `axis` onto `n_out` positions, centred as neural-tangents'
    `_same_pad_for_filter_shape_transpose`: `out[o] = sum_m t[m]` over `m = o + start (mod
    n_out)`, `start = (len - n_out) // 2`."""
    axis %= t.ndim
    n = t.shape[axis]
    index = (torch.arange(n, device=t.device) - (n - n_out) // 2) % n_out
    shape = list(t.shape)
    shape[axis] = n_out
    return t.new_zeros(shape).index_add_(axis, index, t)


def transposed_window_sum(t: torch.Tensor, axes: Sequence[int], size: int, stride: int,
                          padding: str) -> torch.Tensor:
    """The window sum of a transposed convolution, the index shifted jointly on `axes` as in
    `window_sum`: `out[o] = sum_d u[o + d]` with `u` the input dilated by `stride` and padded
    (`transpose_padding`), i.e. input `i` reaches outputs `o = i stride + low - d`; CIRCULAR
    folds the VALID result onto `n_in * stride` positions on each axis (`fold`)."""
    n_in = t.shape[axes[0]]
    low, high = transpose_padding(size, stride, "VALID" if padding == "CIRCULAR" else padding)
    for axis in axes:
        t = dilate(t, axis, stride, low, high)
    t = window_sum(t, axes, size)
    if padding == "CIRCULAR":
        for axis in axes:
            t = fold(t, axis, n_in * stride)
    return t
