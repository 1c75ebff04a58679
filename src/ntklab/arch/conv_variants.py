"""Transposed and locally connected convolutions (neural-tangents' `stax.ConvTranspose` and
`stax.ConvLocal`) in 1, 2 or 3 spatial dimensions, and their infinite-width maps.

ConvTranspose (`lax.conv_transpose`): the input is dilated by the strides (stride - 1 zeros
between positions), padded (`windows.transpose_padding`) and convolved with stride 1, so
    K'[o, o'] = (W_std^2 / |filter|) sum_d U[o + d, o' + d] + b_std^2,
with U the covariance of the dilated, padded input (zero where either position is a zero);
"CIRCULAR" folds the "VALID" output onto `n stride` positions per axis (`windows.fold`), as
neural-tangents.  Its fan-in is `C |filter|`, as neural-tangents (each output sees about
|filter| / stride of them).

ConvLocal (locally connected; Novak et al. 2019, sec. 5.1): the weights and biases differ at
every output position, so outputs at two different positions are independent:
    K'[i, j] = delta_ij ((W_std^2 / |filter|) sum_d K[s i + d, s i + d] + b_std^2),
only the same-position pairs of the input reach the output, and a following pooling layer sees
a diagonal position covariance (neural-tangents' `_conv_kernel_full_spatial_unshared`).
"""
from __future__ import annotations

import itertools
import math
from typing import Sequence

import torch
from torch import nn

from .conv import CONVOLUTIONS, Conv, ConvModule, same_position_pairs
from .spatial import channels_first, pad_spatial
from .state import KernelState
from .windows import dilate, fold, strided, transpose_output_size, transpose_padding, transposed_window_sum


class ConvTransposeModule(ConvModule):
    """Finite-width transposed convolution (`lax.conv_transpose`'s padding)."""

    pads = None   # not a plain convolution of padded inputs (`kernels.structured` reads it)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        self.check_input(h)
        h = channels_first(h, self.dims)
        n_in = h.shape[2:]
        padding = "VALID" if self.padding == "CIRCULAR" else self.padding
        for i, (size, stride) in enumerate(zip(self.filter_shape, self.strides, strict=True)):
            h = dilate(h, 2 + i, stride, *transpose_padding(size, stride, padding))
        out = CONVOLUTIONS[self.dims](h, self.weight_scale * self.weight)
        if self.padding == "CIRCULAR":
            for i, (n, stride) in enumerate(zip(n_in, self.strides, strict=True)):
                out = fold(out, 2 + i, n * stride)
        if self.bias is not None:
            out = out + (self.bias_scale * self.bias).reshape(-1, *(1,) * self.dims)
        return channels_first(out, self.dims)


class ConvLocalModule(ConvModule):
    """Finite-width locally connected layer: weights `[P, C_out, C_in |filter|]` and biases
    `[C_out, *out_spatial]`, one set per output position (P of them)."""

    pads = None   # not a plain convolution of padded inputs (`kernels.structured` reads it)

    def __init__(self, in_channels: int, out_channels: int, out_spatial: tuple[int, ...],
                 filter_shape: tuple[int, ...], padding: str, W_std: float, b_std: float | None,
                 parameterization: str, generator: torch.Generator, dtype: torch.dtype,
                 strides: tuple[int, ...]):
        super().__init__(in_channels, out_channels, filter_shape, padding, W_std, b_std,
                         parameterization, generator, dtype, strides,
                         weight_shape=(math.prod(out_spatial), out_channels,
                                       in_channels * math.prod(filter_shape)),
                         bias_shape=(out_channels, *out_spatial))

    def patches(self, h: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """`[N, C |filter|, P]`, the input patch of every output position (channel-major, then
        the filter offsets in row-major order), from strided slices (vmap-friendly, unlike
        `Tensor.unfold`, for the empirical NTK's per-sample Jacobians), and the output's spatial shape."""
        h = pad_spatial(channels_first(h, self.dims), self.filter_shape, self.strides, self.padding)
        out_spatial = [(n - k) // s + 1 for n, k, s in zip(h.shape[2:], self.filter_shape, self.strides,
                                                           strict=True)]
        shifted = []
        for offset in itertools.product(*map(range, self.filter_shape)):
            window = h
            for axis, (start, count, stride) in enumerate(zip(offset, out_spatial, self.strides, strict=True), 2):
                window = strided(window, axis, start, count, stride)
            shifted.append(window)
        return torch.stack(shifted, 2).flatten(1, 2).flatten(2), out_spatial

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        self.check_input(h)
        patches, out_spatial = self.patches(h)
        out = torch.einsum("nfp,pof->nop", patches, self.weight_scale * self.weight)
        out = out.reshape(len(h), -1, *out_spatial)
        if self.bias is not None:
            out = out + self.bias_scale * self.bias
        return channels_first(out, self.dims)


class ConvTranspose(Conv):
    """`ConvTranspose(out_chan, filter_shape=(3, 3), strides=None, padding="VALID", W_std=1.0,
    b_std=None, parameterization="ntk", trainable=True, in_channels=None)`: neural-tangents'
    `stax.ConvTranspose` (the transpose of a strided convolution: it upsamples by the strides),
    in 1, 2 or 3 spatial dimensions, layouts and arguments as `Conv`.  Output size per axis:
    `n stride` (SAME, CIRCULAR) or `n stride + max(filter - stride, 0)` (VALID).

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> net = nk.serial(nk.ConvTranspose(16, (3, 3), strides=(2, 2), padding="SAME"), nk.Relu(),
    ...                 nk.GlobalAvgPool(), nk.Dense(1))
    >>> net.kernel(torch.randn(3, 2, 4, 4, dtype=torch.float64), get="ntk").shape
    torch.Size([3, 3])
    >>> net.module((2, 4, 4))[0](torch.randn(1, 2, 4, 4)).shape        # upsampled 4x4 -> 8x8
    torch.Size([1, 16, 8, 8])
    """

    def growth(self) -> int:
        """Per axis n stride positions, + max(filter - stride, 0) <= n max(filter - stride, 0)
        for VALID: at most the output of one position, n times."""
        return math.prod(self.output_spatial((1,) * self.dims))

    def output_spatial(self, spatial: Sequence[int]) -> tuple[int, ...]:
        return tuple(transpose_output_size(n, f, s, self.padding)
                     for n, f, s in zip(spatial, self.filter_shape, self.strides, strict=True))

    def finite_module(self, channels, spatial, generator, dtype) -> nn.Module:
        return ConvTransposeModule(channels, self.out, self.filter_shape, self.padding,
                                   *self.finite_stds(), self.parameterization, generator, dtype,
                                   self.strides)

    same_position_variances = False   # (sum_inputs reads k.full for every tensor)

    def sum_inputs(self, t, k):
        n_spatial = self.dims
        for dim, (size, stride) in enumerate(zip(self.filter_shape, self.strides, strict=True)):
            axes = (dim - 2 * n_spatial, dim - n_spatial) if k.full else (dim - n_spatial,)
            t = transposed_window_sum(t, axes, size, stride, self.padding)
        return t

    def input_state_shape(self, sample_shape):
        return None


class ConvLocal(Conv):
    """`ConvLocal(out_chan, filter_shape=(3, 3), strides=None, padding="VALID", W_std=1.0,
    b_std=None, parameterization="ntk", trainable=True, in_channels=None)`: neural-tangents'
    `stax.ConvLocal`, a locally connected layer (a convolution whose weights and biases differ
    at every output position), in 1, 2 or 3 spatial dimensions, layouts and arguments as `Conv`.

    Its kernel keeps only same-position pairs: with a `Flatten` readout it equals `Conv`'s
    (Novak et al. 2019: weight sharing does not change CNN-V's kernel); with pooling after it,
    the positions are independent (a diagonal position covariance).

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> x = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    >>> local = nk.serial(nk.ConvLocal(8, (3, 3)), nk.Relu(), nk.Flatten(), nk.Dense(1)).kernel(x, get="ntk")
    >>> shared = nk.serial(nk.Conv(8, (3, 3)), nk.Relu(), nk.Flatten(), nk.Dense(1)).kernel(x, get="ntk")
    >>> bool(torch.allclose(local, shared))
    True
    """

    def finite_module(self, channels, spatial, generator, dtype) -> nn.Module:
        return ConvLocalModule(channels, self.out, self.output_spatial(spatial), self.filter_shape,
                               self.padding, *self.finite_stds(), self.parameterization, generator,
                               dtype, self.strides)

    same_position_variances = False   # (places its states' variances on the all-pairs diagonal)

    def kernel_map(self, k: KernelState) -> KernelState:
        """Same-position pairs: `Conv`'s map; all position pairs: `Conv`'s map of the same-position
        pairs, placed on the diagonal (zero between different positions)."""
        if not k.full:
            return super().kernel_map(k)
        return on_diagonal(super().kernel_map(same_position_pairs(k)))

    def input_state_shape(self, sample_shape):
        return None


def on_diagonal(k: KernelState) -> KernelState:
    """The all-position-pairs layout of a same-position state `k` whose different positions are
    independent: `t[..., i, j] = delta_ij t[..., i]`."""
    n_spatial = len(k.spatial)

    def embed(t: torch.Tensor) -> torch.Tensor:
        batch = t.shape[:-n_spatial]
        return torch.diag_embed(t.flatten(-n_spatial)).reshape(*batch, *k.spatial, *k.spatial)

    var1, var2 = k.map_variances(embed)
    return k.replace(nngp=embed(k.nngp), ntk=k.map_ntk(embed), var1=var1, var2=var2, full=True)
