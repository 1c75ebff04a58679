"""Fully connected layer `z = W h + b` and its kernel map (Neal 1996; Lee et al. 2018;
Jacot, Gabriel & Hongler 2018).

Parameterizations (neural-tangents' conventions, Jacot et al. 2018; Novak et al. 2020):
  * "ntk":      z = (W_std / sqrt(n_in)) W h + b_std b,   W, b ~ N(0, 1)
  * "standard": z = W h + b,   W ~ N(0, W_std^2 / n_in),  b ~ N(0, b_std^2)

Kernel recursion, with K, Theta the NNGP and NTK of the inputs h and n_in their width:
  NNGP:            K'     = W_std^2 K + b_std^2
  NTK ("ntk"):     Theta' = K' + W_std^2 Theta
  NTK ("standard"):Theta' = n_in K + [1 if the layer has a bias] + W_std^2 Theta
(`Affine` states it once for Dense and Conv.)
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from .._core.validation import hyperparameter, one_of, positive_int
from .layer import Layer
from .state import KernelState

PARAMETERIZATIONS = ("ntk", "standard")


class DenseModule(nn.Module):
    """Finite-width dense layer in the NTK or standard parameterization, acting on the
    `channel_axis` of its input (-1: vectors and token sequences; 1: NCHW images, a 1x1
    convolution)."""

    def __init__(self, in_features: int, out_features: int, W_std: float, b_std: float | None,
                 parameterization: str, generator: torch.Generator, dtype: torch.dtype,
                 channel_axis: int = -1):
        super().__init__()
        self.in_features, self.out_features, self.channel_axis = in_features, out_features, channel_axis
        self.W_std, self.b_std, self.parameterization = W_std, b_std, parameterization
        weight = torch.randn(out_features, in_features, generator=generator, dtype=dtype)
        bias = None if b_std is None else torch.randn(out_features, generator=generator, dtype=dtype)
        if parameterization == "standard":
            weight *= W_std / math.sqrt(in_features)
            if bias is not None and b_std is not None:
                bias *= b_std
        self.weight = nn.Parameter(weight)
        self.bias = None if bias is None else nn.Parameter(bias)

    @property
    def weight_scale(self) -> float:
        """The factor multiplying the raw weight in the forward pass (W_std / sqrt(n_in) in
        the NTK parameterization, 1 in the standard one)."""
        return self.W_std / math.sqrt(self.in_features) if self.parameterization == "ntk" else 1.0

    @property
    def bias_scale(self) -> float:
        return (self.b_std or 0.0) if self.parameterization == "ntk" else 1.0

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias_scale * self.bias
        if self.channel_axis == -1:
            return F.linear(h, self.weight_scale * self.weight, bias)
        return F.linear(h.movedim(self.channel_axis, -1), self.weight_scale * self.weight,
                        bias).movedim(-1, self.channel_axis)

    def extra_repr(self) -> str:
        return (f"{self.in_features} -> {self.out_features}, W_std={self.W_std}, "
                f"b_std={self.b_std}, parameterization={self.parameterization!r}")


def _add(ntk: torch.Tensor | float, term: torch.Tensor | float) -> torch.Tensor | float:
    """`ntk + term`, in place when `ntk` is a tensor this layer made (not an input)."""
    return ntk + term if isinstance(ntk, float) else ntk.add_(term)


class Affine(Layer[KernelState, KernelState]):
    """Shared infinite-width map of the affine layers (`Dense`, `Conv`).

    With `S` the layer's sum over its `terms` input positions (identity for
    Dense; the sum over the filter's shifts for Conv) and `n` the input's
    channels (features):
        K'     = (W_std^2 / terms) S(K) + b_std^2
        Theta' = (W_std^2 / terms) S(Theta) + [trainable] K'                  ("ntk")
        Theta' = (W_std^2 / terms) S(Theta) + [trainable] (n S(K) + [bias])  ("standard")
    `trainable=False` keeps the layer in the network but out of the NTK (its
    parameters are not trained): Arora et al. (2019)'s CNTK-GAP "fix" option
    fixes the first and the last layer."""

    terms = 1
    out: int   # output channels (features), set by the subclasses

    def __init__(self, W_std: float, b_std: float | None, parameterization: str, trainable: bool):
        self.W_std = hyperparameter(W_std, "W_std")
        self.b_std = None if b_std is None else hyperparameter(b_std, "b_std", allow_zero=True)
        self.parameterization = one_of(parameterization, "parameterization", PARAMETERIZATIONS)
        self.trainable = bool(trainable)

    def finite_stds(self) -> tuple[float, float | None]:
        """(W_std, b_std) as numbers for the finite module (tensor hyperparameters detached)."""
        return float(self.W_std), None if self.b_std is None else float(self.b_std)

    reads_variances = False
    same_position_variances = True   # S keeps same-position pairs apart (identity here, Conv's joint shifts)

    def sum_inputs(self, t: torch.Tensor, k: KernelState) -> torch.Tensor:
        """`S(t)`: the sum of `t` over the input positions feeding each output."""
        return t

    def kernel_map(self, k: KernelState) -> KernelState:
        return self.output_state(self.affine_map(k, self.terms, lambda t: self.sum_inputs(t, k)))

    def affine_map(self, k: KernelState, terms: int, sum_inputs) -> KernelState:
        """The recursion above with `terms` positions summed by `sum_inputs`."""
        w2, b2 = self.W_std ** 2, (self.b_std or 0.0) ** 2
        scale = w2 / terms
        ntk = k.ntk
        if ntk is not None and not isinstance(ntk, float):  # W^2/terms S(Theta), before K is overwritten
            ntk = sum_inputs(ntk).mul_(scale)                # (a float NTK is 0.0: stays 0)
        summed = sum_inputs(k.nngp)
        if ntk is not None and self.trainable and self.parameterization == "standard":
            ntk = _add(_add(ntk, k.width * summed), 0.0 if self.b_std is None else 1.0)
        nngp = summed.mul_(scale).add_(b2)
        if ntk is not None and self.trainable and self.parameterization == "ntk":
            ntk = _add(ntk, nngp)
        var1, var2 = k.map_variances(lambda var: sum_inputs(var).mul(scale).add_(b2))
        return k.replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2, is_gaussian=True, fresh=True,
                         positions=None, is_input=False)

    def output_state(self, k: KernelState) -> KernelState:
        return k.replace(width=self.out)


class Dense(Affine):
    """`Dense(out, W_std=1.0, b_std=None, parameterization="ntk", trainable=True)`
    (neural-tangents' `stax.Dense`): on vectors `[N, d]`, on each token of a sequence
    `[N, T, C]` (the last axis), or on each pixel of NCHW images `[N, C, H, W]` (the channels,
    a 1x1 convolution: neural-tangents' `Dense` with `channel_axis` the channels).  The map
    acts on each position's channels, so the kernel of every pair of positions follows the
    recursion below.

    `b_std=None` (the default, as in neural-tangents) means no bias parameters at all;
    `b_std=0.0` keeps a bias initialized at zero, which in the standard
    parameterization still adds 1 to the NTK (its gradient is 1).

    Parameters
    ----------
    out : int
        Output width.
    W_std : float or tensor
        Weight standard deviation σ_w (a tensor that requires grad makes the kernel differentiable in it).
    b_std : float, tensor or None
        Bias standard deviation σ_b; None: no bias.
    parameterization : {"ntk", "standard"}
    trainable : bool
        False keeps the layer's parameters out of the NTK.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> x = torch.randn(3, 5, dtype=torch.float64)
    >>> k = nk.serial(nk.Dense(1, W_std=2.0, b_std=0.5)).kernel(x)       # K' = W_std² K + b_std²
    >>> bool(torch.allclose(k.nngp, 4.0 * x @ x.T / 5 + 0.25))
    True
    """

    mask_rule = "affine"

    def __init__(self, out: int, W_std: float = 1.0, b_std: float | None = None,
                 parameterization: str = "ntk", trainable: bool = True):
        self.out = positive_int(out, "out (width of Dense)")
        super().__init__(W_std, b_std, parameterization, trainable)

    def build(self, in_shape, generator, dtype):
        channels_first = len(in_shape) >= 3   # images (C, H, W): the channels; else the last axis
        module = DenseModule(in_shape[0] if channels_first else in_shape[-1], self.out,
                             *self.finite_stds(), self.parameterization, generator, dtype,
                             channel_axis=1 if channels_first else -1)
        out_shape = (self.out, *in_shape[1:]) if channels_first else (*in_shape[:-1], self.out)
        return module.requires_grad_(self.trainable), out_shape
