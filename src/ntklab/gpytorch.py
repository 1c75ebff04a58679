"""An ntklab architecture as a GPyTorch kernel (the `gpytorch` extra).

`ArchitectureKernel(build)` is the NNGP or NTK of the infinitely wide network `build(W_std, b_std)`
as a `gpytorch.kernels.Kernel`, with W_std and b_std as positive GPyTorch parameters: the kernel
recursions are differentiable in them (Lee et al. 2018, "Deep neural networks as Gaussian
processes"; Jacot et al. 2018), so an `ExactGP`'s marginal likelihood tunes them with any torch
optimizer, as GPyTorch's own kernels are tuned."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch

from ._core.extras import import_extra
from .arch import Serial

gpytorch = import_extra("gpytorch", "gpytorch")
Kernel: Any = gpytorch.kernels.Kernel   # GPyTorch ships no type information


class ArchitectureKernel(Kernel):
    """K(x, x') = the NNGP (`get="nngp"`) or NTK (`get="ntk"`) of `build(W_std, b_std)`, an
    ntklab architecture of vectors built from the two hyperparameters, e.g.
    `lambda W_std, b_std: nk.mlp(2, 512, W_std=W_std, b_std=b_std)`. W_std and b_std are
    GPyTorch parameters (`raw_W_std`, `raw_b_std` under a `Positive` constraint).

    Parameters
    ----------
    build : callable (W_std, b_std) -> Serial
        The architecture at given hyperparameters (0-dim tensors, which Dense layers take).
    get : {"nngp", "ntk"}
    W_std, b_std : float
        The initial values (> 0).

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> from ntklab.gpytorch import ArchitectureKernel
    >>> kernel = ArchitectureKernel(lambda W_std, b_std: nk.mlp(1, 512, W_std=W_std, b_std=b_std))
    >>> x = torch.randn(5, 3, dtype=torch.float64)
    >>> k = kernel(x).to_dense()          # a lazy GPyTorch tensor, here as a matrix
    >>> bool(torch.allclose(k, nk.mlp(1, 512, W_std=1.5, b_std=0.05).kernel(x, None, "nngp")))
    True
    """

    is_stationary = False

    def __init__(self, build: Callable[[torch.Tensor, torch.Tensor], Serial], get: str = "nngp",
                 W_std: float = 1.5, b_std: float = 0.05):
        if get not in ("nngp", "ntk"):
            raise ValueError(f"get must be 'nngp' or 'ntk', got {get!r}")
        if not callable(build):
            raise ValueError(f"build must be a function (W_std, b_std) -> architecture, got {build!r}")
        if not (W_std > 0 and b_std > 0):
            raise ValueError(f"W_std and b_std must be > 0, got {W_std}, {b_std}")
        super().__init__()
        self.build, self.get = build, get
        for name, value in (("W_std", W_std), ("b_std", b_std)):
            self.register_parameter(f"raw_{name}", torch.nn.Parameter(torch.zeros((), dtype=torch.float64)))
            self.register_constraint(f"raw_{name}", gpytorch.constraints.Positive())
            start = torch.tensor(float(value), dtype=torch.float64)
            self.initialize(**{f"raw_{name}": getattr(self, f"raw_{name}_constraint").inverse_transform(start)})

    @property
    def W_std(self) -> torch.Tensor:
        """The weights' standard deviation (`raw_W_std` through its constraint)."""
        return self.raw_W_std_constraint.transform(self.raw_W_std)

    @property
    def b_std(self) -> torch.Tensor:
        """The biases' standard deviation (`raw_b_std` through its constraint)."""
        return self.raw_b_std_constraint.transform(self.raw_b_std)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, diag: bool = False, **params) -> torch.Tensor:
        """K(x1, x2) `[n1, n2]`, or its diagonal `[n1]` with `diag=True`; rows `[n, d]` only
        (GPyTorch's batch dimensions and `last_dim_is_batch` are refused)."""
        if x1.dim() != 2 or x2.dim() != 2 or params.get("last_dim_is_batch"):
            raise ValueError(f"ArchitectureKernel takes rows [n, d]; got shapes {tuple(x1.shape)} and "
                             f"{tuple(x2.shape)}: batch dimensions are not supported")
        net = self.build(self.W_std, self.b_std)
        if diag:
            return torch.stack([cast(torch.Tensor, net.kernel(x1[i:i + 1], x2[i:i + 1], get=self.get))[0, 0]
                                for i in range(len(x1))])
        same = x1.shape == x2.shape and torch.equal(x1, x2)
        return cast(torch.Tensor, net.kernel(x1, None if same else x2, get=self.get))
