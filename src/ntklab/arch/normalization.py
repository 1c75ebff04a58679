"""`LayerNorm` (neural-tangents' `stax.LayerNorm`) and its infinite-width map.

Finite layer (no parameters): `z = (h - mean_c h) / sqrt(var_c h + eps)` over the channel axis.

Kernel: for zero-mean Gaussian inputs the channel mean vanishes and the channel variance
converges to `K(x, x)` at each position, so (neural-tangents' formula)
    K'(x, x')[p, q]     = K(x, x')[p, q] / sqrt((eps + K(x, x)[p, p]) (eps + K(x', x')[q, q])),
    Theta'(x, x')[p, q] = Theta(x, x')[p, q] / (the same),
and the output is still Gaussian (a deterministic rescaling in the limit).  After `Flatten`
of images or sequences the channel axis is the flattened vector's: each position of x is
divided by sqrt(eps + mean_p K(x, x)[p, p]), the flattened vector's variance.
"""
from __future__ import annotations

import torch
from torch import nn

from .._core.validation import positive
from .conv import flatten_state
from .layer import Layer, channel_axis
from .state import KernelState


class LayerNormModule(nn.Module):
    """(h - mean) / sqrt(var + eps) over the axis `dim` (no learned scale or shift)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.dim, self.eps = dim, eps

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(h, dim=self.dim, keepdim=True, correction=0)
        return (h - mean) / torch.sqrt(var + self.eps)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, eps={self.eps}"


class LayerNorm(Layer[KernelState, KernelState]):
    """`LayerNorm(axis=-1, eps=1e-12)`: normalize each position over channels. `axis` is the
    channel axis in ntklab's layout: -1 for vectors `[N, d]` and token sequences `[N, T, C]`
    (as neural-tangents' default), 1 for NCHW images.  Normalizing over other axes too is
    not supported (its kernel needs the covariance across positions).

    Parameters
    ----------
    axis : int
        The channel axis normalized over (-1, channels last for sequences; 1 for NCHW images).
    eps : float
        Added to the variance, as `torch.nn.LayerNorm`.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> k = nk.serial(nk.Dense(64), nk.LayerNorm(), nk.Dense(1, b_std=0.0)).kernel(torch.randn(3, 4))
    >>> [round(v, 5) for v in k.nngp.diagonal().tolist()]                # unit norm per input
    [1.0, 1.0, 1.0]
    """

    mask_rule = "channels"

    def __init__(self, axis: int = -1, eps: float = 1e-12):
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise ValueError(f"axis must be the channel axis (an int: -1 for vectors and "
                             f"sequences, 1 for NCHW images), got {axis!r}")
        self.axis = axis
        self.eps = positive(eps, "eps", allow_zero=True)

    def _check_axis(self, shape: tuple[int, ...]) -> None:
        ndim = len(shape) + 1
        if not -ndim <= self.axis < ndim or self.axis % ndim != channel_axis(shape) % ndim:
            expected = channel_axis(shape)
            raise ValueError(f"axis={self.axis} is not the channel axis of inputs of shape "
                             f"(N, *{tuple(shape)}); LayerNorm normalizes over channels: use "
                             f"LayerNorm(axis={expected})")

    def build(self, in_shape, generator, dtype):
        self._check_axis(tuple(in_shape))
        return LayerNormModule(channel_axis(tuple(in_shape)), self.eps), in_shape

    def kernel_map(self, k: KernelState) -> KernelState:
        self._check_axis(k.sample_shape)
        if not k.is_gaussian:
            raise ValueError(f"{self!r} needs Gaussian inputs (the output of nk.Dense, nk.Conv or "
                             f"attention); put an affine layer before it")
        if k.positions is None:
            return self._rescale(k, *k.pair_variances(), k.self_variances(k.var1),
                                 k.self_variances(k.var2))
        # after Flatten: each position of x is divided by the flattened vector's deviation,
        # sqrt(eps + mean over positions of K(x, x)) (the variances of this state)
        inner, ones = k.positions, (1,) * len(k.positions.spatial)
        v1, v2 = k.var1.reshape(-1, *ones), k.var2.reshape(-1, *ones)
        return flatten_state(self._rescale(inner, v1.unsqueeze(1), v2.unsqueeze(0), (v1, v1), (v2, v2)))

    def _rescale(self, k: KernelState, v1: torch.Tensor, v2: torch.Tensor,
                 own1: tuple[torch.Tensor, torch.Tensor],
                 own2: tuple[torch.Tensor, torch.Tensor]) -> KernelState:
        """K'[p, q] = K[p, q] / sqrt((eps + v1[p]) (eps + v2[q])) and likewise Theta, with `v1`, `v2`
        broadcastable against `k.nngp`; `own1` (`own2`): the two variances of each pair of
        `var1` (`var2`), the inputs with themselves."""
        factor = lambda a, b: ((a + self.eps) * (b + self.eps)).rsqrt_()  # noqa: E731
        scale = factor(v1, v2)
        ntk = k.map_ntk(lambda t: t.mul_(scale))
        var1 = k.var1 * factor(*own1)
        var2 = var1 if k.symmetric else k.var2 * factor(*own2)
        return k.replace(nngp=k.nngp.mul_(scale), ntk=ntk, var1=var1, var2=var2)
