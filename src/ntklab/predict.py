"""Kernel regression and the predictions of gradient-descent training.

* `solve` / `kernel_regression`: interpolation alpha = K^-1 y and ridge
  alpha = (K + lambda I)^-1 y (lecture 21), by Cholesky (LU for indefinite kernels).
* `gradient_descent_alpha`: GD on the coefficients of f = K alpha (lecture 21), or
  the same loss descended in function space (the RKHS gradient), recording alpha_t
  and f_t.
* `gradient_descent_mse_ensemble`: mean and covariance of an infinite ensemble
  of infinitely wide networks trained by gradient flow on the MSE for time t
  (Lee et al. 2019, "Wide neural networks of any depth evolve as linear models under
  gradient descent", NeurIPS, eqs. 9-16), f_0 ~ GP(0, K_nngp),
  `diag_reg` relative to the mean diagonal of the train-train kernel, t=None
  for t = infinity.  One eigendecomposition per kernel serves all times.

One learning-rate convention in all of ntklab (`train`, these predictions, GD on
alpha), neural-tangents': `learning_rate` is the step of gradient descent on

    L = ||f(X) - Y||^2 / (2 |Y|),      |Y| = y_train.size (samples x outputs),

so gradient flow in function space reads df/dt = -(learning_rate / |Y|) Theta (f - Y),
and the lecture's g(alpha) = ||K alpha - y||^2 with step eta is learning_rate = 2 |Y| eta.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ._validation import (DEFAULT_DTYPE, as_inputs, as_targets, as_tensor, one_of, positive,
                          input_dtype, positive_int, record_steps)
from .arch.serial import Serial, canonical_get


# ---------------------------------------------------------------------------
# linear algebra
def add_diagonal_regularizer(k: torch.Tensor, diag_reg: float,
                             absolute_scale: bool = False) -> torch.Tensor:
    """K + diag_reg * s * I with s = 1 (absolute) or s = mean(diag(K)) (neural-tangents' default)."""
    diag_reg = positive(diag_reg, "diag_reg", allow_zero=True)
    if diag_reg == 0:
        return k
    scale = 1.0 if absolute_scale else float(k.diagonal().mean())
    return k + diag_reg * scale * torch.eye(k.shape[0], dtype=k.dtype, device=k.device)


def _square(k: Any, name: str) -> torch.Tensor:
    k = as_tensor(k, name, dtype=k.dtype if isinstance(k, torch.Tensor) and k.is_floating_point()
                  else DEFAULT_DTYPE)
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"{name} must be a square [N, N] kernel matrix, got shape {tuple(k.shape)}")
    return k


class Factorization:
    """Cholesky (or LU) factorization of a regularized train-train kernel."""

    def __init__(self, k: torch.Tensor, name: str = "k_train_train", *, diag_reg: float = 0.0,
                 diag_reg_absolute_scale: bool = False, assume_psd: bool | None = True):
        """`assume_psd=None`: Cholesky, for callers that offer no LU alternative (their
        error message then does not suggest one)."""
        k = add_diagonal_regularizer(_square(k, name), diag_reg, diag_reg_absolute_scale)
        offers_lu, assume_psd = assume_psd is not None, assume_psd is not False
        self.assume_psd = assume_psd
        if assume_psd:
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
    """alpha = (K + diag_reg I)^-1 y (interpolation when diag_reg = 0, lecture 21)."""
    k = _square(k_train_train, "k_train_train")
    y, vector = as_targets(y_train, k.shape[0], "y_train", k.dtype, k.device)
    alpha = Factorization(k, diag_reg=diag_reg, diag_reg_absolute_scale=diag_reg_absolute_scale,
                          assume_psd=assume_psd).solve(y)
    return alpha[:, 0] if vector else alpha


def kernel_regression(k_train_train, y_train, k_test_train, **solve_kwargs) -> torch.Tensor:
    """f(x) = sum_i alpha_i K(x, x_i) at the test points, alpha from `solve`."""
    alpha = solve(k_train_train, y_train, **solve_kwargs)
    k_td = as_tensor(k_test_train, "k_test_train", dtype=alpha.dtype, device=alpha.device)
    if k_td.ndim != 2 or k_td.shape[1] != alpha.shape[0]:
        raise ValueError(f"k_test_train must have shape [N_test, {alpha.shape[0]}], "
                         f"got {tuple(k_td.shape)}")
    return k_td @ alpha


# ---------------------------------------------------------------------------
# gradient descent on the coefficients (lecture 21)
@dataclass
class GradientDescentPath:
    """Iterates of kernel gradient descent, recorded at `steps`.

    alpha: [T, N, K]; f_train = K alpha_t: [T, N, K]; f_test = K_test alpha_t:
    [T, N_test, K] (None without `k_test_train`); loss = ||K alpha - y||^2 / (2 |y|): [T];
    learning_rate: the step on that loss (ntklab's convention)."""
    steps: torch.Tensor
    alpha: torch.Tensor
    f_train: torch.Tensor
    f_test: torch.Tensor | None
    loss: torch.Tensor
    learning_rate: float
    space: str


def gradient_descent_alpha(k_train_train, y_train, *, steps: int, learning_rate: float | None = None,
                           k_test_train=None, space: str = "alpha", alpha0=None,
                           record: int | Sequence[int] = 20) -> GradientDescentPath:
    """Gradient descent on the coefficients alpha of f = K alpha for the loss
    L(alpha) = ||K alpha - y||^2 / (2 |y|) (ntklab's convention, see the module
    docstring; the lecture's g = ||K alpha - y||^2 is 2 |y| L), with c = learning_rate / |y|:

    space="alpha":    alpha <- alpha - c K (K alpha - y)                 (lecture 21)
                      so f_{t+1}(x) - f_t(x) = -c sum_i (f_t - y)_i H(x, x_i)
                      with the tangent kernel in alpha, H(x, x') = sum_j K(x, x_j) K(x_j, x').
    space="function": alpha <- alpha - c (K alpha - y), gradient descent on
                      f = <w, Phi(.)> in feature space, so the change is exactly
                      -c sum_i (f_t - y)_i K(x, x_i) (the MSE dynamics of `train`).
    Both converge to alpha* = K^-1 y for positive definite K (and "alpha" for
    any invertible symmetric K).  `record`: a count of geometrically spaced steps
    or a list of steps (as in `train`).  `learning_rate=None` takes the fastest
    stable constant step, 2 |y| / (l_max^2 + l_min^2) resp. 2 |y| / (l_max + l_min),
    from K's eigenvalues l (absolute values for "alpha").
    """
    k = _square(k_train_train, "k_train_train")
    y, vector = as_targets(y_train, k.shape[0], "y_train", k.dtype, k.device)
    space = one_of(space, "space", ("alpha", "function"))
    steps = positive_int(steps, "steps")
    size = y.numel()
    if learning_rate is None:
        evals = torch.linalg.eigvalsh(k)
        if space == "alpha":
            mags = evals.abs()
            learning_rate = 2.0 * size / float(mags.max() ** 2 + mags.min() ** 2)
        else:
            if float(evals[0]) <= 0:
                raise ValueError("space='function' needs a positive definite k_train_train; "
                                 "use space='alpha' for indefinite kernels")
            learning_rate = 2.0 * size / float(evals[-1] + evals[0])
    eta = positive(learning_rate, "learning_rate")
    rate = eta / size
    k_td = None
    if k_test_train is not None:
        k_td = as_tensor(k_test_train, "k_test_train", dtype=k.dtype, device=k.device)
        if k_td.ndim != 2 or k_td.shape[1] != k.shape[0]:
            raise ValueError(f"k_test_train must have shape [N_test, {k.shape[0]}], got "
                             f"{tuple(k_td.shape)}")
    alpha = torch.zeros_like(y) if alpha0 is None else as_targets(
        alpha0, k.shape[0], "alpha0", k.dtype, k.device)[0].clone()

    recorded = record_steps(record, steps)
    wanted, alphas = set(recorded), []
    for step in range(steps + 1):
        if step in wanted:
            alphas.append(alpha.clone())
        if step == steps:
            break
        residual = k @ alpha - y
        alpha -= rate * (k @ residual if space == "alpha" else residual)
    alphas = torch.stack(alphas)
    f_train = k @ alphas
    loss = (f_train - y).square().sum((1, 2)) / (2 * size)
    f_test = None if k_td is None else k_td @ alphas
    if vector:
        alphas, f_train = alphas[..., 0], f_train[..., 0]
        f_test = None if f_test is None else f_test[..., 0]
    return GradientDescentPath(torch.tensor(recorded), alphas, f_train, f_test, loss, eta, space)


# ---------------------------------------------------------------------------
# gradient flow on the MSE in function space
class GradientFlow:
    """Gradient flow df/dt = -(lr / |Y|) G (f - Y) on a regularized train-train kernel
    G = K + diag_reg s I (ntklab's loss convention, see the module docstring), in the
    closed forms that all MSE predictions share.  The Cholesky factor and the
    eigendecomposition of G are computed once, when first needed.

    `solve(rhs, times)`: G^-1 (I - e^{-lr G t / |Y|}) rhs, [T, N, M] for the times t
    ([N, M], G^-1 rhs, for `times=None`, t = infinity); `doubled` uses rate 2 lr.
    `decay(times)`: e^{-lr G t / |Y|}, [T, N, N]."""

    def __init__(self, k_train_train: torch.Tensor, y_size: int, *, learning_rate: float = 1.0,
                 diag_reg: float = 0.0, diag_reg_absolute_scale: bool = False,
                 name: str = "k_train_train"):
        self.kernel = add_diagonal_regularizer(_square(k_train_train, name), diag_reg,
                                               diag_reg_absolute_scale)
        self.rate = positive(learning_rate, "learning_rate") / positive_int(y_size, "y_size")
        self.name = name
        self._eigenspace = self._factorization = None

    @property
    def eigenspace(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._eigenspace is None:
            self._eigenspace = torch.linalg.eigh(self.kernel)
        return self._eigenspace

    @property
    def factorization(self) -> Factorization:
        if self._factorization is None:
            self._factorization = Factorization(self.kernel, self.name, assume_psd=None)
        return self._factorization

    def solve(self, rhs: torch.Tensor, times: torch.Tensor | None = None, *,
              doubled: bool = False) -> torch.Tensor:
        if times is None:
            return self.factorization.solve(rhs)
        evals, evecs = self.eigenspace
        rate = self.rate * (2 if doubled else 1)
        exponent = -rate * times[:, None] * evals[None, :]
        safe = torch.where(evals == 0, torch.ones_like(evals), evals)
        coef = torch.where(evals == 0, rate * times[:, None].expand_as(exponent),
                           -torch.expm1(exponent) / safe)
        return torch.einsum("ij,tj,kj,km->tim", evecs, coef, evecs, rhs)

    def decay(self, times: torch.Tensor) -> torch.Tensor:
        evals, evecs = self.eigenspace
        factor = torch.exp(-self.rate * times[:, None] * evals.clamp(min=0)[None, :])
        return torch.einsum("ij,tj,kj->tik", evecs, factor, evecs)


# ---------------------------------------------------------------------------
# infinite ensembles of infinitely wide networks (Lee et al. 2019)
KernelFn = Callable[..., Any]


def _kernel_callable(net_or_kernel_fn) -> Callable:
    """(x1, x2, get) -> {name: [N1, N2]} from an architecture or a kernel function."""
    if isinstance(net_or_kernel_fn, Serial):
        def kernel(x1, x2, get):  # the NNGP comes free with the NTK: return both
            k = net_or_kernel_fn.kernel(x1, x2, None if "ntk" in get else get)
            return {g: v for g, v in (("nngp", k.nngp), ("ntk", k.ntk)) if v is not None}
        return kernel
    if not callable(net_or_kernel_fn):
        raise ValueError("net_or_kernel_fn must be an ntklab architecture (nk.serial(...)) or a "
                         f"callable kernel_fn(x1, x2), got {net_or_kernel_fn!r}")

    def kernel(x1, x2, get):
        k = net_or_kernel_fn(x1, x2)
        if isinstance(k, torch.Tensor):
            return {g: k for g in get}
        missing = [g for g in get if getattr(k, g, None) is None]
        if missing:
            raise ValueError(f"kernel_fn did not return {missing} (needed for get={get})")
        return {g: getattr(k, g) for g in get}
    return kernel


def _time_grid(t) -> tuple[torch.Tensor, tuple[int, ...]]:
    try:
        t = np.asarray(t, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"t must be a time >= 0, an array of times, or None, got {t!r}") from err
    if np.any(np.isnan(t)) or np.any(t < 0):
        raise ValueError(f"t must be >= 0 (or None for infinity), got {t}")
    return torch.as_tensor(t.reshape(-1)), t.shape


def gradient_descent_mse_ensemble(net_or_kernel_fn, x_train, y_train, *, learning_rate: float = 1.0,
                                  diag_reg: float = 0.0, diag_reg_absolute_scale: bool = False,
                                  dtype: torch.dtype | None = None, device=None):
    """Predictive mean (and covariance) of an infinite ensemble of infinitely wide
    networks trained by gradient flow on L = ||f(X) - Y||^2 / (2 |Y|) for time t.

    With Theta = NTK, K = NNGP (Lee et al. 2019), n = y_train.size, and the
    regularized train-train kernel G = Theta + diag_reg * mean(diag Theta) I:
        mean_t(x) = Theta(x, X) G^-1 (I - e^{-lr G t / n}) Y
        cov_t     = K(x, x') + T_t(x)^T K(X, X) T_t(x') - [Theta(x, X) G^-1 (I - e^{-lr G t/n}) K(X, x') + transpose]
        with T_t(x) = G^-1 (I - e^{-lr G t / n}) Theta(X, x)     ("ntk")
    and for "nngp" (Bayesian-like NNGP dynamics) mean with K in place of Theta and
        cov_t = K(x, x') - K(x, X) G^-1 (I - e^{-2 lr G t / n}) K(X, x').
    Returns `predict(t=None, x_test=None, get=None, compute_cov=False)`.
    """
    kernel = _kernel_callable(net_or_kernel_fn)
    images = getattr(net_or_kernel_fn, "takes_images", False)
    dtype = input_dtype(x_train, dtype)
    x_train = as_inputs(x_train, "x_train", images=images, dtype=dtype, device=device)
    y, vector = as_targets(y_train, x_train.shape[0], "y_train", dtype, x_train.device)
    lr = positive(learning_rate, "learning_rate")
    positive(diag_reg, "diag_reg", allow_zero=True)
    size = y.numel()
    cache: dict[str, torch.Tensor] = {}

    def k_train(g: str) -> torch.Tensor:
        if g not in cache:
            cache.update(kernel(x_train, None, (g,)))
        return cache[g]

    @lru_cache(maxsize=2)
    def dynamics(g: str) -> GradientFlow:
        return GradientFlow(k_train(g), size, learning_rate=lr, diag_reg=diag_reg,
                            diag_reg_absolute_scale=diag_reg_absolute_scale, name=f"k_train_train ({g})")

    def flow(g: str, times: torch.Tensor | None, rhs: torch.Tensor, doubled: bool = False):
        return dynamics(g).solve(rhs, times, doubled=doubled)

    def eigenspace(g: str):
        return dynamics(g).eigenspace

    def decay(g: str, times: torch.Tensor) -> torch.Tensor:
        return dynamics(g).decay(times)

    def predict_one(g, times, x_test, compute_cov):
        if x_test is None:  # on the training set (unregularized, as neural-tangents)
            if times is None:
                mean = y.clone()
                cov = torch.zeros(size // y.shape[1], size // y.shape[1], dtype=dtype,
                                  device=y.device) if compute_cov else None
                return mean, cov
            evals, evecs = eigenspace(g)
            keep = -torch.expm1(-lr / size * times[:, None] * evals[None, :])
            mean = torch.einsum("ij,tj,kj,km->tim", evecs, keep, evecs, y)
            cov = None
            if compute_cov:
                if g == "nngp":
                    lam = evals.clamp(min=0)
                    cov = torch.einsum("ij,tj,kj->tik", evecs,
                                       lam * torch.exp(-2 * lam * times[:, None] * lr / size), evecs)
                else:
                    e = decay(g, times)
                    cov = e @ k_train("nngp") @ e.transpose(1, 2)
            return mean, cov
        kt = kernel(x_test, x_train, ("nngp", g) if compute_cov else (g,))
        mean = kt[g] @ flow(g, times, y)
        cov = None
        if compute_cov:
            k_tt = kernel(x_test, None, ("nngp",))["nngp"]
            if g == "nngp":
                cov = k_tt - kt[g] @ flow(g, times, kt[g].T, doubled=True)
            else:
                term_1 = flow(g, times, kt[g].T)                     # [T?, N, Nt]
                term_2 = kt[g] @ flow(g, times, kt["nngp"].T)        # [T?, Nt, Nt]
                cov = (term_1.transpose(-1, -2) @ k_train("nngp") @ term_1
                       - term_2 - term_2.transpose(-1, -2) + k_tt)
        return mean, cov

    def predict(t=None, x_test=None, get: str | Sequence[str] | None = None,
                compute_cov: bool = False):
        """Mean (or (mean, cov)) at time(s) t; dict over `get` when it names several.

        Shapes: mean [*t.shape, N_test, K] ([*t.shape, N_test] for 1-D y_train),
        cov [*t.shape, N_test, N_test]; `x_test=None` predicts on x_train."""
        names = canonical_get(get)
        if x_test is not None:
            x_test = as_inputs(x_test, "x_test", images=images, dtype=dtype, device=x_train.device)
            if x_test.shape[1:] != x_train.shape[1:]:
                raise ValueError(f"x_test must have samples of shape {tuple(x_train.shape[1:])} "
                                 f"like x_train, got shape {tuple(x_test.shape)}")
        times, t_shape = (None, ()) if t is None else _time_grid(t)
        times = None if times is None else times.to(dtype=dtype, device=x_train.device)
        out = {}
        for g in names:
            mean, cov = predict_one(g, times, x_test, compute_cov)
            if times is not None:
                mean = mean.reshape(t_shape + mean.shape[-2:])
                cov = None if cov is None else cov.reshape(t_shape + cov.shape[-2:])
            mean = mean[..., 0] if vector else mean
            out[g] = (mean, cov) if compute_cov else mean
        return out[names[0]] if isinstance(get, str) else out

    return predict
