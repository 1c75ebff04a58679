"""Convolutional layers and readouts on sequences, images and volumes, and their
infinite-width maps.

Finite network (neural-tangents' `stax.Conv`, NTK parameterization), in 1, 2 or 3 spatial
dimensions (the length of `filter_shape`; layouts in `arch.spatial`):
    z_c(i) = (W_std / sqrt(C |filter|)) sum_{c', d} W_{c c' d} h_{c'}(s i + d - low) + b_std b_c,
    W, b ~ N(0, 1),
with the sum over the filter offsets `d`; "SAME" pads with zeros (low side (k-1)//2, as
lax and torch), "VALID" does not pad, "CIRCULAR" wraps around (`arch.windows`).

Kernel (Novak et al. 2019; Arora et al. 2019, eq. 7-8): with K(x, x')[i, j] the covariance
of one channel at position i of x and position j of x', a convolution sums the filter's shifts
applied to *both* position indices,
    K'[i, j] = (W_std^2 / |filter|) sum_d K[s i + d, s j + d] + b_std^2,
and the NTK follows `Affine`.  Only same-position pairs K[i, i] are needed when the readout is
`Flatten` (`K_out = mean_i K[i, i]`, neural-tangents' normalisation, matching a Dense on
the flattened features); `GlobalAvgPool` needs every position pair
(`K_out = mean_{i, j} K[i, j]`), so the whole `[P x P]` covariance is carried for each
pair of inputs (see `KernelState`).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
import torch.nn.functional as F

from .._core.validation import one_of, positive_int
from .buffers import in_place_ok, scratch
from .dense import Affine
from .layer import Layer
from .spatial import (NOUNS, channels_first, check_layout, check_window_fits, pad_spatial,
                      spatial_tuple, split_sample)
from .state import KernelState, sample_shape
from .windows import PADDINGS, padding_for, window_sum

CONVOLUTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def layout_hint(dims: int, channels: int | str = "C") -> str:
    """The layout a `dims`-dimensional window layer takes and how to convert the other one."""
    if dims == 1:
        return (f"token sequences [N, L, {channels}] (channels last, as ntklab's sequences and "
                f"neural-tangents); for channels-first [N, C, L] arrays use x.transpose(1, 2)")
    name, axes = ("NCHW images [N, {}, H, W]", "0, 3, 1, 2") if dims == 2 else \
        ("NCDHW volumes [N, {}, D, H, W]", "0, 4, 1, 2, 3")
    return (f"{name.format(channels)} (channels second, torch's layout); for channels-last "
            f"arrays use x.permute({axes})")


def filter_sum(t: torch.Tensor, filter_shape: Sequence[int], padding: str, full: bool,
               strides: Sequence[int] | None = None) -> torch.Tensor:
    """`sum_d t[..., s i + d - low, ...]` over the filter offsets, per spatial dimension
    (`windows.window_sum`).

    `t` is `[..., *spatial]` (same-position pairs) or `[..., *spatial, *spatial]` (`full`: all
    position pairs; each offset shifts both position indices).  The sum is separable: the
    first dimension's offsets first, then the next one's."""
    n_spatial = len(filter_shape)
    strides = (1,) * n_spatial if strides is None else strides
    for dim, (size, stride) in enumerate(zip(filter_shape, strides, strict=True)):
        t = window_sum(t, filter_axes(dim, n_spatial, full), size, stride, padding)
    return t


def filter_axes(dim: int, n_spatial: int, full: bool) -> tuple[int, ...]:
    """The axes of spatial dimension `dim` in a state tensor: one (same-position pairs) or the
    two positions of each pair (`full`), counted from the end."""
    return (dim - 2 * n_spatial, dim - n_spatial) if full else (dim - n_spatial,)


def filter_sum_(t: torch.Tensor, filter_shape: Sequence[int], full: bool) -> torch.Tensor:
    """`filter_sum` of a stride-1 "SAME" filter (output shape = input shape) written over `t`,
    which it consumes: the dimensions' sums go back and forth between `t` and one scratch
    tensor (`buffers.scratch`) instead of a new tensor per dimension; bitwise `filter_sum`'s
    numbers (the same additions in the same order)."""
    n_spatial = len(filter_shape)
    with scratch(t) as (other,):
        source, target = t, other
        for dim, size in enumerate(filter_shape):
            window_sum(source, filter_axes(dim, n_spatial, full), size, 1, "SAME", out=target)
            source, target = target, source
        return source if source is t else t.copy_(source)


class ConvModule(nn.Module):
    """Finite-width convolution in the NTK or standard parameterization, in 1, 2 or 3 spatial
    dimensions (`len(filter_shape)`), on ntklab's layouts (`arch.spatial`); `weight_shape` and
    `bias_shape` (default `[C_out, C_in, *filter_shape]`, `[C_out]`) for the variants that hold
    other parameters (`conv_variants`)."""

    def __init__(self, in_channels: int, out_channels: int, filter_shape: tuple[int, ...],
                 padding: str, W_std: float, b_std: float | None, parameterization: str,
                 generator: torch.Generator, dtype: torch.dtype,
                 strides: tuple[int, ...] = (1, 1), weight_shape: tuple[int, ...] | None = None,
                 bias_shape: tuple[int, ...] | None = None):
        super().__init__()
        self.filter_shape, self.padding, self.strides = filter_shape, padding, strides
        self.W_std, self.b_std, self.parameterization = W_std, b_std, parameterization
        self.in_channels, self.out_channels, self.dims = in_channels, out_channels, len(filter_shape)
        self.fan_in = in_channels * math.prod(filter_shape)
        shape = (out_channels, in_channels, *filter_shape) if weight_shape is None else weight_shape
        weight = torch.randn(shape, generator=generator, dtype=dtype)
        bias = None if b_std is None else torch.randn(bias_shape or (out_channels,), generator=generator,
                                                      dtype=dtype)
        if parameterization == "standard":
            weight *= W_std / math.sqrt(self.fan_in)
            if bias is not None and b_std is not None:
                bias *= b_std
        self.weight = nn.Parameter(weight)
        self.bias = None if bias is None else nn.Parameter(bias)

    @property
    def weight_scale(self) -> float:
        """The factor multiplying the raw weight in the forward pass."""
        return self.W_std / math.sqrt(self.fan_in) if self.parameterization == "ntk" else 1.0

    @property
    def bias_scale(self) -> float:
        return (self.b_std or 0.0) if self.parameterization == "ntk" else 1.0

    @property
    def pads(self) -> tuple[int, int, int, int] | None:
        """Zero padding (left, right, top, bottom) in `F.pad` order when it does not depend on
        the image size (2-D, stride 1, SAME or VALID), else None."""
        if self.dims != 2 or self.strides != (1, 1) or self.padding == "CIRCULAR":
            return None
        (top, bottom, _), (left, right, _) = (padding_for(k, k, 1, self.padding)
                                              for k in self.filter_shape)
        return (left, right, top, bottom)

    def check_input(self, h: torch.Tensor) -> None:
        """Refuse inputs that are not this layer's layout (`arch.spatial`) with its channels."""
        if h.ndim != self.dims + 2 or h.shape[1 if self.dims >= 2 else 2] != self.in_channels:
            raise ValueError(f"this convolution takes {layout_hint(self.dims, self.in_channels)}, got "
                             f"shape {tuple(h.shape)}")

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        self.check_input(h)
        bias = None if self.bias is None else self.bias_scale * self.bias
        h = pad_spatial(channels_first(h, self.dims), self.filter_shape, self.strides, self.padding)
        out = CONVOLUTIONS[self.dims](h, self.weight_scale * self.weight, bias, stride=self.strides)
        return channels_first(out, self.dims)

    def extra_repr(self) -> str:
        return (f"{self.in_channels} -> {self.out_channels}, filter={self.filter_shape}, "
                f"strides={self.strides}, padding={self.padding!r}, W_std={self.W_std}, b_std={self.b_std}, "
                f"parameterization={self.parameterization!r}")


class Conv(Affine):
    """`Conv(out_chan, filter_shape=(3, 3), strides=None, padding="VALID", W_std=1.0, b_std=None,
    parameterization="ntk", trainable=True, in_channels=None)`: neural-tangents' `stax.Conv`
    in 1, 2 or 3 spatial dimensions (the length of `filter_shape`): token sequences `[N, L, C]`
    (channels last, as ntklab's attention and neural-tangents), NCHW images `[N, C, H, W]`,
    NCDHW volumes `[N, C, D, H, W]`; `strides=None` is all ones; padding "SAME", "VALID" or
    "CIRCULAR" (as lax, see `ntklab.arch.windows`).

    `in_channels` (optional, not in neural-tangents): the channels this layer expects;
    given, both the kernel and the finite module refuse inputs with other channels, which
    catches channels-last (NHWC) arrays that happen to look like NCHW ones.

    Parameters
    ----------
    out_chan : int
        Output channels.
    filter_shape : tuple of 1 to 3 ints
        `(L,)`, `(H, W)` or `(D, H, W)`: one entry per spatial dimension.
    strides : tuple of ints, optional
        Default all ones.
    padding : {"VALID", "SAME", "CIRCULAR"}
    W_std, b_std, parameterization, trainable
        As for `Dense`.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> cnn = nk.serial(nk.Conv(32, (3, 3), padding="SAME"), nk.Relu(), nk.Flatten(), nk.Dense(1))
    >>> images = torch.randn(4, 3, 8, 8, dtype=torch.float64)            # NCHW
    >>> cnn.kernel(images, get="ntk").shape, cnn.module((3, 8, 8))(images.float()).shape
    (torch.Size([4, 4]), torch.Size([4, 1]))
    >>> sequences = torch.randn(4, 10, 3, dtype=torch.float64)           # [N, L, C]
    >>> nk.serial(nk.Conv(32, (3,)), nk.Relu(), nk.GlobalAvgPool(), nk.Dense(1)).kernel(sequences).ntk.shape
    torch.Size([4, 4])
    """

    def __init__(self, out_chan: int, filter_shape: Sequence[int] = (3, 3),
                 strides: Sequence[int] | None = None, padding: str = "VALID",
                 W_std: float = 1.0, b_std: float | None = None, parameterization: str = "ntk",
                 trainable: bool = True, in_channels: int | None = None):
        self.out = positive_int(out_chan, f"out_chan (channels of {type(self).__name__})")
        self.in_channels = None if in_channels is None else positive_int(in_channels, "in_channels")
        self.filter_shape = spatial_tuple(filter_shape, "filter_shape")
        self.dims = len(self.filter_shape)
        self.strides = spatial_tuple(strides, "strides", self.dims)
        self.padding = one_of(str(padding).upper(), "padding", PADDINGS)
        super().__init__(W_std, b_std, parameterization, trainable)
        self.terms = math.prod(self.filter_shape)
        self.takes_images, self.takes_sequences = self.dims >= 2, self.dims == 1   # the inputs' layout
        self.position_growth = self.growth()

    def growth(self) -> int:
        """`Layer.position_growth`: a convolution never has more output positions than inputs."""
        return 1

    def _check_channels(self, channels: int, shape: tuple) -> None:
        if self.in_channels is not None and channels != self.in_channels:
            raise ValueError(f"{self!r} takes {NOUNS[self.dims]} with {self.in_channels} channels, got "
                             f"{channels} (shape {shape}); it takes {layout_hint(self.dims)}")

    def check_sample(self, in_shape: Sequence[int]) -> tuple[int, tuple[int, ...]]:
        """`(channels, spatial)` of one input sample of the finite network, checked."""
        channels, spatial = split_sample(in_shape)
        check_layout(self, spatial, self.dims)
        self._check_channels(channels, tuple(in_shape))
        return channels, spatial

    def output_spatial(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """The output's spatial shape for inputs of spatial shape `spatial` (or a ValueError)."""
        return check_window_fits(self, self.filter_shape, self.strides, self.padding, spatial)

    def finite_module(self, channels: int, spatial: tuple[int, ...], generator, dtype) -> nn.Module:
        """The finite layer for inputs of `channels` and spatial shape `spatial`."""
        return ConvModule(channels, self.out, self.filter_shape, self.padding, *self.finite_stds(),
                          self.parameterization, generator, dtype, self.strides)

    def build(self, in_shape, generator, dtype):
        channels, spatial = self.check_sample(in_shape)
        out_spatial = self.output_spatial(spatial)
        module = self.finite_module(channels, spatial, generator, dtype)
        return module.requires_grad_(self.trainable), sample_shape(self.out, out_spatial)

    def sum_inputs(self, t, k):
        """`filter_sum`; in place (`filter_sum_`, the layer consumes its state) where it can be."""
        if self.padding == "SAME" and set(self.strides) == {1} and t.is_contiguous() and in_place_ok(t):
            return filter_sum_(t, self.filter_shape, k.holds_pairs(t))
        return filter_sum(t, self.filter_shape, self.padding, k.holds_pairs(t), self.strides)

    def kernel_map(self, k: KernelState) -> KernelState:
        check_layout(self, k.spatial, self.dims)
        self._check_channels(k.width, k.sample_shape)
        self.output_spatial(k.spatial)
        return super().kernel_map(k)

    def output_state(self, k: KernelState) -> KernelState:
        return k.replace(width=self.out, spatial=tuple(k.var1.shape[1:1 + self.dims]))

    def input_state_shape(self, sample_shape):
        if len(sample_shape) != 3 or self.dims != 2 or self.strides == (1, 1):
            return None
        return (self.out, *self.output_spatial(sample_shape[1:]))

    def input_state(self, x1: torch.Tensor, x2: torch.Tensor | None, *, need_ntk: bool,
                    full: bool) -> KernelState | None:
        """The layer's output state straight from input images, when that is cheaper: with
        P_i(x) the (padded) input patch of output pixel i, C kh kw numbers,
            sum_d K_0[s i + d, s j + d] = P_i(x) . P_j(x') / C,
        so the state is the input state of the patches (`KernelState.from_inputs` divides by
        their length C kh kw) through this layer's affine map with one term.  One GEMM over
        the patches replaces the input's all-position products and the filter's shifted sums;
        used for strided 2-D convolutions, whose input state would be stride^4 times larger than
        their output (3.5x faster on 16x16 RGB images at stride 2; at stride 1 the unfused path
        measured 6-25% faster, benchmarks/bench_architectures.py)."""
        shape = self.input_state_shape(tuple(x1.shape[1:]))
        if shape is None:
            return None
        channels, out_spatial = x1.shape[1], shape[1:]
        self._check_channels(channels, tuple(x1.shape[1:]))

        def patches(x: torch.Tensor) -> torch.Tensor:
            padded = pad_spatial(x, self.filter_shape, self.strides, self.padding)
            unfolded = F.unfold(padded, self.filter_shape, stride=self.strides)
            return unfolded.reshape(len(x), channels * self.terms, *out_spatial)

        state = KernelState.from_inputs(patches(x1), None if x2 is None else patches(x2),
                                        need_ntk=need_ntk, full=full)
        return self.output_state(self.affine_map(state, 1, lambda t: t))


def same_position_pairs(k: KernelState) -> KernelState:
    """The same-position layout (nngp `[N1, N2, *spatial]`, var1 `[N1, *spatial]`) of an image or
    sequence state: `k` itself, or the diagonal of its all-position-pairs layout (`full`)."""
    if not k.full:
        return k
    n_spatial, positions = len(k.spatial), math.prod(k.spatial)

    def diagonal(t: torch.Tensor) -> torch.Tensor:
        pairs = t.reshape(*t.shape[:-2 * n_spatial], positions, positions)
        return pairs.diagonal(0, -2, -1).reshape(*t.shape[:-2 * n_spatial], *k.spatial)

    var1, var2 = k.map_variances(lambda var: diagonal(var) if k.holds_pairs(var) else var)
    return k.replace(nngp=diagonal(k.nngp), ntk=k.map_ntk(diagonal), var1=var1, var2=var2,
                     full=False, same_position_variances=False)


def flatten_state(k: KernelState) -> KernelState:
    """`Flatten`'s map of an image or sequence state `k`: the flattened vector's state, the mean
    over same-position pairs, which keeps the same-position layout of `k` as its `positions`
    (for a following activation, LayerNorm or product, which act on each position first)."""
    inner = same_position_pairs(k)
    mean = lambda t: t.flatten(-len(inner.spatial)).mean(-1)  # noqa: E731
    var1, var2 = inner.map_variances(mean)
    return inner.replace(nngp=mean(inner.nngp), ntk=inner.map_ntk(mean), var1=var1, var2=var2,
                         width=inner.width * math.prod(inner.spatial), spatial=(), positions=inner)


class FlattenModule(nn.Module):
    """[N, ...] -> [N, prod(...)]: each sample's features in one vector."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.flatten(1)


class GlobalAvgPoolModule(nn.Module):
    """Mean (or sum, `total`) over the positions of NCHW images (`dims` (2, 3)), NCDHW volumes
    (`dims` (2, 3, 4)) or token sequences `[N, T, C]` (`dims` (1,))."""

    def __init__(self, dims: tuple[int, ...], total: bool = False):
        super().__init__()
        self.dims, self.total = dims, total

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.sum(dim=self.dims) if self.total else h.mean(dim=self.dims)

    def extra_repr(self) -> str:
        return f"dims={self.dims}, {'sum' if self.total else 'mean'}"


class Flatten(Layer[KernelState, KernelState]):
    """`Flatten()`: [N, C, H, W] -> [N, C*H*W] (the "vanilla" readout, CNN-V / CNTK-V); as well
    sequences [N, L, C] -> [N, L*C] and volumes [N, C, D, H, W] -> [N, C*D*H*W].

    Kernel: `K_out = mean_i K[i, i]` over same-pixel pairs (neural-tangents divides by
    H*W; Arora et al. sum, a constant factor that kernel regression does not see).  The
    state keeps the same-pixel pairs (`KernelState.positions`): an activation, LayerNorm,
    FanInSum or FanInProd after `Flatten` acts on each pixel (token) pair before the mean, as
    the finite network, where `Flatten` then `Relu` is `Relu` then `Flatten`.  On vectors
    `Flatten` is the identity.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> images = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    >>> nk.serial(nk.Conv(8, (3, 3)), nk.Relu(), nk.Flatten(), nk.Dense(1)).kernel(images, get="ntk").shape
    torch.Size([3, 3])
    """

    mask_rule = "flatten"

    def build(self, in_shape, generator, dtype):
        return FlattenModule(), (math.prod(in_shape),)

    def kernel_map(self, k: KernelState) -> KernelState:
        """Vectors pass unchanged; images and sequences give `flatten_state(k)`."""
        return flatten_state(k) if k.spatial else k


class GlobalAvgPool(Layer[KernelState, KernelState]):
    """`GlobalAvgPool()`: NCHW images [N, C, H, W] -> [N, C], the mean over pixels (CNN-GAP /
    CNTK-GAP); token sequences [N, T, C] -> [N, C], the mean over tokens; volumes
    [N, C, D, H, W] -> [N, C], the mean over voxels.

    Kernel: `K_out = mean_{i, j} K[i, j]` over all position pairs, which needs the full
    `[P x P]` covariance of every pair of inputs through all the layers before it.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> images = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    >>> net = nk.serial(nk.Conv(8, (3, 3), padding="SAME"), nk.Relu(), nk.GlobalAvgPool(), nk.Dense(1))
    >>> net.kernel(images, get="ntk").shape
    torch.Size([3, 3])
    """

    needs_all_pixel_pairs = True
    total = False
    mask_rule = "mean"
    same_position_variances = True   # (its output variance is then not the pooled one: KernelState)

    def build(self, in_shape, generator, dtype):
        channels, spatial = split_sample(in_shape)
        if not spatial:
            raise ValueError(f"{self!r} pools sequences (L, C), images (C, H, W) or volumes "
                             f"(C, D, H, W), got vectors of shape {tuple(in_shape)}; remove it or "
                             f"move it before the Flatten/readout")
        dims = (1,) if len(spatial) == 1 else tuple(range(2, 2 + len(spatial)))
        return GlobalAvgPoolModule(dims, self.total), (channels,)

    def kernel_map(self, k: KernelState) -> KernelState:
        if not k.spatial:
            raise ValueError(f"{self!r} pools sequences, images or volumes but gets vectors; "
                             f"remove it or move it before the Flatten/readout")
        if not k.full:
            raise ValueError(f"{self!r} needs the covariance of all position pairs: compute the "
                             f"kernel through nk.serial(...).kernel, which tracks them")
        positions, n_spatial = math.prod(k.spatial), len(k.spatial)
        # the mean over all position pairs; sum = positions * mean in every copy: K scales by positions^2
        scale = float(positions) ** 2 if self.total else 1.0
        # (variances on same positions only: their mean, read by range checks only, see KernelState)
        pool = lambda t: t.flatten(-(2 if k.holds_pairs(t) else 1) * n_spatial).mean(-1).mul_(scale)  # noqa: E731
        var1, var2 = k.map_variances(pool)
        return k.replace(nngp=pool(k.nngp), ntk=k.map_ntk(pool), var1=var1, var2=var2,
                         spatial=(), full=False, same_position_variances=False)


class GlobalSumPool(GlobalAvgPool):
    """`GlobalSumPool()`: the sum over pixels (or tokens) instead of the mean; the kernel is
    `GlobalAvgPool`'s times (number of positions)^2.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> images = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    >>> avg = nk.serial(nk.Conv(8, (3, 3)), nk.Relu(), nk.GlobalAvgPool()).kernel(images, get="nngp")
    >>> total = nk.serial(nk.Conv(8, (3, 3)), nk.Relu(), nk.GlobalSumPool()).kernel(images, get="nngp")
    >>> bool(torch.allclose(total, 4 * avg))    # 2x2 output positions: the sum is 2x2 times the mean
    False
    """

    total = True
    mask_rule = "sum"
