"""Local pooling of NCHW images: `AvgPool` and `SumPool` (neural-tangents' `stax.AvgPool`,
`stax.SumPool`), and their infinite-width maps.

Finite layer: `z(i) = c(i) sum_{d in window} h(s i + d - low)` per channel, with `c(i)` =
1 (SumPool), 1/|window| (AvgPool), or 1/(number of non-padding taps) (AvgPool with
`normalize_edges=True`, SAME padding); padding as `ntklab.arch.windows`.

Kernel: pooling has no weights, so unlike a convolution every pair of taps correlates,
    K'[i, j] = c(i) c(j) sum_{d, e} K[s i + d - low, s j + e - low],
a window sum over each pixel index separately.  It needs the covariance of all pixel
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
from .conv import image_state, check_window_fits, pad_images, pair_tuple
from .layer import Layer
from .state import KernelState
from .windows import PADDINGS, window_counts, window_sum


class PoolModule(nn.Module):
    """Finite-width average / sum pooling of NCHW images."""

    def __init__(self, window: tuple[int, int], strides: tuple[int, int], padding: str,
                 kind: str, normalize_edges: bool):
        super().__init__()
        self.window, self.strides, self.padding = window, strides, padding
        self.kind, self.normalize_edges = kind, normalize_edges

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        padded = pad_images(h, self.window, self.strides, self.padding)
        out = F.avg_pool2d(padded, self.window, self.strides)  # zeros counted: 1/|window|
        if self.kind == "sum":
            return out * math.prod(self.window)
        if self.normalize_edges and self.padding == "SAME":
            ones = pad_images(torch.ones_like(h[:1, :1]), self.window, self.strides, self.padding)
            out = out / F.avg_pool2d(ones, self.window, self.strides)
        return out

    def extra_repr(self) -> str:
        return (f"{self.kind}, window={self.window}, strides={self.strides}, "
                f"padding={self.padding!r}, normalize_edges={self.normalize_edges}")


class _Pool(Layer[KernelState, KernelState]):
    takes_images = True
    needs_all_pixel_pairs = True
    kind = "avg"

    def __init__(self, window_shape: Sequence[int], strides: Sequence[int] | None = None,
                 padding: str = "VALID", normalize_edges: bool = False):
        self.window_shape = pair_tuple(window_shape, "window_shape")
        self.strides = pair_tuple(strides, "strides", default=(1, 1))
        self.padding = one_of(str(padding).upper(), "padding", PADDINGS)
        self.normalize_edges = bool(normalize_edges)

    def build(self, in_shape, generator, dtype):
        if len(in_shape) != 3:
            raise ValueError(f"{self!r} pools NCHW images (C, H, W), got inputs of shape "
                             f"{tuple(in_shape)}; use it between convolutions, before the readout")
        spatial = check_window_fits(self, self.window_shape, self.strides, self.padding, in_shape[1:])
        module = PoolModule(self.window_shape, self.strides, self.padding, self.kind,
                            self.normalize_edges)
        return module, (in_shape[0], *spatial)

    def _pool(self, t: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
        """Pool both position indices of a pixel-pair tensor `t` `[..., H, W, H, W]`."""
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
        image_state(k, self)
        if not k.full:
            raise ValueError(f"{self!r} needs the covariance of all pixel pairs: compute the "
                             f"kernel through nk.serial(...).kernel, which tracks them")
        spatial = check_window_fits(self, self.window_shape, self.strides, self.padding, k.spatial)
        pool = lambda t: self._pool(t, k.spatial)  # noqa: E731
        ntk = k.map_ntk(pool)
        var1, var2 = k.map_variances(pool)
        return k.replace(nngp=pool(k.nngp), ntk=ntk, var1=var1, var2=var2, spatial=spatial)


class AvgPool(_Pool):
    """`AvgPool(window_shape, strides=None, padding="VALID", normalize_edges=False)`: the mean
    over each window (neural-tangents' `stax.AvgPool`; `strides=None` is (1, 1), as there).
    `normalize_edges=False` counts SAME padding's zeros (divides by the window size); True
    divides by the number of real pixels in the window.

    Parameters
    ----------
    window_shape : (int, int)
    strides : (int, int), optional
        Default: the window shape.
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
    """`SumPool(window_shape, strides=None, padding="VALID")`: the sum over each window.

    Parameters
    ----------
    window_shape : (int, int)
    strides : (int, int), optional
        Default: the window shape.
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
