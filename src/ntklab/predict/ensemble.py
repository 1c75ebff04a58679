"""Infinite ensembles of infinitely wide networks trained by gradient flow on the MSE
(Lee et al. 2019): mean and covariance at any time, from an architecture or a kernel function."""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable, Sequence

import torch

from .._core.validation import as_inputs, as_targets, input_dtype, positive
from ..arch.serial import Serial, canonical_get
from .._core.conventions import prediction_times
from .linalg import GradientFlow


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
    array, shape = prediction_times(t)
    return torch.as_tensor(array), shape


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
    G is checked as in `gradient_descent_mse` (symmetric and positive semi-definite up to
    rounding, `linalg.checked_kernel`) when first used.
    Returns `predict(t=None, x_test=None, get=None, compute_cov=False)`.

    Parameters
    ----------
    net_or_kernel_fn : Serial or callable
        An ntklab description, or `kernel_fn(x1, x2, get)` returning a `Kernel`.
    x_train, y_train : tensor or array
    learning_rate : float
        The step on ||f(X) - Y||^2 / (2 |Y|).
    diag_reg : float
        Ridge, relative to the mean diagonal unless `diag_reg_absolute_scale`.
    dtype, device : optional

    Returns
    -------
    callable
        `predict(t=None, x_test=None, get=None, compute_cov=False)`: means `[T, N, O]` (or
        `[N, O]` for one time), with covariances when `compute_cov`.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> net = nk.mlp(1, 512, W_std=1.5, b_std=0.1)
    >>> x_train, y_train = torch.randn(10, 3, dtype=torch.float64), torch.randn(10, 1, dtype=torch.float64)
    >>> predict = nk.predict.gradient_descent_mse_ensemble(net, x_train, y_train)
    >>> mean, cov = predict(t=None, x_test=x_train[:4], get="ntk", compute_cov=True)
    >>> bool(torch.allclose(mean, y_train[:4], atol=1e-6))          # t = inf interpolates
    True
    >>> predict(t=[1.0, 10.0], x_test=x_train[:4], get="nngp").shape
    torch.Size([2, 4, 1])
    """
    kernel = _kernel_callable(net_or_kernel_fn)
    images = getattr(net_or_kernel_fn, "takes_images", False)
    sequences = getattr(net_or_kernel_fn, "takes_sequences", False)
    dtype = input_dtype(x_train, dtype)
    x_train = as_inputs(x_train, "x_train", images=images, sequences=sequences, dtype=dtype,
                        device=device)
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
            evals, evecs = eigenspace(g)      # >= 0: GradientFlow checks the kernel
            keep = -torch.expm1(-lr / size * times[:, None] * evals[None, :])
            mean = torch.einsum("ij,tj,kj,km->tim", evecs, keep, evecs, y)
            cov = None
            if compute_cov:
                if g == "nngp":
                    cov = torch.einsum("ij,tj,kj->tik", evecs,
                                       evals * torch.exp(-2 * evals * times[:, None] * lr / size), evecs)
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
            x_test = as_inputs(x_test, "x_test", images=images, sequences=sequences,
                               dtype=dtype, device=x_train.device)
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
