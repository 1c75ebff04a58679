"""The Gaussian-process side of the estimators: the weighted gradient flow their predictions
solve, the GP log marginal likelihood, architectures with tied W_std / b_std, and the fit of
(W_std, b_std, diag_reg) by maximizing that likelihood through the differentiable kernels."""
from __future__ import annotations

import math
import warnings
from typing import cast

import numpy as np
import torch
from scipy.optimize import minimize
from sklearn.exceptions import ConvergenceWarning

from ..arch import Affine, Dense, Serial, mlp, serial
from ..arch.serial import Container
from ..arch.spec import parse_architecture
from ..predict import GradientFlow

BOUNDS = {"W_std": (1e-2, 1e2), "b_std": (1e-5, 1e2), "diag_reg": (1e-8, 1e3)}
"""The box in which `fit_hyperparameters` searches (L-BFGS-B on the logarithms)."""


def default_architecture() -> Serial:
    """Two hidden ReLU layers, NTK parameterization (the widths do not enter the kernels)."""
    return mlp(2, 512, W_std=1.5, b_std=0.05)


def resolve_architecture(architecture) -> Serial:
    """None (the default), an ntklab architecture, or its string form, as a `Serial`."""
    if architecture is None:
        return default_architecture()
    if isinstance(architecture, str):
        return parse_architecture(architecture, argument="architecture")
    if isinstance(architecture, Serial):
        return architecture
    raise ValueError("architecture must be None, an ntklab architecture (nk.serial(...)) or a "
                     f"string such as 'Dense(512), Relu(), Dense(1)', got {architecture!r}")


def weighted_scale(k: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """s = sum_i w_i K_ii / sum_i w_i, the scale of the relative diag_reg (the mean of diag K
    over the samples repeated by their weights)."""
    return (weights * k.diagonal()).sum() / weights.sum()


class WeightedFlow:
    """Gradient flow from f = 0 (the infinite ensemble's mean) on the weighted MSE
    sum_i w_i |f(x_i) - y_i|^2 / (2 |Y|_w), |Y|_w = sum(w) x outputs, with neural-tangents' ridge,
    in closed form.  With W = diag(w) (w > 0), s = sum_i w_i K_ii / sum_i w_i and
    G = W^1/2 K W^1/2 + diag_reg s I, predictions are f_t(x) = K(x, X) A_t Y with

        A_t = W^1/2 G^-1 (I - e^{-lr G t / |Y|_w}) W^1/2          (`solve`; `GradientFlow` on G)

    and A_inf = (K + diag_reg s W^-1)^-1: kernel ridge regression with noise diag_reg s / w_i per
    sample.  Integer weights are repeated samples, at every t; w = 1 is `GradientFlow` on K."""

    def __init__(self, k: torch.Tensor, weights: torch.Tensor, *, diag_reg: float,
                 learning_rate: float, outputs: int):
        self.root = weights.sqrt()[:, None]
        scale = float(weighted_scale(k, weights))
        self.flow = GradientFlow(self.root * k * self.root.T, len(k) * outputs,
                                 learning_rate=learning_rate * len(k) / float(weights.sum()),
                                 diag_reg=diag_reg * scale, diag_reg_absolute_scale=True)

    def solve(self, rhs: torch.Tensor, times: torch.Tensor | None, *,
              doubled: bool = False) -> torch.Tensor:
        """A_t rhs [N, M] at the one time in `times` (None: t = infinity); `doubled`: rate 2 lr
        (the NNGP covariance's)."""
        solved = self.flow.solve(self.root * rhs, times, doubled=doubled)
        return self.root * (solved if times is None else solved[0])


def log_marginal_likelihood(k: torch.Tensor, y: torch.Tensor, weights: torch.Tensor,
                            diag_reg: float | torch.Tensor) -> torch.Tensor:
    """log N(y | 0, K + diag_reg s W^-1) summed over the columns of y [N, M] (the GP whose
    posterior mean is `WeightedFlow`'s at t = infinity, s as there):
        -1/2 y~^T G^-1 y~ - M/2 (log det G - sum_i log w_i) - N M/2 log(2 pi),   y~ = W^1/2 y;
    differentiable in K and diag_reg; -inf when G is not positive definite."""
    root = weights.sqrt()[:, None]
    scale = weighted_scale(k, weights)
    g = root * k * root.T + diag_reg * scale * torch.eye(len(k), dtype=k.dtype, device=k.device)
    chol, info = torch.linalg.cholesky_ex(g)
    if int(info) != 0:
        return torch.tensor(-math.inf, dtype=k.dtype)
    z = torch.linalg.solve_triangular(chol, root * y, upper=False)
    n, m = y.shape
    return (-0.5 * (z ** 2).sum() - m * (chol.diagonal().log().sum() - 0.5 * weights.log().sum())
            - 0.5 * n * m * math.log(2 * math.pi))


def tied_stds(architecture: Serial) -> tuple[float, float | None]:
    """The (W_std, b_std) that `tie_stds` starts from: the first Dense layer's W_std and the
    first b_std among the Dense layers (None when none has a bias)."""
    dense = [layer for layer in tied_layers(architecture) if isinstance(layer, Dense)]
    b_stds = [float(layer.b_std) for layer in dense if layer.b_std is not None]
    return float(dense[0].W_std), (b_stds[0] if b_stds else None)


def tied_layers(architecture: Serial) -> tuple:
    """The layers of `architecture`, checked for `tie_stds`: Dense layers (at least one) and
    layers without W_std / b_std at its top level."""
    for layer in architecture.layers:
        if isinstance(layer, (Container, Affine)) and not isinstance(layer, Dense):
            raise ValueError(
                f"fitting W_std and b_std ties those of the Dense layers of the architecture, "
                f"but {layer.label} has its own (or holds layers that do); use an architecture of "
                f"Dense layers and activations (e.g. nk.mlp), or fixed hyperparameters")
    if not any(isinstance(layer, Dense) for layer in architecture.layers):
        raise ValueError(f"fitting W_std and b_std needs Dense layers, {architecture!r} has none")
    return architecture.layers


def tie_stds(architecture: Serial, W_std: float | torch.Tensor,
             b_std: float | torch.Tensor | None) -> Serial:
    """`architecture` with every Dense layer's W_std set to `W_std` and its b_std (where it has
    a bias) to `b_std`; tensors that require grad make its kernels differentiable in them."""
    # Dense takes 0-dim tensors for W_std, b_std (`_core.validation.hyperparameter`); its
    # annotations say float
    w, b = cast(float, W_std), cast("float | None", b_std)
    return serial(*(Dense(layer.out, w, None if layer.b_std is None else b,
                          layer.parameterization, layer.trainable) if isinstance(layer, Dense)
                    else layer for layer in tied_layers(architecture)))


def fit_hyperparameters(architecture: Serial, x: torch.Tensor, y: torch.Tensor,
                        weights: torch.Tensor, *, get: str, diag_reg: float, n_restarts: int,
                        rng: np.random.RandomState) -> tuple[Serial, float]:
    """(tied architecture, diag_reg) maximizing `log_marginal_likelihood` of the kernel `get`
    over W_std, b_std (`tie_stds`; b_std only when a Dense layer has a bias) and diag_reg:
    L-BFGS-B on their logarithms within `BOUNDS`, gradients by autograd through the kernel,
    from the given values and from `n_restarts` points drawn log-uniformly in the box (as
    `GaussianProcessRegressor`'s optimizer); the best optimum wins."""
    W_std, b_std = tied_stds(architecture)
    start = {"W_std": W_std, "diag_reg": diag_reg, **({} if b_std is None else {"b_std": b_std})}
    names = list(start)
    bounds = np.log([BOUNDS[name] for name in names])

    def negative_lml(theta: np.ndarray) -> tuple[float, np.ndarray]:
        log_values = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
        values = dict(zip(names, log_values.exp(), strict=True))
        net = tie_stds(architecture, values["W_std"], values.get("b_std"))
        lml = log_marginal_likelihood(cast(torch.Tensor, net.kernel(x, get=get)), y, weights,
                                      values["diag_reg"])
        if not torch.isfinite(lml):
            return math.inf, np.zeros_like(theta)
        (gradient,) = torch.autograd.grad(-lml, log_values)
        return -float(lml.detach()), gradient.numpy()

    starts: list[np.ndarray] = [np.clip(np.log(np.maximum(list(start.values()), 1e-300)), *bounds.T)]
    starts += [np.asarray(rng.uniform(*bounds.T)) for _ in range(n_restarts)]
    results = [minimize(negative_lml, theta, jac=True, method="L-BFGS-B", bounds=bounds)
               for theta in starts]
    best = min(results, key=lambda result: result.fun)
    if not best.success:
        warnings.warn(f"the hyperparameter fit (L-BFGS-B) stopped before converging: "
                      f"{best.message}; more n_restarts_optimizer may help", ConvergenceWarning,
                      stacklevel=3)
    fitted = dict(zip(names, np.exp(best.x).tolist(), strict=True))
    return tie_stds(architecture, fitted["W_std"], fitted.get("b_std")), fitted["diag_reg"]
