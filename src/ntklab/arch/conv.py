"""Convolutional layers and readouts on NCHW images, and their infinite-width maps.

Finite network (neural-tangents' `stax.Conv`, NTK parameterization):
    z_c(i) = (W_std / sqrt(C kh kw)) sum_{c', d} W_{c c' d} h_{c'}(i + d) + b_std b_c,  W, b ~ N(0, 1),
with the sum over the filter offsets `d`; "SAME" pads with zeros (low side (k-1)//2, as
lax and torch), "VALID" does not pad.

Kernel (Novak et al. 2019; Arora et al. 2019, eq. 7-8): with K(x, x')[i, j] the covariance
of one channel at pixel i of x and pixel j of x', a convolution sums the filter's shifts
applied to *both* pixel indices,
    K'[i, j] = (W_std^2 / (kh kw)) sum_d K[i + d, j + d] + b_std^2,
and the NTK follows `Affine`.  Only same-pixel pairs K[i, i] are needed when the readout is
`Flatten` (`K_out = mean_i K[i, i]`, neural-tangents' normalisation, matching a Dense on
the C*H*W flattened features); `GlobalAvgPool` needs every pixel pair
(`K_out = mean_{i, j} K[i, j]`), so the whole `[HW x HW]` covariance is carried for each
pair of images (see `KernelState`).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
import torch.nn.functional as F

from .._core.validation import one_of, positive_int
from .dense import Affine
from .layer import Layer
from .state import KernelState
from .windows import PADDINGS, output_size, padding_for, window_sum


def filter_sum(t: torch.Tensor, filter_shape: Sequence[int], padding: str, full: bool,
               strides: Sequence[int] | None = None) -> torch.Tensor:
    """`sum_d t[..., s i + d - low, s j + d - low]` over the filter offsets, per spatial dimension
    (`windows.window_sum`).

    `t` is `[..., H, W]` (same-pixel pairs) or `[..., H, W, H, W]` (`full`: all pixel
    pairs; each offset shifts both pixel indices).  The sum is separable: height
    offsets first, then width offsets."""
    n_spatial = len(filter_shape)
    strides = (1,) * n_spatial if strides is None else strides
    for dim, (size, stride) in enumerate(zip(filter_shape, strides, strict=True)):
        axes = (dim - 2 * n_spatial, dim - n_spatial) if full else (dim - n_spatial,)
        t = window_sum(t, axes, size, stride, padding)
    return t


def pad_images(h: torch.Tensor, window: Sequence[int], strides: Sequence[int],
               padding: str) -> torch.Tensor:
    """Pad NCHW images as `windows.padding_for` says: zeros (SAME), wrapped (CIRCULAR), none (VALID)."""
    if padding == "VALID":
        return h
    (top, bottom, _), (left, right, _) = (padding_for(n, k, s, padding) for n, k, s in
                                          zip(h.shape[2:], window, strides, strict=True))
    return F.pad(h, (left, right, top, bottom), mode="circular" if padding == "CIRCULAR" else "constant")


class ConvModule(nn.Module):
    """Finite-width 2-D convolution in the NTK or standard parameterization (NCHW)."""

    def __init__(self, in_channels: int, out_channels: int, filter_shape: tuple[int, int],
                 padding: str, W_std: float, b_std: float | None, parameterization: str,
                 generator: torch.Generator, dtype: torch.dtype,
                 strides: tuple[int, int] = (1, 1)):
        super().__init__()
        self.filter_shape, self.padding, self.strides = filter_shape, padding, strides
        self.W_std, self.b_std, self.parameterization = W_std, b_std, parameterization
        self.fan_in = in_channels * math.prod(filter_shape)
        weight = torch.randn(out_channels, in_channels, *filter_shape, generator=generator,
                             dtype=dtype)
        bias = None if b_std is None else torch.randn(out_channels, generator=generator, dtype=dtype)
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
        the image size (stride 1, SAME or VALID), else None."""
        if self.strides != (1, 1) or self.padding == "CIRCULAR":
            return None
        (top, bottom, _), (left, right, _) = (padding_for(k, k, 1, self.padding)
                                              for k in self.filter_shape)
        return (left, right, top, bottom)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if h.ndim != 4 or h.shape[1] != self.weight.shape[1]:
            raise ValueError(f"this convolution takes NCHW images [N, {self.weight.shape[1]}, H, W] "
                             f"(channels second, torch's layout), got shape {tuple(h.shape)}; for "
                             f"channels-last arrays use x.permute(0, 3, 1, 2)")
        bias = None if self.bias is None else self.bias_scale * self.bias
        h = pad_images(h, self.filter_shape, self.strides, self.padding)
        return F.conv2d(h, self.weight_scale * self.weight, bias, stride=self.strides)

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[1]} -> {self.weight.shape[0]}, filter={self.filter_shape}, "
                f"strides={self.strides}, padding={self.padding!r}, W_std={self.W_std}, b_std={self.b_std}, "
                f"parameterization={self.parameterization!r}")


def image_state(k: KernelState, layer: Layer) -> None:
    """Refuse a state that is not an image's (`layer` acts on images only)."""
    if len(k.spatial) != 2:
        raise ValueError(f"{layer!r} acts on images [N, C, H, W] but gets vectors; pass image "
                         f"batches (NCHW) and put convolutions before Flatten/GlobalAvgPool")


def pair_tuple(value, name: str, default: tuple[int, int] | None = None) -> tuple[int, int]:
    """A (height, width) pair of positive integers (`filter_shape`, `strides`, `window_shape`)."""
    if value is None and default is not None:
        return default
    shape = tuple(value) if isinstance(value, (tuple, list)) else ()
    if len(shape) != 2:
        raise ValueError(f"{name} must be a pair (height, width) of positive integers, got {value!r}")
    return positive_int(shape[0], name), positive_int(shape[1], name)


def check_window_fits(layer: Layer, window: Sequence[int], strides: Sequence[int], padding: str,
                      spatial: Sequence[int]) -> tuple[int, ...]:
    """The output spatial shape of a window layer, or a ValueError naming the layer and the fix."""
    if padding == "VALID" and any(f > s for f, s in zip(window, spatial, strict=True)):
        raise ValueError(f"{layer!r}: window {tuple(window)} is larger than the {tuple(spatial)} "
                         f"images reaching it with padding='VALID'; use padding='SAME', a smaller "
                         f"window, or fewer VALID/strided layers before it")
    if padding == "CIRCULAR" and any(max(padding_for(n, f, s, padding)[:2]) > n
                                     for n, f, s in zip(spatial, window, strides, strict=True)):
        raise ValueError(f"{layer!r}: circular padding of {tuple(spatial)} images by a window "
                         f"{tuple(window)} wraps more than once; use a smaller window")
    return tuple(output_size(n, f, s, padding) for n, f, s in zip(spatial, window, strides, strict=True))


class Conv(Affine):
    """`Conv(out_chan, filter_shape=(3, 3), strides=None, padding="VALID", W_std=1.0, b_std=None,
    parameterization="ntk", trainable=True, in_channels=None)`: neural-tangents' `stax.Conv`
    on NCHW images; `strides=None` is (1, 1); padding "SAME", "VALID" or "CIRCULAR" (as lax,
    see `ntklab.arch.windows`).

    `in_channels` (optional, not in neural-tangents): the channels this layer expects;
    given, both the kernel and the finite module refuse inputs with other channels, which
    catches channels-last (NHWC) arrays that happen to look like NCHW ones.

    Parameters
    ----------
    out_chan : int
        Output channels.
    filter_shape : (int, int)
        Filter height and width.
    strides : (int, int), optional
        Default (1, 1).
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
    """

    takes_images = True

    def __init__(self, out_chan: int, filter_shape: Sequence[int] = (3, 3),
                 strides: Sequence[int] | None = None, padding: str = "VALID",
                 W_std: float = 1.0, b_std: float | None = None, parameterization: str = "ntk",
                 trainable: bool = True, in_channels: int | None = None):
        self.out = positive_int(out_chan, "out_chan (channels of Conv)")
        self.in_channels = None if in_channels is None else positive_int(in_channels, "in_channels")
        self.filter_shape = pair_tuple(filter_shape, "filter_shape")
        self.strides = pair_tuple(strides, "strides", default=(1, 1))
        self.padding = one_of(str(padding).upper(), "padding", PADDINGS)
        super().__init__(W_std, b_std, parameterization, trainable)
        self.terms = math.prod(self.filter_shape)

    def _check_channels(self, channels: int, shape: tuple) -> None:
        if self.in_channels is not None and channels != self.in_channels:
            raise ValueError(f"{self!r} takes images with {self.in_channels} channels, got "
                             f"{channels} (shape {shape}); images are NCHW, channels second "
                             f"(torch's layout): for channels-last arrays use x.permute(0, 3, 1, 2)")

    def build(self, in_shape, generator, dtype):
        if len(in_shape) != 3:
            raise ValueError(f"{self!r} needs image inputs (C, H, W), got shape {tuple(in_shape)}")
        self._check_channels(in_shape[0], tuple(in_shape))
        spatial = check_window_fits(self, self.filter_shape, self.strides, self.padding, in_shape[1:])
        module = ConvModule(in_shape[0], self.out, self.filter_shape, self.padding,
                            *self.finite_stds(), self.parameterization, generator, dtype, self.strides)
        return module.requires_grad_(self.trainable), (self.out, *spatial)

    def sum_inputs(self, t, k):
        return filter_sum(t, self.filter_shape, self.padding, k.full, self.strides)

    def kernel_map(self, k: KernelState) -> KernelState:
        image_state(k, self)
        self._check_channels(k.width, (k.width, *k.spatial))
        check_window_fits(self, self.filter_shape, self.strides, self.padding, k.spatial)
        return super().kernel_map(k)

    def output_state(self, k: KernelState) -> KernelState:
        return k.replace(width=self.out, spatial=tuple(k.var1.shape[1:3]))

    def input_state_shape(self, sample_shape):
        if len(sample_shape) != 3 or self.strides == (1, 1):
            return None
        return (self.out, *check_window_fits(self, self.filter_shape, self.strides, self.padding,
                                              sample_shape[1:]))

    def input_state(self, x1: torch.Tensor, x2: torch.Tensor | None, *, need_ntk: bool,
                    full: bool) -> KernelState | None:
        """The layer's output state straight from input images, when that is cheaper: with
        P_i(x) the (padded) input patch of output pixel i, C kh kw numbers,
            sum_d K_0[s i + d, s j + d] = P_i(x) . P_j(x') / C,
        so the state is the input state of the patches (`KernelState.from_inputs` divides by
        their length C kh kw) through this layer's affine map with one term.  One GEMM over
        the patches replaces the input's all-position products and the filter's shifted sums;
        used for strided convolutions, whose input state would be stride^4 times larger than
        their output (3.5x faster on 16x16 RGB images at stride 2; at stride 1 the unfused path
        measured 6-25% faster, benchmarks/bench_architectures.py)."""
        shape = self.input_state_shape(tuple(x1.shape[1:]))
        if shape is None:
            return None
        channels, out_spatial = x1.shape[1], shape[1:]
        self._check_channels(channels, tuple(x1.shape[1:]))

        def patches(x: torch.Tensor) -> torch.Tensor:
            padded = pad_images(x, self.filter_shape, self.strides, self.padding)
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

    var1, var2 = k.map_variances(diagonal)
    return k.replace(nngp=diagonal(k.nngp), ntk=k.map_ntk(diagonal), var1=var1, var2=var2,
                     full=False)


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
    """Mean (or sum, `total`) over the positions of NCHW images
    (`dims` (2, 3)) or of token sequences `[N, T, C]` (`dims` (1,))."""

    def __init__(self, dims: tuple[int, ...], total: bool = False):
        super().__init__()
        self.dims, self.total = dims, total

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.sum(dim=self.dims) if self.total else h.mean(dim=self.dims)

    def extra_repr(self) -> str:
        return f"dims={self.dims}, {'sum' if self.total else 'mean'}"


class Flatten(Layer[KernelState, KernelState]):
    """`Flatten()`: [N, C, H, W] -> [N, C*H*W] (the "vanilla" readout, CNN-V / CNTK-V).

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
    CNTK-GAP); token sequences [N, T, C] -> [N, C], the mean over tokens.

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

    def build(self, in_shape, generator, dtype):
        if len(in_shape) == 1:
            raise ValueError(f"{self!r} pools images (C, H, W) or token sequences (T, C), got "
                             f"vectors of shape {tuple(in_shape)}; remove it or move it before "
                             f"the Flatten/readout")
        dims, channels = ((2, 3), in_shape[0]) if len(in_shape) == 3 else ((1,), in_shape[-1])
        return GlobalAvgPoolModule(dims, self.total), (channels,)

    def kernel_map(self, k: KernelState) -> KernelState:
        if not k.spatial:
            raise ValueError(f"{self!r} pools images or token sequences but gets vectors; "
                             f"remove it or move it before the Flatten/readout")
        if not k.full:
            raise ValueError(f"{self!r} needs the covariance of all position pairs: compute the "
                             f"kernel through nk.serial(...).kernel, which tracks them")
        positions, n_spatial = math.prod(k.spatial), len(k.spatial)
        # the mean over all position pairs; sum = positions * mean in every copy: K scales by positions^2
        scale = float(positions) ** 2 if self.total else 1.0
        pool = lambda t: t.flatten(-2 * n_spatial).mean(-1).mul_(scale)  # noqa: E731
        var1, var2 = k.map_variances(pool)
        return k.replace(nngp=pool(k.nngp), ntk=k.map_ntk(pool), var1=var1, var2=var2,
                         spatial=(), full=False)


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
