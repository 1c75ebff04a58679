"""Layouts of spatial data for the window layers (convolutions, pooling) in 1, 2 and 3 dimensions.

ntklab's layouts (`state.sample_shape`): token sequences `[N, L, C]` (channels last, as
ntklab's attention and neural-tangents' NWC), images `[N, C, H, W]` and volumes
`[N, C, D, H, W]` (channels second, torch's layout).  The finite modules compute channels-first
(`channels_first` swaps a sequence's axes on the way in and out); the kernel state is the same for
every layout (`KernelState.spatial`).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .._core.validation import positive_int
from .windows import output_size, padding_for

LAYOUTS = {1: "token sequences [N, L, C]", 2: "images [N, C, H, W]", 3: "volumes [N, C, D, H, W]"}
NOUNS = {1: "sequences", 2: "images", 3: "volumes"}


def describe(spatial: Sequence[int]) -> str:
    """What a representation with spatial shape `spatial` is, for messages."""
    return "vectors" if not spatial else f"{LAYOUTS[len(spatial)]} of spatial shape {tuple(spatial)}"


def spatial_tuple(value, name: str, dims: int | None = None) -> tuple[int, ...]:
    """A tuple of 1 to 3 positive integers, one per spatial dimension (`filter_shape`,
    `strides`, `window_shape`); `dims` given: exactly that many, and None is all ones."""
    if value is None and dims is not None:
        return (1,) * dims
    shape = tuple(value) if isinstance(value, (tuple, list)) else ()
    if not 1 <= len(shape) <= 3 or (dims is not None and len(shape) != dims):
        expected = f"{dims} positive integer(s)" if dims else "1 to 3 positive integers"
        raise ValueError(f"{name} must be a tuple of {expected}, one per spatial dimension "
                         f"((L,) for sequences, (H, W) for images, (D, H, W) for volumes), got {value!r}")
    return tuple(positive_int(size, name) for size in shape)


def split_sample(shape: Sequence[int]) -> tuple[int, tuple[int, ...]]:
    """`(channels, spatial)` of one sample's shape in ntklab's layouts (`state.sample_shape`)."""
    if len(shape) >= 3:
        return shape[0], tuple(shape[1:])
    return shape[-1], tuple(shape[:-1])


def check_layout(layer, spatial: Sequence[int], dims: int) -> None:
    """Refuse a representation that is not `dims`-dimensional (`layer` acts on those only)."""
    if len(spatial) != dims:
        raise ValueError(f"{layer!r} acts on {LAYOUTS[dims]} ({dims}-D: the length of its filter or "
                         f"window shape) but gets {describe(spatial)}; give it one entry per spatial "
                         f"dimension of its inputs, or move it before the Flatten/GlobalAvgPool readout")


def channels_first(h: torch.Tensor, dims: int) -> torch.Tensor:
    """Token sequences `[N, L, C]` as `[N, C, L]` and back (a transpose, its own inverse); images
    and volumes are channels-first already."""
    return h.transpose(1, 2) if dims == 1 else h


def pad_spatial(h: torch.Tensor, window: Sequence[int], strides: Sequence[int],
                padding: str) -> torch.Tensor:
    """Pad channels-first `h` `[N, C, *spatial]` as `windows.padding_for` says: zeros (SAME),
    wrapped (CIRCULAR), none (VALID)."""
    if padding == "VALID":
        return h
    pads: list[int] = []
    for n, k, s in reversed(list(zip(h.shape[2:], window, strides, strict=True))):   # F.pad: last axis first
        low, high, _ = padding_for(n, k, s, padding)
        pads += [low, high]
    return F.pad(h, pads, mode="circular" if padding == "CIRCULAR" else "constant")


def check_window_fits(layer, window: Sequence[int], strides: Sequence[int], padding: str,
                      spatial: Sequence[int]) -> tuple[int, ...]:
    """The output spatial shape of a window layer, or a ValueError naming the layer and the fix."""
    if padding == "VALID" and any(f > s for f, s in zip(window, spatial, strict=True)):
        raise ValueError(f"{layer!r}: window {tuple(window)} is larger than the {tuple(spatial)} "
                         f"{NOUNS[len(spatial)]} reaching it with padding='VALID'; use padding='SAME', a smaller "
                         f"window, or fewer VALID/strided layers before it")
    if padding == "CIRCULAR" and any(max(padding_for(n, f, s, padding)[:2]) > n
                                     for n, f, s in zip(spatial, window, strides, strict=True)):
        raise ValueError(f"{layer!r}: circular padding of {tuple(spatial)} {NOUNS[len(spatial)]} by a window "
                         f"{tuple(window)} wraps more than once; use a smaller window")
    return tuple(output_size(n, f, s, padding) for n, f, s in zip(spatial, window, strides, strict=True))
