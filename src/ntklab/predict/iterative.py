"""Kernel regression that never holds the n x n matrix in memory.

* `conjugate_gradients`: alpha = (K + lambda I)^-1 y by preconditioned conjugate gradients (Hestenes &
  Stiefel 1952; Saad, "Iterative methods for sparse linear systems", Alg. 9.1), one column of y or many
  at once.  K is anything with `matmul`, `diagonal`, `shape` and `dtype`: a tensor, or
  `nk.kernels.StoredKernel`, whose products stream the tiles of a kernel store (one pass per iteration).
* `NystromPreconditioner` (module `nystrom`): P^-1 v = (Lambda_r + lambda) U (Lambda + lambda I)^-1 U^T v +
  (I - U U^T) v from K ~ U diag(Lambda) U^T (Frangella, Tropp & Udell 2023, eq. 5.3), randomized (one product
  K Omega) or on m training points as centers (`NystromPreconditioner.from_centers`, computed from the
  architecture, no pass over a store).
* `nystrom_regression`: kernel ridge regression restricted to the span of m centers (Williams &
  Seeger 2001; Rudi, Camoriano & Rosasco 2015): alpha = (K_nm^T K_nm + lambda K_mm)^-1 K_nm^T y and
  f(x) = K(x, centers) alpha; K_nm is computed and used in blocks of rows (memory m^2 + block m), so
  the cost is O(n m^2) time and O(m^2) memory.  With every training point a center it is exact ridge
  regression, f = K_x (K + lambda I)^-1 y.
* `feature_regression`: ridge regression on a feature map phi (e.g. the random features of the NNGP/NTK,
  `nk.kernels.RandomFeatures`): w = (Phi^T Phi + lambda I)^-1 Phi^T y and f(x) = phi(x) . w, which is kernel
  ridge regression with the kernel phi(x) . phi(x') (the push-through identity
  Phi^T (Phi Phi^T + lambda I)^-1 = (Phi^T Phi + lambda I)^-1 Phi^T); Phi is computed in blocks of rows, so
  the cost is O(n D^2) time and O(D^2) memory for D features.

Regularization follows `solve`: `diag_reg` relative to the mean diagonal of the train-train kernel
unless `diag_reg_absolute_scale` (`nystrom_regression` and `feature_regression` also take per-sample
weights: the ridge then has noise lambda / w_i for sample i and the mean diagonal is weighted).

Why not a library: scipy's `cg` solves one right-hand side at a time in numpy on the CPU, and
GPyTorch's `linear_operator` (modified batch CG) is not a dependency of ntklab; the PCG loop here is
twenty lines of torch that run on the kernel's device for all columns of y at once.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from .._core.tiling import PROGRESS_DELAY
from .._core.validation import DEFAULT_DTYPE, as_targets, as_tensor, check_result_fits, positive, positive_int
from .linalg import ridge
from .nystrom import NystromPreconditioner, draw_centers, kernel_function


class _DenseKernel:
    """A kernel matrix in memory as an operator."""

    def __init__(self, k: torch.Tensor):
        self.k = k
        self.shape = tuple(k.shape)
        self.dtype = k.dtype
        self.device = k.device

    def matmul(self, v: torch.Tensor) -> torch.Tensor:
        return self.k @ v

    def diagonal(self) -> torch.Tensor:
        return self.k.diagonal()


def as_operator(k: Any, name: str = "k_train_train"):
    """`k` as an operator: a square matrix (tensor or array) is wrapped; an object with
    `matmul`, `diagonal`, `shape` and `dtype` (e.g. `nk.kernels.StoredKernel`) is used as it is."""
    if all(hasattr(k, attribute) for attribute in ("matmul", "diagonal", "shape", "dtype")) \
            and not isinstance(k, torch.Tensor):
        operator = k
    else:
        k = torch.as_tensor(k)
        k = k.to(DEFAULT_DTYPE) if not k.is_floating_point() else k
        operator = _DenseKernel(k)
    if len(operator.shape) != 2 or operator.shape[0] != operator.shape[1]:
        raise ValueError(f"{name} must be a square kernel matrix, got shape {tuple(operator.shape)}")
    return operator


@dataclass(frozen=True)
class CGResult:
    """The solution of (K + lambda I) alpha = y, with the iterations CG took and the final relative
    residual ||y - (K + lambda I) alpha|| / ||y|| of each column (computed, not the recursion's)."""

    solution: torch.Tensor
    iterations: int
    relative_residual: torch.Tensor
    converged: bool


def conjugate_gradients(k_train_train, y_train, *, diag_reg: float = 0.0, diag_reg_absolute_scale: bool = False,
                        preconditioner: str | Callable | None = "nystrom", rank: int = 100, rtol: float = 1e-8,
                        max_iterations: int | None = None, seed: int = 0,
                        progress: bool | None = None) -> CGResult:
    """alpha = (K + lambda I)^-1 y by preconditioned conjugate gradients, K never formed when it is an
    operator (e.g. `nk.kernels.StoredKernel` of a store); lambda = diag_reg times the mean diagonal
    (or diag_reg itself with `diag_reg_absolute_scale`).

    Parameters
    ----------
    k_train_train
        `[n, n]` tensor or array, or an operator with `matmul`, `diagonal`, `shape`, `dtype`.
    y_train : tensor or array
        `[n]` or `[n, m]`: the m columns are solved together.
    diag_reg, diag_reg_absolute_scale
        As `solve`.
    preconditioner : "nystrom", NystromPreconditioner, None or callable
        "nystrom": the randomized `NystromPreconditioner` of rank `rank` (one product K Omega: a pass over a
        store with `rank` columns); a `NystromPreconditioner` (e.g. `NystromPreconditioner.from_centers(net,
        x_train, centers=m)`, no pass over a store) used for this system's lambda; None: plain CG; a
        callable r -> P^-1 r.
    rank : int
        Rank of the randomized Nystrom preconditioner.
    rtol : float
        Stop when every column's relative residual is below `rtol`.
    max_iterations : int, optional
        Default max(n, 1000) (in floating point CG may need more than n).  Reaching it, or 50
        iterations without progress (the rounding floor of an ill-conditioned system), warns
        (RuntimeWarning) with the residual.
    seed : int
        The preconditioner's random probes.
    progress : bool, optional
        A bar over iterations: shown once the solve has lasted 2 s (default), always (True) or never (False).

    Returns
    -------
    CGResult

    Raises
    ------
    ValueError
        When K + lambda I is not positive definite along a search direction (an indefinite kernel):
        the message gives p^T (K + lambda I) p and the fix.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> x = torch.randn(50, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    >>> k = nk.mlp(2, 8).kernel(x, get="ntk")
    >>> y = torch.sin(x[:, :1])
    >>> result = nk.predict.conjugate_gradients(k, y, diag_reg=1e-3, rank=20, progress=False)
    >>> exact = nk.predict.solve(k, y, diag_reg=1e-3)
    >>> bool(torch.allclose(result.solution, exact, rtol=1e-6, atol=1e-8)), result.converged
    (True, True)
    """
    operator = as_operator(k_train_train)
    n = operator.shape[0]
    b, vector = as_targets(y_train, n, "y_train", operator.dtype, operator.device)
    rtol = positive(rtol, "rtol")
    max_iterations = max(n, 1000) if max_iterations is None else positive_int(max_iterations, "max_iterations")
    shift = ridge(diag_reg, diag_reg_absolute_scale, lambda: float(operator.diagonal().mean()))
    apply_preconditioner: Callable[[torch.Tensor], torch.Tensor]
    if isinstance(preconditioner, NystromPreconditioner):
        if preconditioner.u.shape[0] != n:
            raise ValueError(f"the NystromPreconditioner approximates a kernel of {preconditioner.u.shape[0]} "
                             f"samples, this system has {n}: build it on the same x_train")
        apply_preconditioner = preconditioner.with_shift(shift, operator.dtype, operator.device)
    elif preconditioner == "nystrom":
        apply_preconditioner = NystromPreconditioner(operator, rank, shift, seed)
    elif preconditioner is None:
        apply_preconditioner = lambda r: r  # noqa: E731
    elif callable(preconditioner):
        apply_preconditioner = preconditioner
    else:
        raise ValueError(f"preconditioner must be 'nystrom', a NystromPreconditioner, None or a function "
                         f"r -> P^-1 r, "
                         f"got {preconditioner!r}")
    solution, iterations, recursive = _pcg(operator, b, shift, apply_preconditioner, rtol, max_iterations, progress)
    # the residual the recursion updates drifts from the true one in floating point: report the true one
    residual = (b - operator.matmul(solution) - shift * solution).norm(dim=0) / b.norm(dim=0).clamp_min(
        torch.finfo(b.dtype).tiny)
    converged = bool((residual <= rtol).all())
    if not converged:
        floor = "below about eps times the condition number of K + lambda I no iteration helps"
        why = (f"the recursively updated residual reached rtol but the true one did not: {floor}"
               if bool((recursive <= rtol).all()) else f"max_iterations={max_iterations} reached"
               if iterations == max_iterations else f"no progress in {STAGNATION} iterations: {floor}, or the "
               f"preconditioner is not symmetric positive definite")
        warnings.warn(f"conjugate gradients stopped after {iterations} iterations with relative residual "
                      f"||y - (K + lambda I) alpha|| / ||y|| = {float(residual.max()):.3g} > rtol={rtol:g} ({why}); "
                      f"raise diag_reg or the preconditioner's rank, or ask for a larger rtol", RuntimeWarning,
                      stacklevel=2)
    return CGResult(solution[:, 0] if vector else solution, iterations, residual, converged)


STAGNATION = 50   # iterations without a 10 % better residual after which CG stops (see _pcg)


def _pcg(operator, b, shift, apply_preconditioner, rtol, max_iterations, progress):
    """The PCG loop for all columns of b at once (each column its own step sizes; a converged
    column stops moving).  It also stops when the largest residual has not improved by 10 % in
    `STAGNATION` iterations: in floating point CG's residual levels off near eps times the condition
    number of K + lambda I, below which no iteration helps."""
    norm_b = b.norm(dim=0).clamp_min(torch.finfo(b.dtype).tiny)
    x = torch.zeros_like(b)
    r = b.clone()
    z = apply_preconditioner(r)
    p = z.clone()
    rz = (r * z).sum(0)
    residual = r.norm(dim=0) / norm_b
    best, since_best = float(residual.max()), 0
    bar = tqdm(total=max_iterations, desc="conjugate gradients", unit="it", leave=False,
               delay=0 if progress else PROGRESS_DELAY, disable=progress is False)
    iterations = 0
    with bar:
        while iterations < max_iterations and not bool((residual <= rtol).all()):
            active = residual > rtol
            ap = operator.matmul(p) + shift * p
            curvature = (p * ap).sum(0)
            if not bool(torch.isfinite(curvature).all()):
                raise ValueError("conjugate gradients produced non-finite values (an overflow, or a preconditioner "
                                 "that is not symmetric positive definite); check the kernel's entries and give "
                                 "diag_reg > 0")
            if bool((curvature[active] <= 0).any()):
                raise ValueError(f"K + diag_reg I is not positive definite: along a conjugate-gradient direction "
                                 f"p^T (K + lambda I) p = {float(curvature[active].min()):.3g} <= 0 (lambda = "
                                 f"{shift:.3g}); the kernel is singular or indefinite: give diag_reg > 0 (larger "
                                 f"than its most negative eigenvalue), or check it with nk.predict.solve on a subset")
            alpha = torch.where(active, rz / torch.where(active, curvature, 1.0), 0.0)
            x += alpha * p
            r -= alpha * ap
            residual = r.norm(dim=0) / norm_b
            z = apply_preconditioner(r)
            rz_next = (r * z).sum(0)
            beta = torch.where(active, rz_next / torch.where(active, rz, 1.0), 0.0)
            p = z + beta * p
            rz = rz_next
            iterations += 1
            bar.update()
            bar.set_postfix(residual=f"{float(residual.max()):.2e}", refresh=False)
            best, since_best = ((float(residual.max()), 0) if float(residual.max()) < 0.9 * best
                                else (best, since_best + 1))
            if since_best >= STAGNATION:   # rounding's floor, about eps times the condition number
                break
    return x, iterations, residual


@dataclass(frozen=True)
class NystromRegression:
    """Kernel ridge regression on `centers`: f(x) = K(x, centers) alpha (`predict`)."""

    kernel: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
    centers: torch.Tensor
    center_index: torch.Tensor
    alpha: torch.Tensor
    block_size: int
    vector: bool
    dtype: torch.dtype

    def predict(self, x_test) -> torch.Tensor:
        """f(x_test) = K(x_test, centers) alpha, computed in blocks of `block_size` rows in float64,
        returned in the training inputs' dtype."""
        x_test = torch.as_tensor(x_test, dtype=self.centers.dtype, device=self.centers.device)
        out = torch.cat([self.kernel(x_test[start:start + self.block_size], self.centers) @ self.alpha
                         for start in range(0, len(x_test), self.block_size)]).to(self.dtype)
        return out[:, 0] if self.vector else out


def nystrom_regression(net_or_kernel_fn, x_train, y_train, *, centers: int = 1000, diag_reg: float = 1e-4,
                       diag_reg_absolute_scale: bool = False, get: str = "ntk", block_size: int = 1024,
                       sample_weight=None, seed: int = 0, progress: bool | None = None) -> NystromRegression:
    """Kernel ridge regression on `centers` training points drawn uniformly without replacement (seeded):
    alpha = (K_nm^T W K_nm + lambda K_mm)^-1 K_nm^T W y (W = diag(sample_weight), I without), with K_nm
    computed block by block (never more than `block_size` x m of it at once) and lambda = diag_reg times the
    (weighted) mean diagonal of K_mm (an unbiased estimate of the training set's; the exact one when every
    point is a center).

    Parameters
    ----------
    net_or_kernel_fn : Serial or callable
        An ntklab architecture (its `get` kernel) or `kernel_fn(x1, x2) -> [N1, N2]` tensor.
    x_train, y_train : tensor or array
    centers : int
        m <= n (a repeated input counts once: `center_index` may hold fewer).
    diag_reg, diag_reg_absolute_scale
        As `solve`.
    get : {"ntk", "nngp"}
    block_size : int
        Rows of K_nm per block.
    sample_weight : tensor or array, optional
        `[n]` positive weights of the squared errors (noise lambda / w_i for sample i).
    seed : int
    progress : bool, optional

    Returns
    -------
    NystromRegression
        `.predict(x_test)`, `.alpha` `[m, O]`, `.center_index`.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> x = torch.randn(200, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    >>> y = torch.sin(x[:, :1])
    >>> model = nk.predict.nystrom_regression(nk.mlp(2, 8), x, y, centers=200, diag_reg=1e-3)
    >>> k = nk.mlp(2, 8).kernel(x, get="ntk")
    >>> exact = k @ nk.predict.solve(k, y, diag_reg=1e-3)    # all points as centers: exact ridge
    >>> bool(torch.allclose(model.predict(x), exact, atol=1e-6))
    True
    """
    kernel = kernel_function(net_or_kernel_fn, get)
    x_train = torch.as_tensor(x_train)
    x_train = x_train.to(DEFAULT_DTYPE) if not x_train.is_floating_point() else x_train
    n = len(x_train)
    # the normal equations square the condition number: they are formed and solved in float64 whatever
    # the inputs' dtype (float32 lost everything: 0.6 off on targets of size 1, measured)
    y, vector = as_targets(y_train, n, "y_train", torch.float64, x_train.device)
    block_size = positive_int(block_size, "block_size")
    positive(diag_reg, "diag_reg", allow_zero=True)   # before any kernel is computed
    weights = as_weights(sample_weight, n, x_train.device)
    index, chosen = draw_centers(x_train, centers, seed)
    m = len(index)
    check_result_fits((m, m), 3, torch.float64, x_train.device,
                      "Nystrom regression holds K_mm, K_nm^T K_nm and its factor (m x m float64); give fewer centers")
    k_mm = kernel(chosen, None)
    gram = torch.zeros(m, m, dtype=k_mm.dtype, device=k_mm.device)
    rhs = torch.zeros(m, y.shape[1], dtype=k_mm.dtype, device=k_mm.device)
    show = n > 10 * block_size if progress is None else progress
    for start in tqdm(range(0, n, block_size), desc="K_nm blocks", leave=False, disable=not show):
        k_bm = kernel(x_train[start:start + block_size], chosen)
        weighted = k_bm * weights[start:start + block_size, None]
        gram += weighted.T @ k_bm
        rhs += weighted.T @ y[start:start + block_size]
    center_weights = weights[index.to(weights.device)]
    system = gram + ridge(diag_reg, diag_reg_absolute_scale,
                          lambda: float((center_weights * k_mm.diagonal()).sum() / center_weights.sum())) * k_mm
    factor, info = torch.linalg.cholesky_ex(system)
    if int(info) != 0:
        raise ValueError(f"the Nystrom system K_nm^T K_nm + lambda K_mm on {m} centers is singular in float64 (e.g. "
                         f"repeated centers, or diag_reg=0 with a rank-deficient kernel); give a larger diag_reg")
    alpha = torch.cholesky_solve(rhs, factor)
    return NystromRegression(kernel, chosen, index, alpha, block_size, vector, x_train.dtype)


def as_weights(sample_weight, n: int, device) -> torch.Tensor:
    """`sample_weight` as float64 `[n]` (None: ones), finite and > 0; ValueError naming it otherwise."""
    if sample_weight is None:
        return torch.ones(n, dtype=torch.float64, device=device)
    weights = as_tensor(sample_weight, "sample_weight", dtype=torch.float64, device=device)
    if weights.shape != (n,) or not bool((weights > 0).all()):
        raise ValueError(f"sample_weight must hold one positive weight per training sample, shape ({n},); got "
                         f"shape {tuple(weights.shape)} (leave samples of weight 0 out of x_train)")
    return weights


@dataclass(frozen=True)
class FeatureRegression:
    """Ridge regression on a feature map: f(x) = phi(x) . weights (`predict`).  `relative_residual` is
    ||Phi^T W y - (Phi^T W Phi + lambda I) w|| / ||Phi^T W y|| of each column, computed in float64."""

    feature_map: Callable[[torch.Tensor], torch.Tensor]
    weights: torch.Tensor
    relative_residual: torch.Tensor
    block_size: int
    vector: bool
    dtype: torch.dtype

    def predict(self, x_test) -> torch.Tensor:
        """f(x_test) = phi(x_test) . weights, in blocks of `block_size` rows, returned in the training inputs'
        dtype."""
        x_test = torch.as_tensor(x_test)
        out = torch.cat([self.feature_map(x_test[start:start + self.block_size]).to(torch.float64) @ self.weights
                         for start in range(0, len(x_test), self.block_size)]).to(self.dtype)
        return out[:, 0] if self.vector else out


def feature_regression(feature_map: Callable[[torch.Tensor], torch.Tensor], x_train, y_train, *,
                       diag_reg: float = 1e-4, diag_reg_absolute_scale: bool = False, sample_weight=None,
                       block_size: int = 4096, progress: bool | None = None) -> FeatureRegression:
    """Ridge regression on D features phi(x): w = (Phi^T W Phi + lambda I)^-1 Phi^T W y (W =
    diag(sample_weight), I without), f(x) = phi(x) . w.  This is kernel ridge regression with the kernel
    K(x, x') = phi(x) . phi(x'), f = K(x, X) (K + lambda W^-1)^-1 y (push-through identity), in O(n D^2) time
    and O(D^2 + block_size D) memory: Phi is computed block by block.  lambda = diag_reg times the (weighted)
    mean of |phi(x_i)|^2, the mean diagonal of that kernel (`solve`'s convention), or diag_reg itself with
    `diag_reg_absolute_scale`.  The normal equations are formed and solved in float64.

    With the random features of an architecture (`nk.kernels.RandomFeatures`) this approximates the
    NNGP/NTK regression of `solve`, the error shrinking as the number of features grows (Rahimi & Recht 2007;
    Zandieh et al. 2021).

    Parameters
    ----------
    feature_map : callable
        x `[B, ...]` -> phi(x) `[B, D]` (tensor or array), deterministic (the same map for training and test).
    x_train, y_train : tensor or array
    diag_reg, diag_reg_absolute_scale
        As `solve`.
    sample_weight : tensor or array, optional
        `[n]` positive weights of the squared errors.
    block_size : int
        Rows of Phi per block.
    progress : bool, optional

    Returns
    -------
    FeatureRegression
        `.predict(x_test)`, `.weights` `[D, O]`, `.relative_residual`.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> x = torch.randn(200, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    >>> y = torch.sin(x[:, :1])
    >>> phi = nk.kernels.RandomFeatures(nk.mlp(2, 8), 3, features=256, get="ntk", seed=0)
    >>> model = nk.predict.feature_regression(phi, x, y, diag_reg=1e-3)
    >>> k = phi(x) @ phi(x).T                       # the features' own kernel: exact ridge on it
    >>> bool(torch.allclose(model.predict(x), k @ nk.predict.solve(k, y, diag_reg=1e-3), atol=1e-8))
    True
    """
    if not callable(feature_map):
        raise ValueError(f"feature_map must be a function x -> phi(x) [N, D] (e.g. nk.kernels.RandomFeatures), "
                         f"got {feature_map!r}")
    x_train = torch.as_tensor(x_train)
    n = len(x_train)
    y, vector = as_targets(y_train, n, "y_train", torch.float64, x_train.device)
    positive(diag_reg, "diag_reg", allow_zero=True)   # before any feature is computed
    block_size = positive_int(block_size, "block_size")
    weights = as_weights(sample_weight, n, x_train.device)
    gram, rhs, diagonal = torch.zeros(0), torch.zeros(0), 0.0
    show = n > 10 * block_size if progress is None else progress
    for start in tqdm(range(0, n, block_size), desc="feature blocks", leave=False, disable=not show):
        block = slice(start, start + block_size)
        phi = torch.as_tensor(feature_map(x_train[block])).to(device=y.device, dtype=torch.float64)
        if phi.ndim != 2 or len(phi) != len(y[block]):
            raise ValueError(f"feature_map must return [B, D] features for B inputs, got shape {tuple(phi.shape)}")
        if start == 0:
            check_result_fits((phi.shape[1], phi.shape[1]), 3, torch.float64, y.device,
                              "feature regression holds Phi^T Phi, the system and its factor (D x D float64); give "
                              "fewer features")
            gram, rhs = phi.new_zeros(phi.shape[1], phi.shape[1]), phi.new_zeros(phi.shape[1], y.shape[1])
        weighted = phi * weights[block, None]
        gram += weighted.T @ phi
        rhs += weighted.T @ y[block]
        diagonal += float((weighted * phi).sum())
    shift = ridge(diag_reg, diag_reg_absolute_scale, lambda: diagonal / float(weights.sum()))
    system = gram + shift * torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    factor, info = torch.linalg.cholesky_ex(system)
    if int(info) != 0:
        raise ValueError(f"the normal equations Phi^T Phi + lambda I of the {len(gram)} features are singular in "
                         f"float64 (diag_reg=0 with more features than independent samples); give diag_reg > 0")
    solution = torch.cholesky_solve(rhs, factor)
    residual = (rhs - system @ solution).norm(dim=0) / rhs.norm(dim=0).clamp_min(torch.finfo(rhs.dtype).tiny)
    return FeatureRegression(feature_map, solution, residual, block_size, vector, x_train.dtype
                             if x_train.is_floating_point() else DEFAULT_DTYPE)
