"""Local pooling of sequences, images and volumes: `AvgPool` and `SumPool` (neural-tangents'
`stax.AvgPool`, `stax.SumPool`) in 1, 2 or 3 spatial dimensions (the length of `window_shape`;
layouts in `arch.spatial`), and their infinite-width maps.

Finite layer: `z(i) = c(i) sum_{d in window} h(s i + d - low)` per channel, with `c(i)` =
1 (SumPool), 1/|window| (AvgPool), or 1/(number of non-padding taps) (AvgPool with
`normalize_edges=True`, SAME padding); padding as `ntklab.arch.windows`.

Kernel: pooling has no weights, so unlike a convolution every pair of taps correlates,
    K'[i, j] = c(i) c(j) sum_{d, e} K[s i + d - low, s j + e - low],
a window sum over each position index separately.  It needs the covariance of all position
pairs (`needs_all_pixel_pairs`), and the state shrinks with the stride.  Pooling is linear:
Gaussian inputs stay Gaussian, and the NTK transforms the same way (no parameters).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._core.validation import one_of
from .layer import Layer
from .spatial import channels_first, check_layout, check_window_fits, pad_spatial, spatial_tuple, split_sample
from .state import KernelState, sample_shape
from .windows import PADDINGS, window_counts, window_sum

AVERAGES = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


class PoolModule(nn.Module):
    """Finite-width average / sum pooling in 1, 2 or 3 spatial dimensions (ntklab's layouts)."""

    def __init__(self, window: tuple[int, ...], strides: tuple[int, ...], padding: str,
                 kind: str, normalize_edges: bool):
        super().__init__()
        self.window, self.strides, self.padding = window, strides, padding
        self.kind, self.normalize_edges = kind, normalize_edges

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        dims = len(self.window)
        h = channels_first(h, dims)
        average = AVERAGES[dims]
        padded = pad_spatial(h, self.window, self.strides, self.padding)
        out = average(padded, self.window, self.strides)  # zeros counted: 1/|window|
        if self.kind == "sum":
            out = out * math.prod(self.window)
        elif self.normalize_edges and self.padding == "SAME":
            ones = pad_spatial(torch.ones_like(h[:1, :1]), self.window, self.strides, self.padding)
            out = out / average(ones, self.window, self.strides)
        return channels_first(out, dims)

    def extra_repr(self) -> str:
        return (f"{self.kind}, window={self.window}, strides={self.strides}, "
                f"padding={self.padding!r}, normalize_edges={self.normalize_edges}")


class _Pool(Layer[KernelState, KernelState]):
    needs_all_pixel_pairs = True
    kind = "avg"

    def __init__(self, window_shape: Sequence[int], strides: Sequence[int] | None = None,
                 padding: str = "VALID", normalize_edges: bool = False):
        self.window_shape = spatial_tuple(window_shape, "window_shape")
        self.dims = len(self.window_shape)
        self.strides = spatial_tuple(strides, "strides", self.dims)
        self.padding = one_of(str(padding).upper(), "padding", PADDINGS)
        self.normalize_edges = bool(normalize_edges)
        self.takes_images, self.takes_sequences = self.dims >= 2, self.dims == 1   # the inputs' layout

    def build(self, in_shape, generator, dtype):
        channels, spatial = split_sample(in_shape)
        check_layout(self, spatial, self.dims)
        out = check_window_fits(self, self.window_shape, self.strides, self.padding, spatial)
        module = PoolModule(self.window_shape, self.strides, self.padding, self.kind,
                            self.normalize_edges)
        return module, sample_shape(channels, out)

    def _pool(self, t: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
        """Pool both position indices of a position-pair tensor `t` `[..., *spatial, *spatial]`."""
        n_spatial = len(spatial)
        for dim, (n, size, stride) in enumerate(zip(spatial, self.window_shape, self.strides, strict=True)):
            for axis in (dim - 2 * n_spatial, dim - n_spatial):
                t = window_sum(t, (axis,), size, stride, self.padding)
                if self.kind == "sum":
                    continue
                if self.normalize_edges and self.padding == "SAME":
                    counts = window_counts(n, size, stride, self.padding).to(t)
                    t = t.div_(counts.reshape((-1,) + (1,) * (-axis - 1)))
                else:
                    t = t.div_(size)
        return t

    def kernel_map(self, k: KernelState) -> KernelState:
        check_layout(self, k.spatial, self.dims)
        if not k.full:
            raise ValueError(f"{self!r} needs the covariance of all position pairs: compute the "
                             f"kernel through nk.serial(...).kernel, which tracks them")
        spatial = check_window_fits(self, self.window_shape, self.strides, self.padding, k.spatial)
        pool = lambda t: self._pool(t, k.spatial)  # noqa: E731
        ntk = k.map_ntk(pool)
        var1, var2 = k.map_variances(pool)
        return k.replace(nngp=pool(k.nngp), ntk=ntk, var1=var1, var2=var2, spatial=spatial)


class AvgPool(_Pool):
    """`AvgPool(window_shape, strides=None, padding="VALID", normalize_edges=False)`: the mean
    over each window (neural-tangents' `stax.AvgPool`; `strides=None` is all ones, as there),
    in 1, 2 or 3 spatial dimensions (the length of `window_shape`: sequences `[N, L, C]`, NCHW
    images, NCDHW volumes).  `normalize_edges=False` counts SAME padding's zeros (divides by
    the window size); True divides by the number of real positions in the window.

    Parameters
    ----------
    window_shape : tuple of 1 to 3 ints
    strides : tuple of ints, optional
        Default: all ones.
    padding : {"VALID", "SAME", "CIRCULAR"}
    normalize_edges : bool
        With "SAME": divide by the number of pixels inside the image (True) or by the window size.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> net = nk.serial(nk.Conv(16, (3, 3)), nk.Relu(), nk.AvgPool((2, 2), strides=(2, 2)),
    ...                 nk.GlobalAvgPool(), nk.Dense(1))
    >>> net.kernel(torch.randn(3, 1, 8, 8, dtype=torch.float64), get="nngp").shape
    torch.Size([3, 3])
    """


class SumPool(_Pool):
    """`SumPool(window_shape, strides=None, padding="VALID")`: the sum over each window, in 1, 2
    or 3 spatial dimensions (as `AvgPool`).

    Parameters
    ----------
    window_shape : tuple of 1 to 3 ints
    strides : tuple of ints, optional
        Default: all ones.
    padding : {"VALID", "SAME", "CIRCULAR"}

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> images = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    >>> net = nk.serial(nk.Conv(8, (3, 3), padding="SAME"), nk.Relu(), nk.SumPool((2, 2), strides=(2, 2)),
    ...                 nk.Flatten())
    >>> net.kernel(images, get="nngp").shape
    torch.Size([3, 3])
    """

    kind = "sum"

    def __init__(self, window_shape: Sequence[int], strides: Sequence[int] | None = None,
                 padding: str = "VALID"):
        super().__init__(window_shape, strides, padding)
