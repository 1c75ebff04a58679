"""Low-rank Nystrom approximations of a kernel matrix, K ~ U diag(Lambda) U^T, and the preconditioner
of K + lambda I built from one (`NystromPreconditioner`), with the training points drawn as centers
(`draw_centers`) and the kernel of an architecture as a function (`kernel_function`).

Two ways to build U and Lambda:

* randomized (Frangella, Tropp & Udell 2023, "Randomized Nystrom preconditioning", SIAM J. Matrix Anal.
  Appl., Alg. 2.1): from one product K Omega with r Gaussian probes -- one pass over a kernel store,
  2 n^2 r flops;
* column sampling (Williams & Seeger 2001, "Using the Nystrom method to speed up kernel machines"):
  K ~ K_nm K_mm^+ K_mn on m training points, computed from the architecture (n m kernel entries and
  O(n m^2) flops, no pass over a store) -- the preconditioner FALKON builds for its Nystrom problem
  (Rudi, Carratino & Rosasco 2017), here for the full system.  It can afford far larger ranks than
  the randomized one when the store is larger than memory.

Either way P^-1 v = (Lambda_r + lambda) U (Lambda + lambda I)^-1 U^T v + (I - U U^T) v (Frangella et al.,
eq. 5.3), and K + lambda I preconditioned by it has a condition number of order (Lambda_r + lambda +
||K - U Lambda U^T||) / lambda, so CG needs few iterations once the rank covers the eigenvalues above lambda.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from .._core.validation import DEFAULT_DTYPE, check_result_fits, positive_int
from ..arch.serial import Serial


def kernel_function(net_or_kernel_fn, get: str) -> Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]:
    """`kernel(x1, x2) -> float64 [N1, N2]` (x2=None: x1 with itself) of an ntklab architecture (its `get`
    kernel) or of a user's `kernel_fn(x1, x2)` returning a tensor or array."""
    if get not in ("ntk", "nngp"):
        raise ValueError(f"get must be 'ntk' or 'nngp', got {get!r}")
    if isinstance(net_or_kernel_fn, Serial):
        net = net_or_kernel_fn

        def kernel(x1: torch.Tensor, x2: torch.Tensor | None) -> torch.Tensor:
            k = net.kernel(x1, x2, get=get)
            assert isinstance(k, torch.Tensor)   # get names one kernel: a tensor, not a Kernel
            return k.to(torch.float64)
        return kernel
    if callable(net_or_kernel_fn):
        user_fn = net_or_kernel_fn

        def user_kernel(x1: torch.Tensor, x2: torch.Tensor | None) -> torch.Tensor:   # numpy or torch, any dtype
            return torch.as_tensor(user_fn(x1, x1 if x2 is None else x2)).to(dtype=torch.float64, device=x1.device)
        return user_kernel
    raise ValueError(f"net_or_kernel_fn must be an ntklab architecture (nk.serial(...)) or a function "
                     f"kernel_fn(x1, x2) -> tensor, got {net_or_kernel_fn!r}")


def draw_centers(x_train: torch.Tensor, centers: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, x_train[index]): `centers` training points drawn uniformly without replacement (seeded), in
    increasing order; a repeated input counts once (it adds nothing to the span and makes K_mm singular),
    so fewer may come back.  ValueError for centers > n."""
    n = len(x_train)
    m = positive_int(centers, "centers")
    if m > n:
        raise ValueError(f"centers={m} exceeds the {n} training samples; use centers <= {n} "
                         f"(centers={n} is exact ridge regression)")
    index = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:m].sort().values
    rows = x_train[index.to(x_train.device)].reshape(len(index), -1).cpu().numpy()
    index = index[np.sort(np.unique(rows, axis=0, return_index=True)[1])]
    return index, x_train[index.to(x_train.device)]


def _kept(eigenvalues: torch.Tensor, size: int) -> torch.Tensor:
    """The numerically nonzero eigenvalues: above size * eps * the largest (rounding's floor)."""
    floor = size * torch.finfo(eigenvalues.dtype).eps * float(eigenvalues.max().clamp_min(
        torch.finfo(eigenvalues.dtype).tiny))
    return eigenvalues > floor


ORTHONORMALITY = 1e-10   # largest |U^T U - I| entry accepted from the first pass of from_centers


def _orthonormalized(u: torch.Tensor, eigenvalues: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, Lambda) with U orthonormal to rounding and U diag(Lambda) U^T unchanged.  U = B V s^-1/2 from the
    eigendecomposition of B^T B loses orthogonality like eps s_max / s_i (the normal equations square B's
    condition number), and a P^-1 = U D U^T + I - U U^T from a U far from orthonormal can be indefinite.  The
    columns of smallest Lambda are checked; if they are off by more than `ORTHONORMALITY`, a second pass
    (U^T U = V2 s2 V2^T, U2 = U V2 s2^-1/2, then the eigendecomposition W diag(Lambda) W^T of
    s2^1/2 V2^T diag(Lambda) V2 s2^1/2) gives U = U2 W, in place by blocks of rows."""
    probe = eigenvalues.argsort()[:64]
    error = (u.T @ u[:, probe]) - torch.eye(len(eigenvalues), dtype=u.dtype, device=u.device)[:, probe]
    if float(error.abs().max()) <= ORTHONORMALITY:
        return u, eigenvalues
    s2, v2 = torch.linalg.eigh(u.T @ u)
    root = v2 * s2.sqrt()
    lam, w = torch.linalg.eigh(root.T @ (eigenvalues[:, None] * root))
    rotate = (v2 / s2.sqrt()) @ w
    for start in range(0, len(u), block_size):
        u[start:start + block_size] = u[start:start + block_size] @ rotate
    return u, lam.clamp_min(0)


class NystromPreconditioner:
    """P^-1 for K + shift I from K ~ U diag(Lambda) U^T (module docstring); `__call__(r)` is P^-1 r.

    `NystromPreconditioner(operator, rank, shift, seed)` builds the randomized approximation from one
    product K Omega (Frangella, Tropp & Udell 2023, Alg. 2.1 with the stabilizing shift
    nu = sqrt(n) eps ||Y||); `NystromPreconditioner.from_centers(net, x_train, centers=m)` the column
    approximation on m training points.  `conjugate_gradients(preconditioner=P)` sets the shift of its
    system (`with_shift`), so one approximation serves every ridge.

    Parameters
    ----------
    operator
        The kernel (see `nk.predict.iterative.as_operator`).
    rank : int
        Number of random probe vectors (<= n).
    shift : float
        The regularization lambda of the system K + lambda I.
    seed : int
    """

    def __init__(self, operator, rank: int, shift: float = 0.0, seed: int = 0):
        n = operator.shape[0]
        rank = min(positive_int(rank, "rank"), n)
        check_result_fits((n, rank), 4, operator.dtype, operator.device,
                          f"the randomized Nystrom preconditioner of rank {rank} holds four n x rank matrices; "
                          f"give a smaller rank")
        generator = torch.Generator().manual_seed(seed)
        omega = torch.randn(n, rank, generator=generator, dtype=operator.dtype).to(operator.device)
        omega = torch.linalg.qr(omega).Q
        y = operator.matmul(omega)
        nu = math.sqrt(n) * torch.finfo(y.dtype).eps * float(torch.linalg.matrix_norm(y, ord=2))
        y_nu = y + nu * omega
        lower = torch.linalg.cholesky(omega.T @ y_nu)
        b = torch.linalg.solve_triangular(lower, y_nu.T, upper=False).T     # Y_nu C^-T
        u, sigma, _ = torch.linalg.svd(b, full_matrices=False)
        eigenvalues = (sigma.square() - nu).clamp_min(0)
        # keep the numerically nonzero directions: with shift = 0 a zero eigenvalue would make the
        # scale 0/0 (a kernel of lower rank than `rank`); the others are left to the identity part
        kept = _kept(eigenvalues, n)
        self._set(u[:, kept], eigenvalues[kept], shift)

    def _set(self, u: torch.Tensor, eigenvalues: torch.Tensor, shift: float) -> None:
        self.u, self.eigenvalues, self.shift = u, eigenvalues, float(shift)

    @classmethod
    def from_centers(cls, net_or_kernel_fn, x_train, centers: int = 1000, *, get: str = "ntk",
                     shift: float = 0.0, block_size: int = 1024, seed: int = 0,
                     progress: bool | None = None) -> "NystromPreconditioner":
        """The column Nystrom approximation K ~ K_nm K_mm^+ K_mn on `centers` training points
        (`draw_centers`): with K_mm = Q diag(w) Q^T and B = K_nm Q diag(w)^-1/2 (directions of w above
        rounding's floor), B^T B = V diag(s) V^T gives U = B V diag(s)^-1/2 and Lambda = s.  K_nm is
        computed in blocks of `block_size` rows; memory: U, n x m float64 (`x_train`'s device).

        Parameters
        ----------
        net_or_kernel_fn : Serial or callable
            The kernel of the system, as `nystrom_regression` takes it (the store's architecture).
        x_train : tensor or array
            The training inputs of the system, in the store's order.
        centers : int
            m <= n.
        get : {"ntk", "nngp"}
        shift : float
            lambda (`conjugate_gradients` sets its own).
        block_size, seed, progress
            Rows of K_nm per block; the centers' draw; a bar over the blocks (default: n > 10 blocks).
        """
        kernel = kernel_function(net_or_kernel_fn, get)
        x_train = torch.as_tensor(x_train)
        x_train = x_train.to(DEFAULT_DTYPE) if not x_train.is_floating_point() else x_train
        n, block_size = len(x_train), positive_int(block_size, "block_size")
        _, chosen = draw_centers(x_train, centers, seed)
        check_result_fits((n, len(chosen)), 1, torch.float64, x_train.device,
                          "the preconditioner holds U, n x centers in float64; give fewer centers")
        w, q = torch.linalg.eigh(kernel(chosen, None))
        kept = _kept(w, len(w))
        whiten = q[:, kept] / w[kept].sqrt()                  # K_mm^{+1/2}
        b = torch.empty(n, int(kept.sum()), dtype=torch.float64, device=whiten.device)
        show = n > 10 * block_size if progress is None else progress
        for start in tqdm(range(0, n, block_size), desc="Nystrom preconditioner: K_nm", leave=False,
                          disable=not show):
            b[start:start + block_size] = kernel(x_train[start:start + block_size], chosen) @ whiten
        s, v = torch.linalg.eigh(b.T @ b)
        kept = _kept(s, n)
        rank = int(kept.sum())
        rotate = v[:, kept] / s[kept].sqrt()
        for start in range(0, n, block_size):                 # U = B V s^-1/2, in place by blocks of rows
            b[start:start + block_size, :rank] = b[start:start + block_size] @ rotate
        preconditioner = cls.__new__(cls)
        preconditioner._set(*_orthonormalized(b[:, :rank], s[kept], block_size), shift)
        return preconditioner

    def with_shift(self, shift: float, dtype: torch.dtype | None = None, device=None) -> "NystromPreconditioner":
        """The same approximation for the system K + shift I, in `dtype` on `device` (default: as it is;
        U is shared, not copied, when they are unchanged)."""
        other = type(self).__new__(type(self))
        other._set(self.u.to(dtype=dtype, device=device), self.eigenvalues.to(dtype=dtype, device=device), shift)
        return other

    @property
    def rank(self) -> int:
        """Directions of the approximation (numerically nonzero eigenvalues)."""
        return len(self.eigenvalues)

    def __call__(self, r: torch.Tensor) -> torch.Tensor:
        """P^-1 r."""
        if len(self.eigenvalues) == 0:   # a zero kernel: nothing to precondition
            return r
        projected = self.u.T @ r
        scale = (self.eigenvalues.min() + self.shift) / (self.eigenvalues + self.shift)
        return self.u @ (scale[:, None] * projected) + r - self.u @ projected
