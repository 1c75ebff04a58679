"""Linear algebra of kernel regression: the diagonal regularizer, the checks of a train-train
kernel (`checked_kernel`: symmetric and positive semi-definite up to rounding), Cholesky/LU
factorizations, interpolation alpha = K^-1 y and ridge alpha = (K + lambda I)^-1 y, and
the closed-form gradient flow on the MSE (`GradientFlow`) that the predictions share."""
from __future__ import annotations

import math
from typing import Any, Callable, Literal, overload

import torch

from .._core.validation import DEFAULT_DTYPE, as_tensor, as_targets, positive, positive_int


def ridge(diag_reg: float, absolute_scale: bool, mean_diagonal: Callable[[], float]) -> float:
    """lambda = diag_reg * s with s = 1 (`absolute_scale`) or the mean diagonal of the kernel,
    `mean_diagonal()`, read only when needed (for a kernel in a store it is a pass over the store)."""
    diag_reg = positive(diag_reg, "diag_reg", allow_zero=True)
    return diag_reg if diag_reg == 0 or absolute_scale else diag_reg * mean_diagonal()


def add_diagonal_regularizer(k: torch.Tensor, diag_reg: float,
                             absolute_scale: bool = False) -> torch.Tensor:
    """K + diag_reg * s * I with s = 1 (absolute) or s = mean(diag(K)) (neural-tangents' default).

    Parameters
    ----------
    k : tensor
    diag_reg : float
    absolute_scale : bool

    Returns
    -------
    torch.Tensor

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> k = torch.tensor([[2.0, 1.0], [1.0, 4.0]], dtype=torch.float64)
    >>> nk.predict.add_diagonal_regularizer(k, 0.5)          # + 0.5 * mean(diag K) * I
    tensor([[3.5000, 1.0000],
            [1.0000, 5.5000]], dtype=torch.float64)
    """
    shift = ridge(diag_reg, absolute_scale, lambda: float(k.diagonal().mean()))
    if shift == 0:
        return k
    return k + shift * torch.eye(k.shape[0], dtype=k.dtype, device=k.device)


def square_kernel(k: Any, name: str) -> torch.Tensor:
    """`k` as a floating square matrix (ValueError naming `name` otherwise)."""
    k = as_tensor(k, name, dtype=k.dtype if isinstance(k, torch.Tensor) and k.is_floating_point()
                  else DEFAULT_DTYPE)
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"{name} must be a square [N, N] kernel matrix, got shape {tuple(k.shape)}")
    return k


SYMMETRY_TOLERANCE = 10.0
"""A kernel may be asymmetric by up to SYMMETRY_TOLERANCE * sqrt(eps) * max|K| (1.5e-7 of its
largest entry in float64, 3.5e-3 in float32): arc-cosine kernels (ReLU and its relatives) lose
half their digits at coincident inputs, where theta = arccos(rho) has infinite slope, so
k(x, x) computed with x2 given is asymmetric at about sqrt(eps) there (measured: at most
0.6 sqrt(eps) max|K| for duplicated 1000-dimensional inputs).  A matrix that is not a kernel
is asymmetric at O(1)."""

DEFINITENESS_TOLERANCE = 1.0
"""A kernel counts as positive semi-definite when lambda_min(G) >= -tau with
tau = DEFINITENESS_TOLERANCE * eps * N * ||G||_inf (||G||_inf, the largest absolute row sum,
bounds every |eigenvalue| and costs no eigendecomposition): eigenvalues in [-tau, 0) are the
rounding of a singular PSD kernel (measured: at most 0.015 eps N lambda_max for duplicated inputs,
rank-deficient linear kernels, analytic and empirical NTKs, float32 and float64) and are
treated as 0."""


def definiteness_tolerance(g: torch.Tensor) -> float:
    """tau of `DEFINITENESS_TOLERANCE` for the symmetric matrix `g`."""
    return (DEFINITENESS_TOLERANCE * torch.finfo(g.dtype).eps * g.shape[0]
            * float(g.abs().sum(1).max()))


def symmetric(k: torch.Tensor, name: str) -> torch.Tensor:
    """(K + K^T) / 2 of a square `k` whose asymmetry is rounding (see `SYMMETRY_TOLERANCE`);
    a larger asymmetry is refused with its size."""
    scale = float(k.abs().max())
    asymmetry = float((k - k.T).abs().max())
    tolerance = SYMMETRY_TOLERANCE * math.sqrt(torch.finfo(k.dtype).eps) * scale
    if asymmetry > tolerance:
        raise ValueError(
            f"{name} is not symmetric: max |K - K^T| = {asymmetry:.3g} ({asymmetry / scale:.3g} of "
            f"max |K|, rounding allows {tolerance / scale:.2g}); a kernel matrix is symmetric: pass "
            f"the train-train kernel K(X, X), or (K + K.T) / 2 if the asymmetry is noise")
    return (k + k.T) / 2


@overload
def checked_kernel(k: Any, name: str = ..., *, diag_reg: float | None = ...,
                   diag_reg_absolute_scale: bool = ..., allow_indefinite: bool | None = ...,
                   with_cholesky: Literal[False] = ...) -> torch.Tensor: ...


@overload
def checked_kernel(k: Any, name: str = ..., *, diag_reg: float | None = ...,
                   diag_reg_absolute_scale: bool = ..., allow_indefinite: bool | None = ...,
                   with_cholesky: Literal[True]) -> tuple[torch.Tensor, torch.Tensor | None]: ...


def checked_kernel(k: Any, name: str = "k_train_train", *, diag_reg: float | None = 0.0,
                   diag_reg_absolute_scale: bool = False, allow_indefinite: bool | None = False,
                   with_cholesky: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
    """The regularized train-train kernel G = (K + K^T) / 2 + diag_reg s I of every prediction
    (s = 1 or mean(diag K), as `add_diagonal_regularizer`), checked once: square, finite,
    symmetric up to rounding (`SYMMETRY_TOLERANCE`) and positive semi-definite up to rounding
    (`DEFINITENESS_TOLERANCE`; one Cholesky factorization of G + tau I, an eigendecomposition
    only when that fails).  An indefinite G is refused with its most negative eigenvalue and
    the diag_reg that fixes it (`diag_reg=None`: for a caller without that argument, the
    `add_diagonal_regularizer` call that does); `allow_indefinite=True` skips the
    definiteness check (the caller then handles negative eigenvalues exactly), `None`
    refuses without offering it.  `with_cholesky=True` returns `(G, L)` with the Cholesky
    factor L of G when G is positive definite (None when it is only semi-definite), so that a
    caller that solves with G factorizes it once (`Factorization(G, cholesky=L)`).

    Examples
    --------
    >>> import torch
    >>> from ntklab.predict.linalg import checked_kernel
    >>> k = torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=torch.float64)     # eigenvalues 3, -1
    >>> checked_kernel(k, diag_reg=1.5)
    tensor([[2.5000, 2.0000],
            [2.0000, 2.5000]], dtype=torch.float64)
    >>> checked_kernel(k)
    Traceback (most recent call last):
    ...
    ValueError: k_train_train is indefinite: its most negative eigenvalue is -1 = -0.333 x the
    largest (3), beyond rounding (-1.3e-15); pass diag_reg >= 1 (relative to the mean diagonal 1) ...
    """
    k = square_kernel(k, name)
    g = add_diagonal_regularizer(symmetric(k, name), diag_reg or 0.0, diag_reg_absolute_scale)
    if allow_indefinite:
        return (g, None) if with_cholesky else g
    cholesky, info = torch.linalg.cholesky_ex(g)
    if int(info) == 0:                 # positive definite: the common case, one factorization
        return (g, cholesky) if with_cholesky else g
    n, tau = g.shape[0], definiteness_tolerance(g)
    if int(torch.linalg.cholesky_ex(g + tau * torch.eye(n, dtype=g.dtype, device=g.device))[1]) == 0:
        return (g, None) if with_cholesky else g
    evals = torch.linalg.eigvalsh(g)
    smallest, largest = float(evals[0]), float(evals[-1])
    if smallest >= -tau:
        return (g, None) if with_cholesky else g
    absolute = diag_reg_absolute_scale or float(k.diagonal().mean()) <= 0
    scale = 1.0 if absolute else float(k.diagonal().mean())
    least = (diag_reg or 0.0) - smallest / scale
    digits = 10.0 ** (math.floor(math.log10(least)) - 1)
    needed = f"{math.ceil(least / digits) * digits:.2g}"     # rounded up: enough, as printed
    fix = (f"pass diag_reg >= {needed}" + (" with diag_reg_absolute_scale=True" if absolute else
                                          f" (relative to the mean diagonal {scale:.3g})")
           if diag_reg is not None else
           f"regularize it first, nk.predict.add_diagonal_regularizer({name}, {needed}"
           + (", absolute_scale=True)" if absolute else ")"))
    raise ValueError(
        f"{name} is indefinite: its most negative eigenvalue is {smallest:.3g}"
        + (f" = {smallest / largest:.3g} x the largest ({largest:.3g})" if largest > 0 else "")
        + f", beyond rounding ({-tau:.2g}); {fix} to make it positive definite"
        + (", or allow_indefinite=True for the exact dynamics, which diverge along the negative "
           "eigenvalues" if allow_indefinite is False else ""))


class Factorization:
    """Cholesky (or LU) factorization of a regularized train-train kernel.

    Parameters
    ----------
    k : tensor [N, N]
    name : str
        The argument's name in error messages.
    diag_reg, diag_reg_absolute_scale
        Ridge, relative to the mean diagonal by default.
    assume_psd : bool or None
        Cholesky (True) or LU (False); None: Cholesky, with an error message that suggests no LU.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> k = torch.tensor([[2.0, 1.0], [1.0, 4.0]], dtype=torch.float64)
    >>> factor = nk.predict.Factorization(k)
    >>> factor.solve(torch.tensor([[3.0], [5.0]], dtype=torch.float64))
    tensor([[1.0000],
            [1.0000]], dtype=torch.float64)
    """

    def __init__(self, k: torch.Tensor, name: str = "k_train_train", *, diag_reg: float = 0.0,
                 diag_reg_absolute_scale: bool = False, assume_psd: bool | None = True,
                 cholesky: torch.Tensor | None = None):
        """`assume_psd=None`: Cholesky, for callers that offer no LU alternative (their
        error message then does not suggest one).  `cholesky`: the factor of the (symmetric)
        `k` that `checked_kernel(..., with_cholesky=True)` already computed."""
        if cholesky is not None:
            self.assume_psd, self.factor = True, cholesky
            return
        k = add_diagonal_regularizer(square_kernel(k, name), diag_reg, diag_reg_absolute_scale)
        offers_lu, assume_psd = assume_psd is not None, assume_psd is not False
        self.assume_psd = assume_psd
        if assume_psd:  # Cholesky reads one triangle: an asymmetric k is refused, not truncated
            k = symmetric(k, name)
            factor, info = torch.linalg.cholesky_ex(k)
            if int(info) != 0:
                smallest = float(torch.linalg.eigvalsh(k)[0])
                raise ValueError(
                    f"{name} is singular or not positive definite (smallest eigenvalue "
                    f"{smallest:.3g}, Cholesky failed at pivot {int(info)}); pass a positive "
                    f"diag_reg (e.g. diag_reg=1e-6, relative to the mean diagonal) to regularize"
                    + (", or assume_psd=False for an indefinite but invertible kernel" if offers_lu
                       else ""))
            self.factor = factor
        else:
            lu, pivots, info = torch.linalg.lu_factor_ex(k)
            if int(info) != 0:
                raise ValueError(f"{name} is singular (LU found a zero pivot at {int(info)}); "
                                 f"pass a positive diag_reg to regularize")
            self.factor, self.pivots = lu, pivots

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:
        """K^-1 rhs."""
        if self.assume_psd:
            return torch.cholesky_solve(rhs, self.factor)
        return torch.linalg.lu_solve(self.factor, self.pivots, rhs)


def solve(k_train_train, y_train, *, diag_reg: float = 0.0, diag_reg_absolute_scale: bool = False,
          assume_psd: bool = True) -> torch.Tensor:
    """alpha = (K + diag_reg I)^-1 y (interpolation when diag_reg = 0, lecture 21).

    Parameters
    ----------
    k_train_train, y_train : tensors
    diag_reg, diag_reg_absolute_scale
        Ridge, relative to the mean diagonal by default.
    assume_psd : bool
        Cholesky (True) or LU.

    Returns
    -------
    torch.Tensor
        alpha with (K + ridge) alpha = y.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> theta = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    >>> y = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    >>> alpha = nk.predict.solve(theta, y)
    >>> bool(torch.allclose(theta @ alpha, y))
    True
    """
    k = square_kernel(k_train_train, "k_train_train")
    y, vector = as_targets(y_train, k.shape[0], "y_train", k.dtype, k.device)
    alpha = Factorization(k, diag_reg=diag_reg, diag_reg_absolute_scale=diag_reg_absolute_scale,
                          assume_psd=assume_psd).solve(y)
    return alpha[:, 0] if vector else alpha


def kernel_regression(k_train_train, y_train, k_test_train, **solve_kwargs) -> torch.Tensor:
    """f(x) = sum_i alpha_i K(x, x_i) at the test points, alpha from `solve`.

    Parameters
    ----------
    k_train_train, y_train, k_test_train : tensors
    **solve_kwargs
        As `solve`.

    Returns
    -------
    torch.Tensor
        `[N_test, O]`.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> x = torch.linspace(-1, 1, 8, dtype=torch.float64)[:, None]
    >>> k = nk.kernels.GaussianKernel(0.5)
    >>> f = nk.predict.kernel_regression(k(x, x), torch.sin(3 * x), k(x[:3], x))
    >>> bool(torch.allclose(f, torch.sin(3 * x[:3])))             # interpolates
    True
    """
    alpha = solve(k_train_train, y_train, **solve_kwargs)
    k_td = as_tensor(k_test_train, "k_test_train", dtype=alpha.dtype, device=alpha.device)
    if k_td.ndim != 2 or k_td.shape[1] != alpha.shape[0]:
        raise ValueError(f"k_test_train must have shape [N_test, {alpha.shape[0]}], "
                         f"got {tuple(k_td.shape)}")
    return k_td @ alpha


class GradientFlow:
    """Gradient flow df/dt = -(lr / |Y|) G (f - Y) on a regularized train-train kernel
    G = K + diag_reg s I (ntklab's loss convention, see the module docstring), in the
    closed forms that all MSE predictions share.  G is checked by `checked_kernel`;
    its Cholesky factor and eigendecomposition are computed once, when first needed.

    `solve(rhs, times)`: G^-1 (I - e^{-lr G t / |Y|}) rhs, [T, N, M] for the times t
    ([N, M], G^-1 rhs, for `times=None`, t = infinity); `doubled` uses rate 2 lr.
    `decay(times)`: e^{-lr G t / |Y|}, [T, N, N].
    Eigenvalues within rounding of 0 (`DEFINITENESS_TOLERANCE`) count as 0; with
    `allow_indefinite=True` none is changed, so negative eigenvalues make the flow grow
    exactly as e^{lr |lambda| t / |Y|}, and a result beyond the dtype's range is refused.

    Parameters
    ----------
    k_train_train : tensor [N, N]
    y_size : int
        |Y| of the loss convention.
    learning_rate, diag_reg, diag_reg_absolute_scale, allow_indefinite
        As `gradient_descent_mse`.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> k = torch.tensor([[2.0, 1.0], [1.0, 4.0]], dtype=torch.float64)
    >>> y = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    >>> flow = nk.predict.GradientFlow(k, y_size=y.numel())
    >>> bool(torch.allclose(k @ flow.solve(y, None), y))      # t = infinity: G^-1 y
    True
    """

    def __init__(self, k_train_train: torch.Tensor, y_size: int, *, learning_rate: float = 1.0,
                 diag_reg: float = 0.0, diag_reg_absolute_scale: bool = False,
                 name: str = "k_train_train", allow_indefinite: bool = False):
        self.kernel, self._cholesky = checked_kernel(
            k_train_train, name, diag_reg=diag_reg, diag_reg_absolute_scale=diag_reg_absolute_scale,
            allow_indefinite=allow_indefinite, with_cholesky=True)
        self.tolerance = definiteness_tolerance(self.kernel)
        self.rate = positive(learning_rate, "learning_rate") / positive_int(y_size, "y_size")
        self.name, self.allow_indefinite = name, allow_indefinite
        self._eigenspace: tuple[torch.Tensor, torch.Tensor] | None = None
        self._factorization: Factorization | None = None

    @property
    def eigenspace(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(eigenvalues, eigenvectors) of G; eigenvalues within rounding of 0 (`tolerance`) are 0,
        so they are >= 0 unless `allow_indefinite`."""
        if self._eigenspace is None:
            evals, evecs = torch.linalg.eigh(self.kernel)   # rounding of 0 is 0 (`tolerance`)
            rounding = (evals < 0) & (evals >= -self.tolerance)
            self._eigenspace = (evals.masked_fill(rounding, 0.0), evecs)
        return self._eigenspace

    @property
    def factorization(self) -> Factorization:
        """The Cholesky (or eigen-) factorization of the kernel, computed once."""
        if self._factorization is None:
            self._factorization = Factorization(self.kernel, self.name, assume_psd=None,
                                                cholesky=self._cholesky)
        return self._factorization

    def _finite(self, result: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
        """`result`, unless the flow outgrew the dtype (only negative eigenvalues make it grow)."""
        if not bool(torch.isfinite(result).all()):
            raise ValueError(
                f"gradient flow on {self.name} diverges beyond {result.dtype}'s range at the times "
                f"asked for: the mode of its most negative eigenvalue "
                f"{float(self.eigenspace[0][0]):.3g} grows as e^{float(exponent.max()):.4g}; ask "
                f"for smaller times, or pass a diag_reg that makes the kernel positive definite")
        return result

    def solve(self, rhs: torch.Tensor, times: torch.Tensor | None = None, *,
              doubled: bool = False) -> torch.Tensor:
        """G_t rhs = (I - e^{-rate t K}) K^{-1} rhs per time [T, N, M] (`times=None`: K^{-1} rhs);
        `doubled` uses twice the rate (the covariance's e^{-2 rate t K})."""
        if times is None:
            return self.factorization.solve(rhs)
        evals, evecs = self.eigenspace
        rate = self.rate * (2 if doubled else 1)
        exponent = -rate * times[:, None] * evals[None, :]
        safe = torch.where(evals == 0, torch.ones_like(evals), evals)
        coef = torch.where(evals == 0, rate * times[:, None].expand_as(exponent),
                           -torch.expm1(exponent) / safe)
        return self._finite(torch.einsum("ij,tj,kj,km->tim", evecs, coef, evecs, rhs), exponent)

    def decay(self, times: torch.Tensor) -> torch.Tensor:
        """e^{-rate t K} per time, [T, N, N]."""
        evals, evecs = self.eigenspace
        exponent = -self.rate * times[:, None] * evals[None, :]
        return self._finite(torch.einsum("ij,tj,kj->tik", evecs, torch.exp(exponent), evecs), exponent)
