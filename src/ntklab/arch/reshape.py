"""Layers that move positions without mixing channels: `Index` (neural-tangents' `stax.Index`
with the `Slice` helper) and `ImageResize` (`stax.ImageResize`, after `jax.image.resize`).

Each output position is a fixed linear combination of input positions, one matrix R_a
[out, in] per spatial axis a, the same for every channel: h'[c, p] = sum_q R[p, q] h[c, q]
with R the product of the axes' matrices.  Channels stay independent, so the kernel of every
pair of positions is
    K'[p, p'] = sum_{q, q'} R[p, q] R[p', q'] K[q, q']
(NNGP, NTK and the variances alike; no parameters).  A selection (each row of R one-hot:
slicing, nearest-neighbour resizing) maps same-position pairs to same-position pairs; any other
R needs every pair of positions (`needs_all_pixel_pairs`).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .._core.validation import one_of, positive_int
from .layer import Layer
from .state import KernelState

RESIZE_METHODS = ("linear", "nearest")


def _apply_axis(t: torch.Tensor, matrix: torch.Tensor, axis: int) -> torch.Tensor:
    """sum_q matrix[p, q] t[..., q (at `axis`), ...]."""
    return torch.tensordot(t.movedim(axis, -1), matrix.to(t), dims=([t.ndim - 1], [1])).movedim(-1, axis)


def _is_selection(matrix: torch.Tensor) -> bool:
    return bool(((matrix == 0) | (matrix == 1)).all() and (matrix.sum(1) == 1).all())


def map_positions(k: KernelState, matrices: Sequence[torch.Tensor | None], layer: Layer) -> KernelState:
    """The state after h'[c, p] = sum_q R[p, q] h[c, q] (module docstring), `matrices[a]` the
    matrix of spatial axis a (None: unchanged)."""
    n_spatial = len(k.spatial)
    if not k.full and not all(m is None or _is_selection(m) for m in matrices):
        raise ValueError(f"{layer!r} mixes positions and needs every pair of positions; the "
                         f"architecture keeps same-position pairs only")

    def apply(t: torch.Tensor) -> torch.Tensor:
        for axis, matrix in enumerate(matrices):
            if matrix is None:
                continue
            first = t.ndim - (2 if k.full else 1) * n_spatial + axis
            for position_axis in ((first, first + n_spatial) if k.full else (first,)):
                t = _apply_axis(t, matrix, position_axis)
        return t

    spatial = tuple(s if m is None else m.shape[0] for s, m in zip(k.spatial, matrices, strict=True))
    var1, var2 = k.map_variances(apply)
    return k.replace(nngp=apply(k.nngp), ntk=k.map_ntk(apply), var1=var1, var2=var2, spatial=spatial,
                     positions=None)


class PositionsModule(nn.Module):
    """Finite network of `map_positions`: the matrices applied to the spatial axes `axes`."""

    def __init__(self, matrices: Sequence[torch.Tensor | None], axes: Sequence[int]):
        super().__init__()
        self.matrices, self.axes = list(matrices), tuple(axes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for matrix, axis in zip(self.matrices, self.axes, strict=True):
            if matrix is not None:
                h = _apply_axis(h, matrix, axis)
        return h


def spatial_axes(sample_shape: Sequence[int]) -> tuple[int, ...]:
    """The spatial axes of a batch of samples of `sample_shape`: (2, 3) for NCHW images, (1,)
    for token sequences `[N, T, C]`, () for vectors."""
    return (2, 3) if len(sample_shape) == 3 else (1,) if len(sample_shape) == 2 else ()


class _Slice:
    """`nk.Slice[...]` is the index written between the brackets, for `Index` (as
    neural-tangents' `stax.Slice`): `nk.Slice[:, :, 1:5, ::2]` is
    `(slice(None), slice(None), slice(1, 5), slice(None, None, 2))`."""

    def __getitem__(self, idx: Any) -> Any:
        return idx


Slice = _Slice()


class Index(Layer[KernelState, KernelState]):
    """`Index(idx)`: `x[idx]` of the batch (neural-tangents' `stax.Index`; write `idx` with
    `nk.Slice`, e.g. `nk.Index(nk.Slice[:, :, 1:5, ::-1])`), in torch's layout: NCHW images
    `[N, C, H, W]`, token sequences `[N, T, C]`.

    Slices of the spatial axes (any start, stop and step) select positions; the batch and the
    channel axes (infinitely many channels at infinite width) take `:` only, and integers (which
    would remove a spatial axis) are refused, as neural-tangents' kernel refuses them.  Kernel:
    the selected positions' entries (`map_positions` with selection matrices).  Not in the
    `--arch` grammar (slices are not literals).

    Parameters
    ----------
    idx : slice, Ellipsis or tuple of them
        The index, as `nk.Slice[...]` writes it.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    >>> crop = nk.serial(nk.Conv(8, (3, 3), padding="SAME"), nk.Index(nk.Slice[:, :, :4, 2:]),
    ...                  nk.Flatten(), nk.Dense(1))
    >>> crop.module((3, 6, 6))(x.float()).shape, crop.kernel(x, get="nngp").shape
    (torch.Size([2, 1]), torch.Size([2, 2]))
    """

    def __init__(self, idx: Any):
        self.idx = idx if isinstance(idx, tuple) else (idx,)
        for item in self.idx:
            if not (item is Ellipsis or isinstance(item, slice)):
                raise ValueError(f"Index takes slices and ... (write idx with nk.Slice[...]), got "
                                 f"{item!r}; an integer would remove an axis, which the kernel cannot "
                                 f"follow: use a slice of length one such as 2:3")
            if isinstance(item, slice) and not all(v is None or isinstance(v, int) and not isinstance(v, bool)
                                                   for v in (item.start, item.stop, item.step)):
                raise ValueError(f"Index slices take integer bounds, got {item!r}")
        if sum(item is Ellipsis for item in self.idx) > 1:
            raise ValueError(f"Index takes at most one ..., got {self.idx!r}")

    def _per_axis(self, sample_shape: Sequence[int]) -> list[slice]:
        """One slice per axis of the batch `(N, *sample_shape)`."""
        ndim = 1 + len(sample_shape)
        items = list(self.idx)
        if Ellipsis in items:
            at = items.index(Ellipsis)
            items[at:at + 1] = [slice(None)] * (ndim - len(items) + 1)
        if len(items) > ndim:
            raise ValueError(f"idx {self.idx!r} has {len(items)} axes but the batch has {ndim} "
                             f"(N, {', '.join(map(str, sample_shape))})")
        return items + [slice(None)] * (ndim - len(items))

    def _matrices(self, sample_shape: Sequence[int]) -> list[torch.Tensor | None]:
        """Selection matrices of the spatial axes; refuses indexing other axes."""
        per_axis, spatial = self._per_axis(sample_shape), spatial_axes(sample_shape)
        for axis, item in enumerate(per_axis):
            if axis not in spatial and item != slice(None):
                what = "the batch axis" if axis == 0 else "the channel axis"
                raise ValueError(f"Index cannot select along {what} (axis {axis}, {item!r}): at infinite "
                                 f"width the channels are infinitely many and the kernel pairs every "
                                 f"sample; index the spatial axes {spatial} only")
        matrices: list[torch.Tensor | None] = []
        for axis in spatial:
            size = (1, *sample_shape)[axis]
            chosen = range(size)[per_axis[axis]]
            if len(chosen) == 0:
                raise ValueError(f"idx {self.idx!r} selects no position of axis {axis} (size {size})")
            matrices.append(None if per_axis[axis] == slice(None) else
                            torch.eye(size, dtype=torch.float64)[list(chosen)])
        return matrices

    def build(self, in_shape, generator, dtype):
        matrices = self._matrices(in_shape)
        return PositionsModule(matrices, spatial_axes(in_shape)), _output_shape(in_shape, matrices)

    def kernel_map(self, k: KernelState) -> KernelState:
        return map_positions(k, self._matrices(k.sample_shape), self)


def _output_shape(in_shape: Sequence[int], matrices: Sequence[torch.Tensor | None]) -> tuple[int, ...]:
    shape = list(in_shape)
    for axis, matrix in zip(spatial_axes(in_shape), matrices, strict=True):
        if matrix is not None:
            shape[axis - 1] = matrix.shape[0]
    return tuple(shape)


def resize_matrix(in_size: int, out_size: int, method: str, antialias: bool) -> torch.Tensor:
    """The [out, in] matrix of `jax.image.resize` along one axis (jax's `compute_weight_mat`
    for "linear", with `scale = out / in`: the triangle kernel, widened by in / out when
    downsampling with `antialias`, weights normalized to sum 1; for "nearest" the input
    position floor((p + 1/2) in / out))."""
    if method == "nearest":
        chosen = np.floor((np.arange(out_size) + 0.5) * in_size / out_size).astype(int)
        return torch.eye(in_size, dtype=torch.float64)[chosen.tolist()]
    inverse = in_size / out_size
    kernel_scale = max(inverse, 1.0) if antialias else 1.0
    sample = (np.arange(out_size) + 0.5) * inverse - 0.5
    weights = np.maximum(0.0, 1.0 - np.abs(sample[:, None] - np.arange(in_size)[None, :]) / kernel_scale)
    total = weights.sum(1, keepdims=True)
    weights = np.where(np.abs(total) > 1000 * np.finfo(np.float32).eps,
                       weights / np.where(total != 0, total, 1), 0.0)
    inside = (sample >= -0.5) & (sample <= in_size - 0.5)
    return torch.as_tensor(np.where(inside[:, None], weights, 0.0))


class ImageResize(Layer[KernelState, KernelState]):
    """`ImageResize(shape, method, antialias=True)`: resize NCHW images to spatial `shape`
    (H', W') as `jax.image.resize` (neural-tangents' `stax.ImageResize`, whose `shape` is the
    whole NHWC shape; here the spatial one), by the methods neural-tangents supports for kernels:
    "linear" (bilinear; with `antialias` the filter widens when downsampling) and "nearest".

    Kernel: `map_positions` with the per-axis interpolation matrices; "linear" mixes positions,
    so an architecture with it carries every pair of positions (`needs_all_pixel_pairs`).

    Parameters
    ----------
    shape : (int, int)
        Output height and width.
    method : {"linear", "nearest"}
    antialias : bool
        Widen the linear filter when downsampling (jax's default).

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    >>> up = nk.serial(nk.Conv(8, (3, 3), padding="SAME"), nk.ImageResize((6, 6), "linear"),
    ...                nk.Relu(), nk.GlobalAvgPool(), nk.Dense(1))
    >>> up.kernel(x, get="ntk").shape
    torch.Size([2, 2])
    """

    takes_images = True

    def __init__(self, shape: Sequence[int], method: str, antialias: bool = True):
        if not isinstance(shape, (tuple, list)) or len(shape) != 2:
            raise ValueError(f"ImageResize shape must be the output (height, width), got {shape!r}")
        self.shape = tuple(positive_int(s, "shape") for s in shape)
        self.method = one_of(method, "method", RESIZE_METHODS)
        self.antialias = bool(antialias)
        self.needs_all_pixel_pairs = method == "linear"

    def _matrices(self, spatial: Sequence[int]) -> list[torch.Tensor | None]:
        if len(spatial) != 2:
            raise ValueError(f"ImageResize acts on NCHW images, got samples of spatial shape {tuple(spatial)}")
        return [None if n == m else resize_matrix(n, m, self.method, self.antialias)
                for n, m in zip(spatial, self.shape, strict=True)]

    def build(self, in_shape, generator, dtype):
        matrices = self._matrices(in_shape[1:])
        return PositionsModule(matrices, (2, 3)), (in_shape[0], *self.shape)

    def kernel_map(self, k: KernelState) -> KernelState:
        return map_positions(k, self._matrices(k.spatial), self)

