"""The kernel state that flows through an architecture's layer recursions.

For fully connected networks the state of a block of input pairs is
`nngp[i, j] = E[z(x1_i) z(x2_j)]` (pre-activation covariance of one unit), the
NTK block `ntk[i, j]`, the marginal variances `var1[i] = E[z(x1_i)^2]`,
`var2[j] = E[z(x2_j)^2]` (needed by the nonlinear maps) and the `width`
(number of channels of the current representation, i.e. the fan-in of the next
`Dense`; only the standard parameterization's NTK depends on it).
Conventions follow neural-tangents (Novak et al. 2020): the input kernel is
`x . x' / d`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass
class KernelState:
    nngp: torch.Tensor
    ntk: torch.Tensor | float | None  # None: NTK not requested; 0.0: identically zero
    var1: torch.Tensor
    var2: torch.Tensor
    width: int

    replace = replace

    @classmethod
    def from_inputs(cls, x1: torch.Tensor, x2: torch.Tensor | None, *,
                    need_ntk: bool) -> "KernelState":
        """`K_0(x, x') = x . x' / d` with `d` the number of input features.

        `x2=None` means the block of `x1` with itself: the variances are then
        taken from the diagonal of the same product, so that identical inputs
        keep correlation exactly 1 through every layer (no rounding noise at
        the arc-cosine's singular point)."""
        d = x1.shape[1]
        nngp = (x1 @ (x1 if x2 is None else x2).T).div_(d)
        var1 = nngp.diagonal().clone() if x2 is None else (x1 * x1).sum(1).div_(d)
        var2 = var1 if x2 is None else (x2 * x2).sum(1).div_(d)
        return cls(nngp=nngp, ntk=0.0 if need_ntk else None, var1=var1, var2=var2, width=d)


@dataclass(frozen=True)
class Kernel:
    """Infinite-width kernels of an architecture: `nngp` and `ntk`, float tensors
    `[N1, N2]` (either is `None` when it was not requested with `get`)."""
    nngp: torch.Tensor | None
    ntk: torch.Tensor | None

    def __iter__(self):
        return iter((self.nngp, self.ntk))
