"""Finite-width statistics of deep MLPs at order 1/n, computed from layer-to-layer recursions.

Roberts, Yaida & Hanin (2022), *The Principles of Deep Learning Theory* (PDLT): a network of
width n is its infinite-width kernel plus O(1/n) corrections that grow with depth (ε = L/n).
This module computes those corrections for one input x (the book's degenerate, single-input
limit, ch. 4-5 and 8-9), for an `nk.serial` MLP of Dense layers (NTK parameterization) and any
activation with a torch function.

Notation (layer ℓ = 1, ..., L+1 are the preactivations z^(ℓ), fan-in n_{ℓ-1}; W ~ N(0, C_W /
n_{ℓ-1}), b ~ N(0, C_b) with C_W = W_std², C_b = b_std², and in the NTK parameterization the
learning-rate scales λ_W = C_W, λ_b = C_b; ⟨f⟩ = E f(z), z ~ N(0, K^(ℓ))):

    mean metric       K^(ℓ+1) = C_b + C_W ⟨σ²⟩                                   (PDLT 4.118)
    NTK mean          Θ^(ℓ+1) = λ_b + λ_W ⟨σ²⟩ + χ_⊥ Θ^(ℓ),   χ_⊥ = C_W ⟨σ'²⟩        (PDLT 8.63)
    four-point vertex E[z_i z_j z_k z_l]_connected = (V/n)(δ_ij δ_kl + δ_ik δ_jl + δ_il δ_jk)
                      V^(ℓ+1) = C_W² (⟨σ⁴⟩ - ⟨σ²⟩²) + r χ_∥² V^(ℓ),  χ_∥ = C_W d⟨σ²⟩/dK  (PDLT 4.90)
    NTK fluctuations  E[ΔΘ_i1i2 ΔΘ_i3i4] = (1/n)(δ_i1i2 δ_i3i4 A + (δ_i1i3 δ_i2i4 + δ_i1i4 δ_i2i3) B),
    NTK-preactivation E[ΔΘ_i1i2 Δ(z_i3 z_i4)] = (1/n)(δ_i1i2 δ_i3i4 D + (δ_i1i3 δ_i2i4 + δ_i1i4 δ_i2i3) F)
                      (PDLT 8.70-8.89, single input), and the 1/n shifts of the means
                      E z² = K + K^{1}/n, E Θ = Θ + Θ^{1}/n (PDLT 4.116, 9.?).

The recursions implemented (derived in the single-input limit, where z^(ℓ+1) given layer ℓ is
exactly Gaussian with the random variance Ĝ = C_b + (C_W/n)Σ_j σ_j², and the NTK of unit i is
F̂ + W_i^T M W_i with F̂ = λ_b + (λ_W/n)Σ_j σ_j², M_jk = σ'_j σ'_k Θ̂_jk; r = n_ℓ / n_{ℓ-1};
S = ⟨σ⁴⟩ - ⟨σ²⟩² + r V (d⟨σ²⟩/dK)²,  X = Θ(⟨σ²σ'²⟩ - ⟨σ²⟩⟨σ'²⟩) + r Θ V (d⟨σ²⟩/dK)(d⟨σ'²⟩/dK)
+ r ⟨σ'²⟩ D d⟨σ²⟩/dK):

    V' = C_W² S
    D' = λ_W C_W S + C_W² X
    A' = λ_W² S + 2 λ_W C_W X + C_W² [Θ² (⟨σ'⁴⟩ - ⟨σ'²⟩²) + r Θ² V (d⟨σ'²⟩/dK)² + r ⟨σ'²⟩² A
                                      + 2 r Θ ⟨σ'²⟩ D d⟨σ'²⟩/dK]
    B' = C_W² ⟨σ'⁴⟩ Θ² + r χ_⊥² B
    F' = C_W² ⟨σ²σ'²⟩ Θ + r χ_∥² F
    K^{1}' = r [χ_∥ K^{1} + (C_W/2) V d²⟨σ²⟩/dK²]
    Θ^{1}' = r [λ_W (K^{1} d⟨σ²⟩/dK + (V/2) d²⟨σ²⟩/dK²) + C_W (⟨σ'²⟩ Θ^{1}
               + Θ (K^{1} d⟨σ'²⟩/dK + (V/2) d²⟨σ'²⟩/dK²) + (D + 2F) d⟨σ'²⟩/dK)]

with all quantities zero at layer 1 (z^(1) is exactly Gaussian and Θ^(1) deterministic).  The
diagonal NTK of one output then has Var Θ̂ = (A + 2B)/n_L.  Checks: for the bias-free ReLU MLP at
criticality (C_W = 2) they give V^(ℓ)/K² = 5(ℓ-1) and Var Θ̂/(EΘ̂)² = (L/n)(11L+7)/(3(L+1)), an
independent referee's closed form; tests compare tanh and erf networks against Monte Carlo.

Gaussian expectations use Gauss-Legendre quadrature on [-12√K, 0] and [0, 12√K] (exact to
rounding for activations smooth away from 0, e.g. ReLU's kink), derivatives in K the identities
d⟨f⟩/dK = ⟨f He₂(ξ)⟩/(2K) and d²⟨f⟩/dK² = ⟨f He₄(ξ)⟩/(4K²) (ξ = z/√K), so σ need not be smooth.
Not covered here: several inputs (the book's tensors over sample indices) and the dNTK/ddNTK.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from scipy.optimize import brentq

from .arch.activations import Activation
from .arch.dense import Dense
from .arch.serial import Serial

HALF_LINE_NODES = 256
CUTOFF = 12.0  # standard deviations: the Gaussian mass beyond is 4e-33


@dataclass(frozen=True)
class FiniteWidthStatistics:
    """Per preactivation layer ℓ = 1..L+1 (rows) and input (columns), see the module docstring.
    `widths[ℓ-1]` is the fan-in n_{ℓ-1} of layer ℓ (the input dimension first)."""
    widths: tuple[int, ...]
    nngp: torch.Tensor          # K^(ℓ)
    four_point: torch.Tensor    # V^(ℓ)
    nngp_shift: torch.Tensor    # K^{1}(ℓ): E z² = K + K^{1} / n_{ℓ-1}
    ntk: torch.Tensor           # Θ^(ℓ)
    ntk_shift: torch.Tensor     # Θ^{1}(ℓ): E Θ̂ = Θ + Θ^{1} / n_{ℓ-1}
    ntk_A: torch.Tensor
    ntk_B: torch.Tensor
    ntk_D: torch.Tensor
    ntk_F: torch.Tensor

    @property
    def ntk_variance(self) -> torch.Tensor:
        """Var Θ̂(x, x) of one output unit at order 1/n: (A + 2B) / n_L, per input."""
        return (self.ntk_A[-1] + 2 * self.ntk_B[-1]) / self.widths[-1]

    @property
    def ntk_relative_variance(self) -> torch.Tensor:
        """Var Θ̂(x, x) / Θ(x, x)², per input."""
        return self.ntk_variance / self.ntk[-1] ** 2

    def __repr__(self) -> str:
        return (f"FiniteWidthStatistics(layers={len(self.widths)}, widths={self.widths}, "
                f"inputs={self.nngp.shape[1]})")


class _Moments:
    """Gaussian expectations of σ², σ⁴, σ'², σ'⁴, σ²σ'² and the K-derivatives of ⟨σ²⟩, ⟨σ'²⟩
    for z ~ N(0, K), one K per column."""

    def __init__(self, activation: Activation, variance: torch.Tensor):
        nodes, weights = np.polynomial.legendre.leggauss(HALF_LINE_NODES)
        xi = np.concatenate([(nodes - 1) * CUTOFF / 2, (nodes + 1) * CUTOFF / 2])  # [-c, 0], [0, c]
        w = np.concatenate([weights, weights]) * CUTOFF / 2 * np.exp(-xi ** 2 / 2) / np.sqrt(2 * np.pi)
        xi = torch.as_tensor(xi, dtype=torch.float64)[:, None]
        w = torch.as_tensor(w, dtype=torch.float64)[:, None]
        z = (xi * variance.sqrt()).requires_grad_(True)
        with torch.enable_grad():
            sigma = activation.fn(z)
            (slope,) = torch.autograd.grad(sigma.sum(), z)
        sigma, s2, d2 = sigma.detach(), sigma.detach() ** 2, slope ** 2
        mean = lambda f: (w * f).sum(0)  # noqa: E731
        he2, he4 = xi ** 2 - 1, xi ** 4 - 6 * xi ** 2 + 3
        k = variance
        self.s2, self.s4, self.d2, self.d4, self.s2d2 = (mean(s2), mean(s2 * s2), mean(d2),
                                                          mean(d2 * d2), mean(s2 * d2))
        self.s2_dk, self.d2_dk = mean(s2 * he2) / (2 * k), mean(d2 * he2) / (2 * k)
        self.s2_dkk, self.d2_dkk = mean(s2 * he4) / (4 * k * k), mean(d2 * he4) / (4 * k * k)


def _mlp_layers(net: Serial) -> list[tuple[Dense, Activation | None]]:
    """[(Dense, the activation after it or None for the readout)], validated."""
    layers = list(net.layers)
    pairs = []
    for i in range(0, len(layers), 2):
        dense, act = layers[i], layers[i + 1] if i + 1 < len(layers) else None
        if not isinstance(dense, Dense) or (act is not None and not isinstance(act, Activation)):
            raise ValueError(f"net must be an MLP nk.serial(Dense, activation, Dense, ..., Dense) "
                             f"(e.g. nk.mlp(3, 128, W_std=1.4)); layer {i} is {layers[i]!r}"
                             + ("" if act is None else f" followed by {act!r}"))
        if dense.parameterization != "ntk" or not dense.trainable:
            raise ValueError(f"layer {i}, {dense!r}: the finite-width recursions are implemented "
                             f"for trainable layers in the NTK parameterization")
        pairs.append((dense, act))
    if pairs[-1][1] is not None:
        raise ValueError("net must end with a Dense readout (the statistics are of its outputs)")
    return pairs


def finite_width(net: Serial, x) -> FiniteWidthStatistics:
    """The order-1/n statistics (module docstring) of the MLP `net` at each input row of `x`
    ([N, d] or [d]), every hidden width n_ℓ taken from the net's Dense layers."""
    x = torch.as_tensor(x, dtype=torch.float64)
    x = x[None] if x.ndim == 1 else x
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"x must be one input [d] or inputs [N, d], got shape {tuple(x.shape)}")
    pairs = _mlp_layers(net)
    widths = [x.shape[1]] + [dense.out for dense, _ in pairs[:-1]]
    zero = torch.zeros(x.shape[0], dtype=torch.float64)
    rows = {f.name: [] for f in fields(FiniteWidthStatistics) if f.name != "widths"}
    # layer 1: exactly Gaussian, deterministic NTK
    first = pairs[0][0]
    cw, cb = float(first.W_std) ** 2, float(first.b_std or 0.0) ** 2
    k = cb + cw * (x * x).sum(1) / x.shape[1]
    theta = k.clone()  # λ = C in the NTK parameterization
    v = k1 = theta1 = a = b = d = f = zero
    for ell, ((_, act), (dense, _)) in enumerate(zip(pairs[:-1], pairs[1:]), start=1):
        for name, value in zip(rows, (k, v, k1, theta, theta1, a, b, d, f)):
            rows[name].append(value)
        m = _Moments(act, k)
        cw, cb = float(dense.W_std) ** 2, float(dense.b_std or 0.0) ** 2
        lw, lb = cw, cb
        r = widths[ell] / widths[ell - 1]
        chi_par, chi_perp = cw * m.s2_dk, cw * m.d2
        s = m.s4 - m.s2 ** 2 + r * v * m.s2_dk ** 2
        cross = (theta * (m.s2d2 - m.s2 * m.d2) + r * theta * v * m.s2_dk * m.d2_dk
                 + r * m.d2 * d * m.s2_dk)
        a_next = (lw ** 2 * s + 2 * lw * cw * cross
                  + cw ** 2 * (theta ** 2 * (m.d4 - m.d2 ** 2) + r * theta ** 2 * v * m.d2_dk ** 2
                               + r * m.d2 ** 2 * a + 2 * r * theta * m.d2 * d * m.d2_dk))
        d_next = lw * cw * s + cw ** 2 * cross
        b_next = cw ** 2 * m.d4 * theta ** 2 + r * chi_perp ** 2 * b
        f_next = cw ** 2 * m.s2d2 * theta + r * chi_par ** 2 * f
        k1_next = r * (chi_par * k1 + cw / 2 * v * m.s2_dkk)
        theta1_next = r * (lw * (k1 * m.s2_dk + v / 2 * m.s2_dkk)
                           + cw * (m.d2 * theta1 + theta * (k1 * m.d2_dk + v / 2 * m.d2_dkk)
                                   + (d + 2 * f) * m.d2_dk))
        v = cw ** 2 * s
        k, theta = cb + cw * m.s2, lb + lw * m.s2 + chi_perp * theta
        a, b, d, f, k1, theta1 = a_next, b_next, d_next, f_next, k1_next, theta1_next
    for name, value in zip(rows, (k, v, k1, theta, theta1, a, b, d, f)):
        rows[name].append(value)
    return FiniteWidthStatistics(widths=tuple(widths), **{name: torch.stack(values)
                                                          for name, values in rows.items()})


@dataclass(frozen=True)
class Criticality:
    """Initialization hyperparameters at which the mean metric neither grows nor decays with
    depth (PDLT ch. 5): χ_∥(K*) = χ_⊥(K*) = 1 at the fixed point K* = C_b + C_W ⟨σ²⟩_{K*}."""
    C_W: float
    C_b: float
    K_star: float | None       # None for the scale-invariant class (every K is a fixed point)
    universality: str          # "scale-invariant", "K*=0" or "K*>0"

    @property
    def W_std(self) -> float:
        return self.C_W ** 0.5

    @property
    def b_std(self) -> float:
        return self.C_b ** 0.5


def criticality(activation: Activation) -> Criticality:
    """The critical (C_W, C_b) of `activation` (PDLT §5.2-5.3):
      * scale-invariant σ (ReLU, leaky ReLU, |x|, linear: σ(λz) = λσ(z)): C_b = 0,
        C_W = 1/⟨σ'²⟩ (ReLU: 2), critical at every K;
      * a fixed point K* > 0 with ⟨σ'²⟩ = d⟨σ²⟩/dK, C_W = 1/⟨σ'²⟩, C_b = K* - C_W⟨σ²⟩ >= 0
        (e.g. GELU and SWISH);
      * else the K* = 0 class (σ(0) = 0, σ'(0) != 0: tanh, sin, erf): C_b = 0, C_W = 1/σ'(0)².
    Raises ValueError when none applies."""
    if not isinstance(activation, Activation):
        raise ValueError(f"activation must be an ntklab activation such as nk.Tanh(), got {activation!r}")
    z = torch.linspace(-4, 4, 81, dtype=torch.float64)
    if torch.allclose(activation.fn(2 * z), 2 * activation.fn(z), rtol=1e-12, atol=1e-12):
        c_w = 1.0 / float(_Moments(activation, torch.ones(1, dtype=torch.float64)).d2)
        return Criticality(C_W=c_w, C_b=0.0, K_star=None, universality="scale-invariant")
    def moments(k) -> _Moments:
        return _Moments(activation, torch.as_tensor(k, dtype=torch.float64).reshape(-1))

    def gap(k):  # χ_⊥ - χ_∥ at C_W = 1: zero at a fixed point with both equal to one
        m = moments(k)
        return (m.d2 - m.s2_dk).numpy()

    grid = np.logspace(-3, 3, 241)
    signs = np.sign(gap(grid))
    for i in np.flatnonzero(signs[:-1] * signs[1:] < 0):
        k_star = brentq(lambda k: float(gap(k)[0]), grid[i], grid[i + 1], xtol=1e-14, rtol=1e-14)
        mm = moments(k_star)
        c_w = 1.0 / float(mm.d2)
        c_b = k_star - c_w * float(mm.s2)
        if c_b >= -1e-12:
            return Criticality(C_W=c_w, C_b=max(c_b, 0.0), K_star=k_star, universality="K*>0")
    zero = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    value = activation.fn(zero)
    (slope,) = torch.autograd.grad(value.sum(), zero)
    if float(value.detach()) == 0.0 and float(slope) != 0.0:
        return Criticality(C_W=1.0 / float(slope) ** 2, C_b=0.0, K_star=0.0, universality="K*=0")
    raise ValueError(f"{activation!r} has no critical initialization: not scale-invariant, no "
                     f"fixed point with chi_par = chi_perp = 1 and C_b >= 0 for K in [1e-3, 1e3], "
                     f"and sigma(0) != 0 or sigma'(0) = 0")
