"""Quadratic models and nearly-kernel methods (Roberts, Yaida & Hanin 2022, "The Principles of
Deep Learning Theory", ch. 10-11: effective and meta kernels, the algorithm projectors).

Model (output i, sample delta, features phi_0 = 1, ..., phi_nf; symmetric meta features psi):
    z_i(x; W) = sum_j W_ij phi_j(x) + (eps/2) sum_{j1 j2} W_ij1 W_ij2 psi_j1j2(x)
Effective features, effective kernel and meta kernel:
    phi^E_ij(x) = phi_j(x) + eps sum_k W_ik psi_kj(x)
    k^E_ii;d1d2 = sum_j phi^E_ij(x_d1) phi^E_ij(x_d2)          (k = k^E at W = 0)
    mu_d0d1d2   = eps sum_{j1 j2} psi_j1j2(x_d0) phi_j1(x_d1) phi_j2(x_d2)
GD with step eta on L = 1/2 sum (y - z)^2 from W = 0; in sample space, with the residual
e = z - y on the training set A,
    z_d(t+1)   = z_d(t) - eta sum_a k^E_da e_a + (eta^2/2) sum_{a1 a2} mu_d,a1,a2 e_a1 e_a2 + O(eps^2)
    k^E(t+1)   = k^E(t) - eta sum_a (mu_d1d2a + mu_d2d1a) e_a + O(eps^2)
(exact when mu is built from the effective features phi^E(t): `meta_kernel(..., W=W_t)`).

Nearly-kernel prediction at a test point b (k~ = k on A x A, k~^-1 its inverse, v = k~^-1 y):
    z_b = k_bA v + sum [mu_a1,b,a2 - (k_bA k~^-1 mu)_a1,.,a2] Z_A[a1 a2]
                 + sum [mu_b,a1,a2 - (k_bA k~^-1 mu)_.,a1,a2] Z_B[a1 a2]     (+ O(eps^2))
with the algorithm projectors contracted with y y:
    direct optimization:  Z_A y y = 0,                       Z_B y y = v v^T / 2
    GD with step eta:     Z_A y y = v v^T - X(yy^T) k~^-1,   Z_B y y = Z_A y y + (eta/2) X(yy^T)
    ODE (eta -> 0):       Z_A y y = Z_B y y = v v^T - X0(yy^T) k~^-1
where X is the inverting tensor, sum_{34} X^{1234} (k~_35 d_46 + d_35 k~_46 - eta k~_35 k~_46)
= d_15 d_26: in the eigenbasis k~ = V diag(l) V^T it is diagonal,
X(Y) = V [(V^T Y V)_ab / (l_a + l_b - eta l_a l_b)] V^T (no N^2 x N^2 inverse is formed).
Trained kernel (direct optimization): k^E(theta*) = k + sum_a (mu_d1d2a + mu_d2d1a) v_a,
k# = (k + k^E(theta*)) / 2, and z_b = k#_bA (k#_AA)^-1 y + O(eps^2) (a kernel prediction with k#).

Normalization: this module keeps the book's convention, L = 1/2 sum (y - z)^2 with step eta
(and unit-rate gradient flow), because the projectors above (Z_B's (eta/2) X, the inverting
tensor's eta k~ k~) are written for it.  In ntklab's convention (`ntklab.conventions`,
L = ||z - y||^2 / (2 |Y|)) the same GD has learning_rate = |Y| eta, and the book's flow time is
tau = t learning_rate / |Y| (`nk.conventions.flow_times`).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy.integrate import solve_ivp
from scipy.optimize import root

from ..._core.validation import DEFAULT_DTYPE, positive, positive_int, one_of

ALGORITHMS = ("gd", "direct", "ode")


@dataclass
class QuadraticModel:
    """`phi(x)` -> [N, F] (column 0 is the constant 1), `psi(x)` -> [N, F, F] symmetric."""

    phi: Callable[[torch.Tensor], torch.Tensor]
    psi: Callable[[torch.Tensor], torch.Tensor]
    eps: float

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(phi(x) [N, F], psi(x) [N, F, F]), psi symmetrized (with a warning) if it was not."""
        phi, psi = self.phi(x), self.psi(x)
        if not torch.allclose(psi, psi.transpose(1, 2)):
            warnings.warn("psi is not symmetric in its two feature indices; using (psi + psi^T)/2",
                          stacklevel=2)
            psi = (psi + psi.transpose(1, 2)) / 2
        return phi, psi

    def output(self, W: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """z [N, n_out] for W [n_out, F]."""
        return self._output(W, *self.features(x))

    def effective_features(self, W: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """phi^E [n_out, N, F]."""
        return self._effective(W, *self.features(x))

    def _output(self, W, phi, psi):
        return phi @ W.T + (self.eps / 2) * torch.einsum("ij,njk,ik->ni", W, psi, W)

    def _effective(self, W, phi, psi):
        return phi[None] + self.eps * torch.einsum("ik,nkj->inj", W, psi)

    def effective_kernel(self, W: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """k^E [n_out, N1, N2]."""
        return torch.einsum("inj,imj->inm", self.effective_features(W, x1), self.effective_features(W, x2))

    def kernel(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """k = k^E at W = 0: [N1, N2]."""
        return self.phi(x1) @ self.phi(x2).T

    def meta_kernel(self, x0: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor,
                    W: torch.Tensor | None = None) -> torch.Tensor:
        """mu [N0, N1, N2] (or [n_out, N0, N1, N2] with the effective features of W)."""
        _, psi = self.features(x0)
        if W is None:
            return self.eps * torch.einsum("ajk,bj,ck->abc", psi, self.phi(x1), self.phi(x2))
        return self.eps * torch.einsum("ajk,ibj,ick->iabc", psi, self.effective_features(W, x1),
                                       self.effective_features(W, x2))


def random_model(d: int, n_features: int, eps: float, *, seed: int = 0,
                 dtype: torch.dtype = DEFAULT_DTYPE) -> QuadraticModel:
    """Random features phi_j(x) = tanh(w_j . x / sqrt d + c_j) (phi_0 = 1) and random symmetric
    meta features psi_jk(x) = tanh(u_jk . x / sqrt d + e_jk) / sqrt(F), u_jk = u_kj."""
    d, n_features = positive_int(d, "d"), positive_int(n_features, "n_features")
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n_features, d, generator=g, dtype=dtype)
    c = torch.randn(n_features, generator=g, dtype=dtype)
    size = n_features + 1
    u = torch.randn(size, size, d, generator=g, dtype=dtype)
    e = torch.randn(size, size, generator=g, dtype=dtype)
    u, e = (u + u.transpose(0, 1)) / 2, (e + e.T) / 2

    def phi(x):
        return torch.cat([torch.ones(len(x), 1, dtype=x.dtype), torch.tanh(x @ w.T / math.sqrt(d) + c)], 1)

    def psi(x):
        return torch.tanh(torch.einsum("jkd,nd->njk", u, x) / math.sqrt(d) + e) / math.sqrt(size)
    return QuadraticModel(phi, psi, float(eps))


def train_gd(model: QuadraticModel, x: torch.Tensor, y: torch.Tensor, *, learning_rate: float,
             steps: int, W0: torch.Tensor | None = None) -> list[torch.Tensor]:
    """GD W <- W - eta sum_a phi^E(x_a) (z_a - y_a) on 1/2 sum (y - z)^2; returns W_0 ... W_T.
    y [N, n_out]; W0 defaults to 0 (the nearly-kernel formulas' starting point)."""
    eta = positive(learning_rate, "learning_rate")
    W = torch.zeros(y.shape[1], model.phi(x[:1]).shape[1], dtype=x.dtype) if W0 is None else W0.clone()
    path = [W.clone()]
    phi, psi = model.features(x)
    for _ in range(positive_int(steps, "steps")):
        residual = model._output(W, phi, psi) - y                             # [N, n_out]
        W = W - eta * torch.einsum("inj,ni->ij", model._effective(W, phi, psi), residual)
        if not torch.isfinite(W).all():
            raise ValueError(f"GD diverged at learning_rate={eta}; use a smaller step "
                             f"(below 2 / lambda_max(k))")
        path.append(W.clone())
    return path


def _inverting(evals: torch.Tensor, evecs: torch.Tensor, Y: torch.Tensor, eta: float) -> torch.Tensor:
    """X(Y) for the inverting tensor of (k~ d + d k~ - eta k~ k~), in the eigenbasis of k~."""
    denominator = evals[:, None] + evals[None, :] - eta * evals[:, None] * evals[None, :]
    return evecs @ ((evecs.T @ Y @ evecs) / denominator) @ evecs.T


def nearly_kernel_from_kernels(kernel: torch.Tensor, meta: torch.Tensor, y_train: torch.Tensor, *,
                               algorithm: str = "gd",
                               learning_rate: float | None = None) -> dict[str, torch.Tensor]:
    """The predictions of the module docstring from the kernel and the meta kernel alone, for any
    model expanded to second order around its initialization (a quadratic model, or a network's
    empirical NTK and its dNTK): the N training points come first among the D points,
    `kernel` [D, D] = k, `meta` [D, D, N] = mu_d0,d1,a2 (third index on the training set),
    `y_train` [N, n_out] the labels minus the initial outputs. Returns [D - N, n_out] tensors at
    the other points: "kernel", "nearly_kernel" (the `algorithm`'s projectors) and
    "trained_kernel" (k#_bA (k#_AA)^-1 y with k# = k + (1/2) Σ_a (mu_d1,d2,a + mu_d2,d1,a) v_a)."""
    algorithm = one_of(algorithm, "algorithm", ALGORITHMS)
    eta = positive(learning_rate, "learning_rate") if algorithm == "gd" else 0.0
    n = y_train.shape[0]
    k_train, k_test = kernel[:n, :n], kernel[n:, :n]
    evals, evecs = torch.linalg.eigh(k_train)
    if float(evals[0]) <= 1e-10 * float(evals[-1]):
        raise ValueError(f"the training kernel k~ is singular (eigenvalues {float(evals[0]):.3g} .. "
                         f"{float(evals[-1]):.3g}): use more features than training samples or "
                         f"fewer samples")
    k_inv = evecs @ torch.diag(1 / evals) @ evecs.T
    project = lambda t: t[:, n:] - torch.einsum("ba,xay->xby", k_test @ k_inv, t[:, :n])  # noqa: E731
    meta_a = project(meta[:n])                            # mu_a1,b,a2 - (k_bA k~^-1 mu)_a1,.,a2
    meta_b = (meta[n:].flatten(1) - k_test @ k_inv @ meta[:n].flatten(1)).reshape(-1, *meta.shape[1:])
    meta_b = meta_b[:, :n]                                # mu_b,a1,a2 - (k_bA k~^-1 mu)_.,a1,a2
    out = {name: torch.empty(kernel.shape[0] - n, y_train.shape[1], dtype=kernel.dtype)
           for name in ("kernel", "nearly_kernel", "trained_kernel")}
    for i in range(y_train.shape[1]):
        y = y_train[:, i]
        v = k_inv @ y
        outer = torch.outer(v, v)
        if algorithm == "direct":
            z_a, z_b = torch.zeros_like(outer), outer / 2
        else:
            x_yy = _inverting(evals, evecs, torch.outer(y, y), eta)
            z_a = outer - x_yy @ k_inv
            z_b = z_a + (eta / 2) * x_yy
        out["kernel"][:, i] = k_test @ v
        out["nearly_kernel"][:, i] = (k_test @ v + torch.einsum("xby,xy->b", meta_a, z_a)
                                      + torch.einsum("bxy,xy->b", meta_b, z_b))
        change = meta @ v
        sharp = kernel + (change + change.T) / 2
        out["trained_kernel"][:, i] = sharp[n:, :n] @ torch.linalg.solve(sharp[:n, :n], y)
    return out


def nearly_kernel_prediction(model: QuadraticModel, x_train: torch.Tensor, y_train: torch.Tensor,
                             x_test: torch.Tensor, *, algorithm: str = "gd",
                             learning_rate: float | None = None) -> dict[str, torch.Tensor]:
    """Kernel ("kernel") and nearly-kernel ("nearly_kernel") predictions [M, n_out] at x_test
    for training the quadratic `model` from W = 0 with `algorithm` ("gd" with step
    `learning_rate`, "direct", "ode"), and the compressed trained-kernel prediction
    ("trained_kernel"): `nearly_kernel_from_kernels` with the model's k and mu."""
    points = torch.cat([x_train, x_test])
    return nearly_kernel_from_kernels(model.kernel(points, points),
                                      model.meta_kernel(points, points, x_train), y_train,
                                      algorithm=algorithm, learning_rate=learning_rate)

SPANS = ("initial", "sharp")


def interpolant(model: QuadraticModel, x_train: torch.Tensor, y_train: torch.Tensor, *,
                span: str = "initial") -> torch.Tensor:
    """An exact solution W* [n_out, F] of direct optimization, dL/dW = 0 (z(x_a; W*) = y_a), which
    is not unique when F > N; `span` picks one:
      "initial": W* = Σ_a c_a φ(x_a), in the span of the training features at W = 0, as the
                 linear model's solution (and the limit of Newton's method from W = 0): the
                 slides' direct-optimization projectors Z_A = 0, Z_B = k~^-1 y y k~^-1 / 2;
      "sharp":   W* = Σ_a c_a φ#(x_a; W*), φ# = (φ + φ^E(W*)) / 2 = φ + (ε/2) ψ W*: then
                 z = φ#·W* exactly, so z_b = k#_bA (k#_AA)^-1 y + O(ε²), the slides' compressed
                 trained-kernel prediction (which is therefore Z_A = Z_B = k~^-1 y y k~^-1 / 2).
    Solved for the N coefficients c with scipy's root finder (hybr) from the kernel solution."""
    span = one_of(span, "span", SPANS)
    phi, psi = model.features(x_train)
    identity = torch.eye(phi.shape[1], dtype=phi.dtype)
    k_train = phi @ phi.T
    rows = []
    for i in range(y_train.shape[1]):
        def weights(c, phi=phi, psi=psi):
            c = torch.as_tensor(c, dtype=phi.dtype)
            if span == "initial":
                return c @ phi
            return torch.linalg.solve(identity - model.eps / 2 * torch.einsum("a,ajk->jk", c, psi), phi.T @ c)

        def residual(c, i=i):
            return (model._output(weights(c)[None], phi, psi)[:, 0] - y_train[:, i]).numpy()

        start = torch.linalg.solve(k_train, y_train[:, i]).numpy()
        solution = root(residual, start, method="hybr", options={"xtol": 1e-13})
        if np.abs(residual(solution.x)).max() > 1e-10 * (1 + float(y_train.abs().max())):
            raise RuntimeError(f"no interpolant in the {span} span found: {solution.message}; "
                               f"eps = {model.eps} may be too large for this task")
        rows.append(weights(solution.x))
    return torch.stack(rows)


def gradient_flow(model: QuadraticModel, x_train: torch.Tensor, y_train: torch.Tensor, *,
                  tolerance: float = 1e-11) -> torch.Tensor:
    """W(t → ∞) of the gradient flow dW/dt = -Σ_a φ^E(x_a; W) (z_a - y_a) from W = 0 (GD as
    η → 0, the ODE projectors), integrated by scipy's LSODA (rtol 1e-12) to the time where the
    kernel's slowest mode has decayed to `tolerance`, t = -log(tolerance) / λ_min(k~)."""
    phi, psi = model.features(x_train)
    shape = (y_train.shape[1], phi.shape[1])
    smallest = float(torch.linalg.eigvalsh(phi @ phi.T)[0])

    def velocity(_, w):
        W = torch.as_tensor(w).reshape(shape)
        residual = model._output(W, phi, psi) - y_train
        return (-torch.einsum("inj,ni->ij", model._effective(W, phi, psi), residual)).reshape(-1).numpy()

    end = -math.log(positive(tolerance, "tolerance")) / smallest
    flow = solve_ivp(velocity, (0.0, end), np.zeros(shape[0] * shape[1]), method="LSODA",
                     rtol=1e-12, atol=1e-14)
    return torch.as_tensor(flow.y[:, -1]).reshape(shape)
