"""Fully connected layer `z = A h + b` (lecture 20: `F_i(z) = sigma(A z + b)`).

Parameterizations (neural-tangents' conventions, Jacot et al. 2018; Novak et al. 2020):
  * "ntk":      z = (W_std / sqrt(n_in)) W h + b_std b,   W, b ~ N(0, 1)
  * "standard": z = W h + b,   W ~ N(0, W_std^2 / n_in),  b ~ N(0, b_std^2)

Kernel recursion, with K, Theta the NNGP and NTK of the inputs h and n_in their width:
  NNGP:            K'     = W_std^2 K + b_std^2
  NTK ("ntk"):     Theta' = K' + W_std^2 Theta
  NTK ("standard"):Theta' = n_in K + [1 if the layer has a bias] + W_std^2 Theta
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from .._validation import one_of, positive, positive_int
from .layer import Layer
from .state import KernelState

PARAMETERIZATIONS = ("ntk", "standard")


class DenseModule(nn.Module):
    """Finite-width dense layer in the NTK or standard parameterization."""

    def __init__(self, in_features: int, out_features: int, W_std: float, b_std: float | None,
                 parameterization: str, generator: torch.Generator, dtype: torch.dtype):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.W_std, self.b_std, self.parameterization = W_std, b_std, parameterization
        weight = torch.randn(out_features, in_features, generator=generator, dtype=dtype)
        bias = None if b_std is None else torch.randn(out_features, generator=generator, dtype=dtype)
        if parameterization == "standard":
            weight *= W_std / math.sqrt(in_features)
            if bias is not None:
                bias *= b_std
        self.weight = nn.Parameter(weight)
        self.bias = None if bias is None else nn.Parameter(bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.parameterization == "standard":
            return F.linear(h, self.weight, self.bias)
        bias = None if self.bias is None else self.b_std * self.bias
        return F.linear(h, self.weight * (self.W_std / math.sqrt(self.in_features)), bias)

    def extra_repr(self) -> str:
        return (f"{self.in_features} -> {self.out_features}, W_std={self.W_std}, "
                f"b_std={self.b_std}, parameterization={self.parameterization!r}")


class Dense(Layer):
    """`Dense(out, W_std=1.0, b_std=0.0, parameterization="ntk")`.

    `b_std=None` removes the bias (matters for the standard parameterization,
    where a bias adds 1 to the NTK even when `b_std=0`, as in neural-tangents)."""

    def __init__(self, out: int, W_std: float = 1.0, b_std: float | None = 0.0,
                 parameterization: str = "ntk"):
        self.out = positive_int(out, "out (width of Dense)")
        self.W_std = positive(W_std, "W_std")
        self.b_std = None if b_std is None else positive(b_std, "b_std", allow_zero=True)
        self.parameterization = one_of(parameterization, "parameterization", PARAMETERIZATIONS)

    def build(self, in_features, generator, dtype):
        return DenseModule(in_features, self.out, self.W_std, self.b_std,
                           self.parameterization, generator, dtype), self.out

    def kernel_map(self, k: KernelState) -> KernelState:
        w2, b2 = self.W_std ** 2, (self.b_std or 0.0) ** 2
        ntk = k.ntk
        if ntk is not None and self.parameterization == "standard":
            # uses the *input* covariance, so it is formed before K is overwritten
            ntk = k.nngp * k.width + w2 * ntk
            if self.b_std is not None:
                ntk += 1.0
        nngp = k.nngp.mul_(w2).add_(b2)
        if ntk is not None and self.parameterization == "ntk":
            ntk = nngp + w2 * ntk if isinstance(ntk, float) else ntk.mul_(w2).add_(nngp)
        return k.replace(nngp=nngp, ntk=ntk, var1=k.var1 * w2 + b2, var2=k.var2 * w2 + b2,
                         width=self.out)
