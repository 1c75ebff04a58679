"""Dropout and its infinite-width kernel map (neural-tangents' `stax.Dropout`).

`rate` is the probability of *keeping* a unit (neural-tangents' and jax.example_libraries'
convention): in training mode each unit of each sample is kept with probability `rate` and
scaled by 1 / rate (mask m ~ Bernoulli(rate), out = m h / rate), a fresh mask at every
forward pass and for every sample of the batch.

Kernel (train mode): two different samples (or forward passes) have independent masks,
E[m m'] / rate^2 = 1, while a sample with itself shares its mask, E[m^2] / rate^2 = 1 / rate.
At infinite width the mean over units is exact, so
    K'(x, x') = K(x, x') (1 / rate if x' is x, at the same position, else 1),
and the NTK likewise (each parameter's gradient reaches the output through the same mask);
the outputs are not Gaussian.  "The same sample" is the diagonal of a kernel of inputs with
themselves (`x2=None`); `kernel(x1, x2)` pairs different forward passes (neural-tangents
treats `x2` equal to `x1` as `x2=None`).  Test mode is the identity.
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from .._core.validation import one_of
from .layer import Layer
from .state import KernelState

MODES = ("train", "test")


class DropoutModule(nn.Module):
    """Train-mode dropout that keeps each unit with probability `rate` (always on, as
    neural-tangents' `apply_fn` in mode "train": the kernel describes that network)."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.dropout(h, p=1.0 - self.rate, training=True)

    def extra_repr(self) -> str:
        return f"keep rate={self.rate}"


def same_sample_diagonal(t: torch.Tensor, k: KernelState, factor: float, batch_pairs: bool) -> torch.Tensor:
    """`t` with its entries of a sample with itself at the same position multiplied by `factor`.
    `batch_pairs`: `t` is a block of pairs `[N, N, *pairs]` (else a self-covariance `[N, *pairs]`,
    every sample paired with itself); `pairs` is `spatial`, or `spatial` twice when `k.full`."""
    positions = math.prod(k.spatial)
    mask = torch.ones((), dtype=torch.bool, device=t.device)
    if k.full:
        mask = torch.eye(positions, dtype=torch.bool, device=t.device).reshape(*k.spatial, *k.spatial)
    if batch_pairs:
        eye = torch.eye(t.shape[0], dtype=torch.bool, device=t.device)
        mask = eye.reshape(eye.shape + (1,) * (t.ndim - 2)) & mask
    scale = torch.tensor([1.0, factor], dtype=t.dtype, device=t.device)   # t's precision
    return t * scale[mask.long()]


class Dropout(Layer[KernelState, KernelState]):
    """`Dropout(rate, mode="train")` (neural-tangents' `stax.Dropout`): keep each unit with
    probability `rate` in (0, 1] and scale it by 1 / rate; `mode="test"` is the identity.

    Kernel (train mode, see the module docstring): the entries of a sample with itself (the
    diagonal of `kernel(x)`, at the same position for images and sequences) are multiplied by
    1 / rate, NNGP and NTK; the others are unchanged.  The outputs are not Gaussian: put an
    affine layer (Dense, Conv) before an activation.  Refused on the inputs (before any affine
    layer): with finitely many input features the masks do not average out.

    Parameters
    ----------
    rate : float
        Keep probability, 0 < rate <= 1 (1: no dropout).
    mode : {"train", "test"}

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> x = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    >>> nk.serial(nk.Dense(1), nk.Dropout(0.5)).kernel(x, get="nngp")   # diagonal doubled
    tensor([[1.0000, 0.3000],
            [0.3000, 1.0000]], dtype=torch.float64)
    """

    def __init__(self, rate: float, mode: str = "train"):
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 < rate <= 1.0:
            raise ValueError(f"Dropout rate is the keep probability and must be in (0, 1], got {rate!r}")
        self.rate = float(rate)
        self.mode = one_of(mode, "mode", MODES)

    def build(self, in_shape, generator, dtype):
        module = DropoutModule(self.rate) if self.mode == "train" else nn.Identity()
        return module, in_shape

    def kernel_map(self, k: KernelState) -> KernelState:
        if self.mode == "test" or self.rate == 1.0:
            return k
        if k.is_input:
            raise ValueError("Dropout cannot act on the inputs (their finitely many features do not "
                             "average out the masks); put it after an affine layer such as nk.Dense "
                             "or nk.Conv")
        factor = 1.0 / self.rate
        positions = None if k.positions is None else self.kernel_map(k.positions)
        var1, var2 = k.map_variances(lambda var: same_sample_diagonal(var, k, factor, False))
        if k.symmetric:
            nngp = same_sample_diagonal(k.nngp, k, factor, True)
            ntk = k.map_ntk(lambda t: same_sample_diagonal(t, k, factor, True))
        else:
            nngp, ntk = k.nngp, k.ntk
        return k.replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2, is_gaussian=False,
                         positions=positions, positions_lost=k.positions_lost)
