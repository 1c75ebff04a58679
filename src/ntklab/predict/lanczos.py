"""Functions of a kernel matrix applied to vectors without the matrix in memory: f(A) b by the Lanczos
process (Lanczos 1950; Saad 1992, "Analysis of some Krylov subspace approximations to the matrix
exponential operator", SIAM J. Numer. Anal.; Golub & Van Loan, "Matrix computations", 4th ed., 10.1
and 11.1), for A = K + shift I symmetric positive semi-definite given as an operator (products A V
only: a tensor, or `nk.kernels.StoredKernel` streaming a store).

With q_1 = b / ||b|| the process builds an orthonormal basis Q_k of the Krylov space
span{b, A b, ..., A^(k-1) b} and the tridiagonal T_k = Q_k^T A Q_k, and

    f(A) b ~ ||b|| Q_k f(T_k) e_1 = ||b|| Q_k S_k f(Theta_k) S_k^T e_1     (T_k = S_k Theta_k S_k^T),

exact once the Krylov space is invariant, and for a smooth f on the spectrum converging far faster
than the dimension (for f(lambda) = (1 - e^{-tau lambda}) / lambda, gradient flow for time tau, the
error falls like the best polynomial approximation of f of degree k).  Q_k is reorthogonalized in full
(twice, Giraud et al. 2005), so the basis stays orthonormal in floating point; memory n k per column of b.
Each step costs one product A V for every column of b at once (one pass over a store).  The process
stops when the coefficients f(T_k) e_1 of every column (all functions together) moved by less than
`rtol` (relative) in each of the last `QUIET_STEPS` steps (one quiet step alone is not convergence: the
Ritz values at the bottom of the spectrum converge late).  `rtol` is not an error bound: a part of b
along an eigenvalue far below the rest is found late, and the error can be about the condition number
of A times rtol.  A Ritz value below zero (beyond rounding) means A is not positive semi-definite:
refused, never clamped.
"""
from __future__ import annotations

import warnings
from typing import Callable

import torch
from tqdm.auto import tqdm

from .._core.tiling import PROGRESS_DELAY
from .._core.validation import available_memory, positive, positive_int

QUIET_STEPS = 3   # consecutive steps below rtol that end the process


def lanczos_apply(operator, b: torch.Tensor, function: Callable[[torch.Tensor], torch.Tensor], *,
                  shift: float = 0.0, rtol: float = 1e-10, max_iterations: int | None = None,
                  progress: bool | None = None) -> tuple[torch.Tensor, int]:
    """f(A) b for A = operator + shift I, by Lanczos with full reorthogonalization (module docstring).

    Parameters
    ----------
    operator
        `shape`, `dtype`, `device` and `matmul(V)` (see `nk.predict.iterative.as_operator`).
    b : tensor
        `[n, c]`: the columns are processed together (one product per step for all).
    function : callable
        Eigenvalues `[k]` (of T_k, >= 0 up to rounding) -> values `[F, k]`: F functions at once (e.g. one per time).
    shift : float
    rtol : float
        Stop when every coefficient vector moved by less than rtol times its norm in each of the last
        `QUIET_STEPS` steps (not an error bound: see the module docstring).
    max_iterations : int, optional
        Default min(n, 1000); reaching it warns (RuntimeWarning) with the last relative change.
    progress : bool, optional
        A bar over steps, shown after 2 s (default), always or never.

    Returns
    -------
    (tensor `[F, n, c]`, steps taken)
    """
    n, columns = b.shape
    rtol = positive(rtol, "rtol")
    count = len(function(torch.ones(1, dtype=b.dtype, device=b.device)))
    if not bool((b != 0).any()):   # f(A) 0 = 0
        return torch.zeros(count, n, columns, dtype=b.dtype, device=b.device), 0
    limit = min(n, 1000) if max_iterations is None else min(positive_int(max_iterations, "max_iterations"), n)
    norms = b.norm(dim=0)
    basis = [b / norms.clamp_min(torch.finfo(b.dtype).tiny)]
    diagonal: list[torch.Tensor] = []
    off_diagonal: list[torch.Tensor] = []
    open_columns = norms > 0            # a zero column is done: f(A) 0 = 0
    lengths = torch.zeros(columns, dtype=torch.long)
    coefficients: list[torch.Tensor | None] = [None] * columns
    change = torch.zeros(columns, dtype=b.dtype)
    quiet = torch.zeros(columns, dtype=torch.long)     # consecutive steps below rtol
    bar = tqdm(total=limit, desc="Lanczos", unit="step", leave=False, delay=0 if progress else PROGRESS_DELAY,
               disable=progress is False)
    steps = 0
    with bar:
        while bool(open_columns.any()) and steps < limit:
            q = basis[-1]
            _check_basis_fits(len(basis) + 1, q, steps, float(change.max()))
            w = operator.matmul(q) + shift * q
            diagonal.append((q * w).sum(0))
            stacked = torch.stack(basis)                                     # [k, n, c]
            for _ in range(2):                                               # full reorthogonalization
                w = w - torch.einsum("knc,kc->nc", stacked, torch.einsum("knc,nc->kc", stacked, w))
            beta = w.norm(dim=0)
            steps += 1
            for column in torch.nonzero(open_columns).flatten().tolist():
                new = _coefficients(diagonal, off_diagonal, column, function)
                old = coefficients[column]
                moved = new.clone()
                if old is not None:
                    moved[:, :old.shape[1]] -= old
                change[column] = float(moved.norm() / new.norm().clamp_min(torch.finfo(b.dtype).tiny))
                quiet[column] = quiet[column] + 1 if float(change[column]) < rtol else 0
                coefficients[column], lengths[column] = new, steps
                # converged, or the Krylov space is invariant (exact): beta at rounding's level
                if int(quiet[column]) >= QUIET_STEPS or float(beta[column]) <= n * torch.finfo(b.dtype).eps * float(
                        torch.stack(diagonal)[:, column].abs().max()):
                    open_columns[column] = False
            off_diagonal.append(beta)
            basis.append(torch.where(open_columns, w / beta.clamp_min(torch.finfo(b.dtype).tiny), 0.0))
            bar.update()
            bar.set_postfix(change=f"{float(change.max()):.1e}", refresh=False)
    if bool(open_columns.any()):
        warnings.warn(f"Lanczos stopped after {steps} steps with a relative change of {float(change.max()):.3g} > "
                      f"rtol={rtol:g} in the last one; raise max_iterations or diag_reg, or ask for a larger rtol",
                      RuntimeWarning, stacklevel=2)
    stacked = torch.stack(basis[:-1])                                        # [k, n, c]
    out = torch.zeros(count, n, columns, dtype=b.dtype, device=b.device)
    for column, coefficient in enumerate(coefficients):
        if coefficient is not None:
            k = int(lengths[column])
            out[:, :, column] = norms[column] * (coefficient @ stacked[:k, :, column])
    return out, steps


def _check_basis_fits(vectors: int, q: torch.Tensor, steps: int, change: float) -> None:
    needed = 2 * vectors * q.numel() * q.element_size()     # the basis and its stacked copy
    if needed > available_memory(q.device):
        raise ValueError(f"the Lanczos basis after {steps} steps needs {needed / 2 ** 30:.1f} GiB, more than "
                         f"the memory available on {q.device} (relative change {change:.2g}): "
                         f"give a larger rtol, fewer columns of b at once, or a larger diag_reg")


def _coefficients(diagonal, off_diagonal, column: int, function) -> torch.Tensor:
    """f(T_k) e_1 `[F, k]` for one column's tridiagonal T_k."""
    alpha = torch.stack([a[column] for a in diagonal])
    beta = torch.stack([o[column] for o in off_diagonal]) if off_diagonal else alpha[:0]
    tridiagonal = torch.diag(alpha) + torch.diag(beta, 1) + torch.diag(beta, -1)
    theta, s = torch.linalg.eigh(tridiagonal)
    scale = float(theta.abs().max())
    if float(theta[0]) < -100 * len(theta) * torch.finfo(theta.dtype).eps * scale:
        raise ValueError(f"the kernel (plus its ridge) is not positive semi-definite: the Lanczos process found an "
                         f"eigenvalue near {float(theta[0]):.3g} (largest {scale:.3g}); give diag_reg larger than "
                         f"its most negative eigenvalue, or check it with nk.predict.solve on a subset")
    return (function(theta.clamp_min(0)) * s[0]) @ s.T
