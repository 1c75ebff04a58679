"""Representation learning beyond kernels (Damian, Lee & Soltanolkotabi 2022, "Neural
networks can learn representations with gradient descent", COLT; protocol details as in
the authors' code).

Targets `f*(x) = g(<x, u_1>, ..., <x, u_r>)` with x ~ N(0, I_d) and E[f*(x)^2] = 1, built
from probabilists' Hermite polynomials He_k (E[He_j(z) He_k(z)] = k! [j = k] for z ~ N(0, 1)).

Algorithm 1 (the paper's, on f(x) = a^T ReLU(W x + b)):
  init     a_j ~ {+-1}, w_j ~ N(0, I_d / d), b_j = 0, mirrored: a_{j+m/2} = -a_j,
           w_{j+m/2} = w_j, b_{j+m/2} = b_j, so f(x; theta_0) = 0;
  preprocess  alpha = mean(y), beta = mean(y x), y <- y - alpha - beta . x;
  step 1   W <- W - eta_1 [grad_W L + lambda_1 W] with lambda_1 = 1/eta_1, i.e. W = -eta_1 grad_W L,
           L = mean (f(x_i) - y_i)^2 (the code's loss, no 1/2);
           eta_1 = 1 / sqrt(mean_j ||grad_{w_j} L||^2)  (the authors' code: rows of unit RMS
           norm; the paper only says eta_1 = O~(sqrt d));
  re-init  b_j ~ N(0, 1);
  stage 2  T steps of GD on a with step eta and weight decay lambda, from a = 0
           (`steps=None`: the ridge solution those steps converge to, as the authors' code
           solves it; default), lambda chosen on a log grid by validation MSE (code);
  predict  x -> alpha + beta . x + a^T ReLU(W x + b).
Width m is open in the paper (the code uses 1000); it is an argument here.

Normalization: the losses here are the authors' code's, mean (f - y)^2 (no 1/2), kept so that
eta_1 and the ridge grid mean what they mean there; ntklab's training convention
(`ntklab.conventions`, ||f - y||^2 / (2 |Y|)) is not used by these one-step and ridge fits.

Baselines on the same data and preprocessing: random features (W, b fixed at their
initial law, only a trained, same ridge path) and kernel regression with the analytic
NTK of the same two-layer ReLU network (ridge on a validation split).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ..._core.validation import DEFAULT_DTYPE, one_of, positive, positive_int
import ntklab as nk

RIDGES = tuple(10.0 ** k for k in range(-8, 2))  # lambda grid for the ridge on a (and NTK diag_reg)


# ----------------------------------------------------------------------------- targets

def hermite(k: int, z: torch.Tensor) -> torch.Tensor:
    """Probabilists' Hermite polynomial He_k(z): He_0 = 1, He_1 = z,
    He_{k+1} = z He_k - k He_{k-1}."""
    previous, current = torch.ones_like(z), z
    if k == 0:
        return previous
    for j in range(1, k):
        previous, current = current, z * current - j * previous
    return current


@dataclass(frozen=True)
class MultiIndexTarget:
    """f*(x) = g(U x) with U [r, d] orthonormal rows and E[f*^2] = 1 under N(0, I_d)."""

    U: torch.Tensor
    g: Callable[[torch.Tensor], torch.Tensor]   # [N, r] -> [N]
    name: str

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """f*(x) [N] for x [N, d]."""
        return self.g(x @ self.U.T)

    @property
    def d(self) -> int:
        """The input dimension."""
        return self.U.shape[1]


def random_directions(d: int, r: int, *, seed: int, dtype: torch.dtype = DEFAULT_DTYPE) -> torch.Tensor:
    """r orthonormal directions in R^d, uniformly at random ([r, d])."""
    d, r = positive_int(d, "d"), positive_int(r, "r")
    if r > d:
        raise ValueError(f"r={r} relevant directions do not fit in d={d} dimensions; need r <= d")
    gaussian = torch.randn(d, r, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return torch.linalg.qr(gaussian).Q.T.contiguous()


def hermite_target(U: torch.Tensor, terms: Sequence[tuple[float, Sequence[int]]],
                   name: str | None = None) -> MultiIndexTarget:
    """Multi-index polynomial g(z) = c * sum_t coef_t prod_i He_{k_ti}(z_i) on z = U x (U with
    orthonormal rows), normalised exactly: the products are orthogonal under N(0, I_r) with
    E[(prod_i He_{k_i}(z_i))^2] = prod_i k_i!, so c = 1 / sqrt(sum_t coef_t^2 prod_i k_ti!)
    (distinct degree tuples required)."""
    r = U.shape[0]
    degrees = [tuple(int(k) for k in multi) for _, multi in terms]
    if not terms or any(len(multi) != r for multi in degrees) or len(set(degrees)) != len(degrees):
        raise ValueError(f"terms must be distinct (coefficient, degrees) pairs with {r} degrees "
                         f"each (one per row of U), got {terms!r}")
    norm = math.sqrt(sum(c ** 2 * math.prod(math.factorial(k) for k in multi)
                         for (c, _), multi in zip(terms, degrees, strict=True)))
    if norm == 0:
        raise ValueError("terms: all coefficients are zero")

    def g(z: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(len(z), dtype=z.dtype, device=z.device)
        for (coefficient, _), multi in zip(terms, degrees, strict=True):
            product = torch.ones_like(total)
            for i, k in enumerate(multi):
                product = product * hermite(k, z[:, i])
            total = total + coefficient * product
        return total / norm
    return MultiIndexTarget(U, g, name or f"Hermite target {terms!r}")


def _check_degree(p: int) -> int:
    p = positive_int(p, "p")
    if p < 2:
        raise ValueError(f"p must be >= 2 (the target's degree; He_2 carries the Hessian), got {p}")
    return p


def paper_target(d: int, p: int, *, seed: int, dtype: torch.dtype = DEFAULT_DTYPE) -> MultiIndexTarget:
    """The paper's experiment: g(z) = He_2(z)/2 + He_p(z)/sqrt(2 p!) on one direction u
    (E[g^2] = 2/4 + p!/(2 p!) = 1; the He_2 half is what E[grad^2 f*] sees)."""
    p = _check_degree(p)
    scale = 1.0 / math.sqrt(2 * math.factorial(p))
    return MultiIndexTarget(random_directions(d, 1, seed=seed, dtype=dtype),
                            lambda z: hermite(2, z[:, 0]) / 2 + scale * hermite(p, z[:, 0]),
                            f"He2/2 + He{p}/sqrt(2*{p}!)")


def transfer_target(U: torch.Tensor, p: int) -> MultiIndexTarget:
    """The paper's transfer task on the same direction: He_p(z) / sqrt(p!)."""
    p = _check_degree(p)
    scale = 1.0 / math.sqrt(math.factorial(p))
    return MultiIndexTarget(U, lambda z: scale * hermite(p, z[:, 0]), f"He{p}/sqrt({p}!)")


def sample(target: MultiIndexTarget, n: int, *, noise: float = 0.0, seed: int,
           dtype: torch.dtype = DEFAULT_DTYPE) -> tuple[torch.Tensor, torch.Tensor]:
    """x ~ N(0, I_d), y = f*(x) + eps with eps uniform on {-noise, +noise}."""
    n = positive_int(n, "n")
    noise = positive(noise, "noise", allow_zero=True)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, target.d, generator=g, dtype=dtype)
    signs = torch.randint(0, 2, (n,), generator=g).to(dtype).mul_(2).sub_(1)
    return x, target(x) + noise * signs


# ----------------------------------------------------------------------------- networks

@dataclass
class TwoLayerPredictor:
    """x -> alpha + beta . x + a^T ReLU(W x + b)."""

    alpha: torch.Tensor
    beta: torch.Tensor
    W: torch.Tensor
    b: torch.Tensor
    a: torch.Tensor
    ridge: float

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """ReLU(W x + b) [N, m]."""
        return torch.relu(x @ self.W.T + self.b)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The prediction [N] at x [N, d]."""
        return self.alpha + x @ self.beta + self.features(x) @ self.a


def _preprocess(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """alpha = mean(y), beta = mean(y x), and the residual labels y - alpha - beta . x."""
    alpha, beta = y.mean(), (y[:, None] * x).mean(0)
    return alpha, beta, y - alpha - x @ beta


INITIAL_BIASES = ("zero", "normal")


def symmetric_init(m: int, d: int, *, seed: int, dtype: torch.dtype = DEFAULT_DTYPE,
                   initial_bias: str = "zero"):
    """a in {+-1}, w ~ N(0, I/d), second half mirroring the first with -a; the biases of the
    first step b = 0 (`initial_bias="zero"`, the slides' Algorithm 1) or b ~ N(0, 1) mirrored
    ("normal", as the authors' code keeps them)."""
    m = positive_int(m, "m")
    if m % 2:
        raise ValueError(f"m must be even for the symmetric initialization, got {m}")
    initial_bias = one_of(initial_bias, "initial_bias", INITIAL_BIASES)
    g = torch.Generator().manual_seed(seed)
    half = m // 2
    w = torch.randn(half, d, generator=g, dtype=dtype) / math.sqrt(d)
    a = torch.randint(0, 2, (half,), generator=g).to(dtype).mul_(2).sub_(1)
    b = (torch.zeros(half, dtype=dtype) if initial_bias == "zero"
         else torch.randn(half, generator=g, dtype=dtype))
    return torch.cat([a, -a]), torch.cat([w, w]), torch.cat([b, b]), g


def first_step(x: torch.Tensor, residual: torch.Tensor, a: torch.Tensor, W: torch.Tensor,
               b: torch.Tensor) -> torch.Tensor:
    """W^(1) = -eta_1 grad_W L at theta_0 (f = 0 there, lambda_1 = 1/eta_1), with
    grad_{w_j} L = -(2/n) sum_i y_i a_j 1[w_j . x_i + b_j > 0] x_i and eta_1 giving
    the rows unit RMS norm (the authors' code)."""
    active = (x @ W.T + b > 0).to(x.dtype)                       # [n, m]
    grad = -(2.0 / len(x)) * a[:, None] * ((active * residual[:, None]).T @ x)
    eta_1 = 1.0 / grad.square().sum(1).mean().sqrt()
    return -eta_1 * grad


def fit_head(features: torch.Tensor, y: torch.Tensor, ridge: float, steps: int | None = None,
             learning_rate: float | None = None) -> torch.Tensor:
    """a minimizing mean (features a - y)^2 + ridge ||a||^2: exactly (steps=None) or by
    `steps` of GD from a = 0, a <- a - eta [(2/n) F^T (F a - y) + ridge a] (Algorithm 1, t >= 2;
    eta defaults to 1 / the largest eigenvalue of the Hessian (2/n) F^T F + ridge)."""
    n, m = features.shape
    gram = features.T @ features * (2.0 / n)
    if steps is None:
        return torch.linalg.solve(gram + ridge * torch.eye(m, dtype=gram.dtype), features.T @ y * (2.0 / n))
    eta = learning_rate or 1.0 / float(torch.linalg.eigvalsh(gram)[-1] + ridge)
    a = torch.zeros(m, dtype=features.dtype)
    rhs = features.T @ y * (2.0 / n)
    for _ in range(positive_int(steps, "steps")):
        a -= eta * (gram @ a - rhs + ridge * a)
    return a


def _ridge_path(gram: torch.Tensor, rhs: torch.Tensor, ridges: Sequence[float]) -> list[torch.Tensor]:
    """(gram + ridge I)^-1 rhs for every ridge from one eigendecomposition."""
    evals, evecs = torch.linalg.eigh(gram)
    projected = evecs.T @ rhs
    return [evecs @ (projected / (evals + ridge)) for ridge in ridges]


def _validated_head(features_train, y_train, features_val, y_val, steps, ridges) -> tuple[torch.Tensor, float]:
    """The ridge of the grid with the smallest validation MSE, and its head."""
    n = len(features_train)
    if steps is None:
        heads = _ridge_path(features_train.T @ features_train * (2.0 / n),
                            features_train.T @ y_train * (2.0 / n), ridges)
    else:
        heads = [fit_head(features_train, y_train, ridge, steps) for ridge in ridges]
    losses = [float((features_val @ a - y_val).square().mean()) for a in heads]
    best = int(np.argmin(losses))
    return heads[best], ridges[best]


def _split(x, y, validation: float):
    n_val = max(1, int(round(validation * len(x))))
    if len(x) - n_val < x.shape[1] + 1:
        raise ValueError(f"n={len(x)} samples leave too few for training after the "
                         f"{n_val}-sample validation split: the preprocessing (alpha, beta in "
                         f"R^{x.shape[1]}) needs at least d + 1 = {x.shape[1] + 1}; use more samples")
    return x[n_val:], y[n_val:], x[:n_val], y[:n_val]


def pretrain_first_layer(x: torch.Tensor, y: torch.Tensor, *, m: int = 1000,
                         seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1's representation: (W after the first step, the fresh biases b), from
    all n samples (no head, no validation split; n = 1 is allowed)."""
    positive_int(len(x), "n")
    _, _, residual = _preprocess(x, y)
    a0, W0, b0, generator = symmetric_init(m, x.shape[1], seed=seed, dtype=x.dtype)
    return first_step(x, residual, a0, W0, b0), torch.randn(m, generator=generator, dtype=x.dtype)


def loo_ridge(gram: torch.Tensor, y: torch.Tensor, ridges: Sequence[float] = RIDGES
              ) -> tuple[torch.Tensor, float]:
    """Dual coefficients c = (G + ridge s I)^-1 y (s = mean diagonal of G) with the ridge
    of the grid that minimises the exact leave-one-out error, (y_i - f_i) / (1 - H_ii)
    for the hat matrix H = G (G + ridge s I)^-1: usable down to a few samples."""
    evals, evecs = torch.linalg.eigh(gram)
    scale = float(gram.diagonal().mean()) or 1.0
    projected = evecs.T @ y

    def loo_error(ridge: float) -> float:
        shrink = evals / (evals + ridge * scale)
        fitted = evecs @ (shrink * projected)
        leverage = (evecs.square() * shrink).sum(1)
        return float((((y - fitted) / (1 - leverage).clamp(min=1e-12)) ** 2).mean())
    best = min(ridges, key=loo_error)   # the first of equal errors, as before
    return evecs @ (projected / (evals + best * scale)), best


def algorithm1(x: torch.Tensor, y: torch.Tensor, *, m: int = 1000, seed: int = 0,
               steps: int | None = None, ridges: Sequence[float] = RIDGES,
               validation: float = 0.2, initial_bias: str = "zero") -> TwoLayerPredictor:
    """Damian-Lee-Soltanolkotabi Algorithm 1 (see the module docstring): one
    gradient step on W from the symmetric initialization (biases `initial_bias`: zero as
    in the slides, or N(0, 1) as the authors' code), fresh biases, then the
    head a by ridge-regularized GD (exact by default), ridge by validation."""
    x_fit, y_fit, x_val, y_val = _split(x, y, validation)
    alpha, beta, residual = _preprocess(x_fit, y_fit)
    a0, W0, b0, generator = symmetric_init(m, x.shape[1], seed=seed, dtype=x.dtype,
                                           initial_bias=initial_bias)
    W = first_step(x_fit, residual, a0, W0, b0)
    b = torch.randn(m, generator=generator, dtype=x.dtype)
    return _train_head(x_fit, residual, x_val, y_val, alpha, beta, W, b, steps, ridges)


def random_features_ridge(x: torch.Tensor, y: torch.Tensor, *, m: int = 1000, seed: int = 0,
                          steps: int | None = None, ridges: Sequence[float] = RIDGES,
                          validation: float = 0.2) -> TwoLayerPredictor:
    """The random-features baseline: the same network with W, b fixed at initialization
    (w ~ N(0, I/d), b ~ N(0, 1)), only the head trained (ridge by validation), exactly as in
    Algorithm 1's second stage.  (`studies.overparameterization.random_relu_features` is the
    feature map of the double-descent study, fitted by least squares there.)"""
    x_fit, y_fit, x_val, y_val = _split(x, y, validation)
    alpha, beta, residual = _preprocess(x_fit, y_fit)
    _, W, _, generator = symmetric_init(m, x.shape[1], seed=seed, dtype=x.dtype)
    b = torch.randn(m, generator=generator, dtype=x.dtype)
    return _train_head(x_fit, residual, x_val, y_val, alpha, beta, W, b, steps, ridges)


def _train_head(x_fit, residual, x_val, y_val, alpha, beta, W, b, steps, ridges) -> TwoLayerPredictor:
    predictor = TwoLayerPredictor(alpha, beta, W, b, torch.zeros(len(b), dtype=W.dtype), 0.0)
    residual_val = y_val - alpha - x_val @ beta
    predictor.a, predictor.ridge = _validated_head(predictor.features(x_fit), residual,
                                                   predictor.features(x_val), residual_val,
                                                   steps, ridges)
    return predictor


def ntk_architecture() -> nk.Serial:
    """The two-layer ReLU network's NTK (NTK parameterization: w . x / sqrt(d), b ~ N(0, 1))."""
    return nk.mlp(1, 1, W_std=1.0, b_std=1.0, readout_b_std=0.0)


@dataclass
class KernelPredictor:
    """x -> alpha + beta . x + K(x, X) c: kernel regression on the preprocessed labels."""

    alpha: torch.Tensor
    beta: torch.Tensor
    net: nk.Serial
    x_fit: torch.Tensor
    coefficients: torch.Tensor
    ridge: float

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The prediction [N] at x [N, d]."""
        return self.alpha + x @ self.beta + self.net.kernel(x, self.x_fit, get="ntk") @ self.coefficients


def ntk_regression(x: torch.Tensor, y: torch.Tensor, *, ridges: Sequence[float] = RIDGES,
                   validation: float = 0.2) -> KernelPredictor:
    """Kernel regression with the analytic two-layer ReLU NTK on the preprocessed labels,
    diag_reg (relative to the mean diagonal) chosen on a validation split."""
    x_fit, y_fit, x_val, y_val = _split(x, y, validation)
    alpha, beta, residual = _preprocess(x_fit, y_fit)
    net = ntk_architecture()
    k_fit = net.kernel(x_fit, get="ntk")
    k_val = net.kernel(x_val, x_fit, get="ntk")
    residual_val = y_val - alpha - x_val @ beta
    scale = float(k_fit.diagonal().mean())  # diag_reg relative to the mean diagonal (predict's)
    path = _ridge_path(k_fit, residual, [ridge * scale for ridge in ridges])
    losses = [float((k_val @ c - residual_val).square().mean()) for c in path]
    best = int(np.argmin(losses))
    return KernelPredictor(alpha, beta, net, x_fit, path[best], ridges[best])


def subspace_alignment(W: torch.Tensor, U: torch.Tensor) -> dict[str, float]:
    """How much of the first layer lies in span(U): the fraction of ||W||_F^2 there, and
    the principal angles (degrees) between span(U) and W's top-r right singular space."""
    projection = W @ U.T @ U
    fraction = float(projection.square().sum() / W.square().sum())
    top = torch.linalg.svd(W, full_matrices=False).Vh[:U.shape[0]]
    cosines = torch.linalg.svdvals(top @ U.T).clamp(max=1.0)
    angles = torch.rad2deg(torch.arccos(cosines))
    return {"fraction_in_span": fraction, "max_principal_angle_deg": float(angles.max())}


def hermite_fractions(predictor: Callable[[torch.Tensor], torch.Tensor], u: torch.Tensor,
                      coefficients: dict[int, float], n_test: int, *, seed: int, nodes: int = 40) -> dict[int, float]:
    """The learned fraction of each Hermite degree of a single-index target
    f*(x) = sum_k a_k He_k(u . x)/sqrt(k!) (x ~ N(0, I_d), |u| = 1): degree -> E[f He_k(u . x)/sqrt(k!)] / a_k
    (the He_k(u . x)/sqrt(k!) are orthonormal; 1 when the part is learned).

    The expectation over z = u . x is Gauss-Hermite quadrature with `nodes` points (exact for
    polynomials of degree < 2 nodes in z), the one over the orthogonal part Monte Carlo on
    n_test // nodes samples: far less noise than plain Monte Carlo, whose He_k^2 tails are heavy."""
    g = torch.Generator().manual_seed(seed)
    z, weights = np.polynomial.hermite_e.hermegauss(positive_int(nodes, "nodes"))
    z_t = torch.as_tensor(z, dtype=u.dtype)
    weights_t = torch.as_tensor(weights / weights.sum(), dtype=u.dtype)
    others = torch.randn(max(1, positive_int(n_test, "n_test") // nodes), len(u), generator=g, dtype=u.dtype)
    others = others - (others @ u)[:, None] * u
    prediction = predictor((others[:, None, :] + z_t[None, :, None] * u).reshape(-1, len(u))).reshape(len(others), -1)
    return {k: float((prediction * weights_t * hermite(k, z_t)).sum(1).mean() / math.sqrt(math.factorial(k)) / a)
            for k, a in coefficients.items()}


def paper_coefficients(p: int) -> dict[int, float]:
    """`paper_target`'s coefficients on the orthonormal He_k/sqrt(k!): 1/sqrt(2) for degrees 2 and p."""
    return {2: 1 / math.sqrt(2), _check_degree(p): 1 / math.sqrt(2)}


def test_loss(predictor: Callable[[torch.Tensor], torch.Tensor], target: MultiIndexTarget,
              n_test: int, *, seed: int) -> float:
    """Mean squared error against the noiseless target on fresh samples (excess risk;
    the normalised target makes the zero predictor's loss 1)."""
    x, y = sample(target, n_test, seed=seed, dtype=target.U.dtype)
    return float((predictor(x) - y).square().mean())
