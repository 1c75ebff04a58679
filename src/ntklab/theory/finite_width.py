"""Finite-width statistics of deep MLPs at order 1/n, computed from layer-to-layer recursions.

Roberts, Yaida & Hanin (2022), *The Principles of Deep Learning Theory* (PDLT): a network of
width n is its infinite-width kernel plus O(1/n) corrections that grow with depth (ε = L/n).
This module computes those corrections for a set of inputs x_1..x_N (the book's tensors over
sample indices, ch. 4, 8 and 9), for an `nk.serial` MLP of Dense layers (NTK parameterization)
and any activation with a torch function.

Notation (layer ℓ = 1, ..., L+1 are the preactivations z^(ℓ), fan-in m = n_{ℓ-1}; W ~ N(0, C_W/m),
b ~ N(0, C_b), C_W = W_std², C_b = b_std², learning-rate scales λ_W = C_W, λ_b = C_b in the NTK
parameterization; a, b, c, d are sample indices; ⟨f⟩ = E f(z), z ~ N(0, K^(ℓ)) jointly over
the samples; P_ab = σ(z_a)σ(z_b), Q_ab = σ'(z_a)σ'(z_b); i, j are neuron indices):

    E z_ia z_jb                  = δ_ij (K_ab + K¹_ab / m)                        (PDLT ch. 4)
    E[z_ia z_jb z_kc z_ld]_conn  = (1/m)(δ_ij δ_kl V_(ab)(cd) + δ_ik δ_jl V_(ac)(bd) + δ_il δ_jk V_(ad)(bc))
    E Θ̂_ij;ab                    = δ_ij (Θ_ab + Θ¹_ab / m)
    E[ΔΘ̂_ij;ab ΔΘ̂_kl;cd]         = (1/m)(δ_ij δ_kl A_(ab)(cd) + δ_ik δ_jl B_(ac)(bd) + δ_il δ_jk B_(ad)(bc))
    E[ΔΘ̂_ij;ab Δ(z_kc z_ld)]     = (1/m)(δ_ij δ_kl D_(ab)(cd) + δ_ik δ_jl F_(ac)(bd) + δ_il δ_jk F_(ad)(bc))

(PDLT ch. 4 and 8, up to the labels of B and F).  The recursions implemented, r = n_ℓ / n_{ℓ-1}:

    K' = C_b + C_W ⟨P⟩,   Θ'_ab = λ_b + λ_W ⟨P_ab⟩ + C_W ⟨Q_ab⟩ Θ_ab            (PDLT ch. 4, 7-8)
    S_(ab)(cd) = ⟨P_ab P_cd⟩ - ⟨P_ab⟩⟨P_cd⟩ + r 𝒱[P_ab, P_cd]
    X_(ab)(cd) = Θ_ab (⟨Q_ab P_cd⟩ - ⟨Q_ab⟩⟨P_cd⟩ + r 𝒱[Q_ab, P_cd]) + r ⟨Q_ab⟩ 𝒟_ab[P_cd]
    Y_(ab)(cd) = Θ_ab Θ_cd (⟨Q_ab Q_cd⟩ - ⟨Q_ab⟩⟨Q_cd⟩ + r 𝒱[Q_ab, Q_cd])
                 + r (Θ_ab ⟨Q_cd⟩ 𝒟_cd[Q_ab] + Θ_cd ⟨Q_ab⟩ 𝒟_ab[Q_cd] + ⟨Q_ab⟩⟨Q_cd⟩ A_(ab)(cd))
    V' = C_W² S                                                                   (PDLT ch. 4)
    D' = λ_W C_W S + C_W² X
    A' = λ_W² S + λ_W C_W (X + Xᵀ) + C_W² Y
    B'_(ab)(cd) = C_W² (⟨σ'_a σ'_b σ'_c σ'_d⟩ Θ_ac Θ_bd + r ⟨Q_ab⟩⟨Q_cd⟩ B_(ab)(cd))
    F'_(ab)(cd) = C_W² (⟨σ'_a σ'_c σ_b σ_d⟩ Θ_ac + r Σ_xy F_(ax)(cy) ⟨∂_x(σ'_a σ_b)⟩⟨∂_y(σ'_c σ_d)⟩)
    K¹' = r C_W δ[P]
    Θ¹'_ab = r (λ_W δ[P_ab] + C_W (⟨Q_ab⟩ Θ¹_ab + Θ_ab δ[Q_ab]
                                   + ½ Σ_xy (D_(ab)(xy) + F_(ax)(by) + F_(ay)(bx)) ⟨∂_x ∂_y Q_ab⟩))

with the contractions 𝒱[f, g] = ¼ Σ V_(xy)(uv) ⟨∂_x∂_y f⟩⟨∂_u∂_v g⟩, 𝒟_ab[f] = ½ Σ D_(ab)(xy) ⟨∂_x∂_y f⟩
and the mean shift δ[f] = ½ Σ K¹_xy ⟨∂_x∂_y f⟩ + ⅛ Σ V_(xy)(uv) ⟨∂_x∂_y∂_u∂_v f⟩, and every 1/n
quantity zero at layer 1 (z^(1) is exactly Gaussian, Θ^(1) deterministic).  Derivation: given
layer ℓ, z^(ℓ+1) is exactly Gaussian with the random covariance Ĝ = C_b + (C_W/m) Σ_j σ_j σ_jᵀ,
and the NTK of units i, k is δ_ik F̂ + W_iᵀ M W_k with M_jl;ab = σ'_ja σ'_lb Θ̂_jl;ab; Isserlis over
W gives the B and F terms, the covariance of the conditional means the A, D and V terms, and a
function of one unit's preactivations responds to a fluctuation of the covariance by Price's
theorem, d⟨f⟩ = ½ Σ dK_xy ⟨∂_x∂_y f⟩.  For one output, Cov[Θ̂(x_a, x_b), Θ̂(x_c, x_d)] =
(A_(ab)(cd) + B_(ac)(bd) + B_(ad)(bc)) / n_L.  Checks: with one input and ReLU at criticality
(C_W = 2, C_b = 0), V^(ℓ)/K² = 5(ℓ-1) and Var Θ̂/(EΘ̂)² = (L/n)(11L+7)/(3(L+1)) (an independent
referee's closed form); tests compare tanh, erf, GELU and ReLU networks against Monte Carlo.

Gaussian expectations: nested Gauss-Legendre quadrature in the Cholesky coordinates z = Lξ, each ξ_i
on [-c, c] (c = 12 to 8 standard deviations) split at the point where z_i = 0 (so kinks at 0, ReLU's, are exact),
with derivatives by
Stein's identity ⟨∂_x f⟩ = ⟨f u_x⟩, ⟨∂_x∂_y f⟩ = ⟨f (u_x u_y - K⁻¹_xy)⟩ and the fourth-order Hermite
tensor, u = K⁻¹z, so σ need not be smooth.  Two-sample quantities (means, derivatives) use the grid
of their own samples (≤ 2 dimensions, exact to rounding); four-sample moments use the grids of
every set of four samples (16 nodes per piece: relative error ~1e-8; fewer samples: ~1e-14).  Every four inputs' K must
be non-singular (distinct inputs, linearly independent with the bias).  The dNTK's correlation with the preactivations:
`nk.dntk_statistics`; the ddNTK mean: `nk.ddntk_statistics` (both dntk_theory.py).
"""
from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, fields

import numpy as np
import torch
from scipy.optimize import brentq

from .._core.validation import positive_int
from ..arch.activations import Activation, Relu
from ..arch.dense import Dense
from ..arch.serial import Serial

QUADRATURE = {1: (256, 12.0), 2: (48, 10.0), 3: (24, 9.0), 4: (16, 8.0)}
"""Per dimension: Gauss-Legendre nodes per piece and coordinate, and the cutoff in standard
deviations (the tails of z⁴-weighted moments beyond it are below 1e-15 relative)."""


@dataclass(frozen=True)
class FiniteWidthStatistics:
    """Per preactivation layer ℓ = 1..L+1 (the first axis) over the N inputs (the sample axes),
    see the module docstring. `widths[ℓ-1]` is the fan-in n_{ℓ-1} of layer ℓ (the input
    dimension first), the m of that layer's 1/m terms.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> stats = nk.finite_width(nk.mlp(2, 64, b_std=0.1), torch.randn(2, 3))
    >>> stats
    FiniteWidthStatistics(layers=3, widths=(3, 64, 64), inputs=2)
    >>> stats.ntk_A.shape, stats.ntk_covariance.shape
    (torch.Size([3, 2, 2, 2, 2]), torch.Size([2, 2, 2, 2]))
    """

    widths: tuple[int, ...]
    nngp: torch.Tensor          # K^(ℓ)_ab                      [L+1, N, N]
    four_point: torch.Tensor    # V^(ℓ)_(ab)(cd)                [L+1, N, N, N, N]
    nngp_shift: torch.Tensor    # K¹^(ℓ)_ab: E z_a z_b = K + K¹ / n_{ℓ-1}
    ntk: torch.Tensor           # Θ^(ℓ)_ab
    ntk_shift: torch.Tensor     # Θ¹^(ℓ)_ab: E Θ̂ = Θ + Θ¹ / n_{ℓ-1}
    ntk_A: torch.Tensor         # [L+1, N, N, N, N] each
    ntk_B: torch.Tensor
    ntk_D: torch.Tensor
    ntk_F: torch.Tensor

    @property
    def ntk_covariance(self) -> torch.Tensor:
        """Cov[Θ̂(x_a, x_b), Θ̂(x_c, x_d)] of one output unit at order 1/n, [N, N, N, N]:
        (A_(ab)(cd) + B_(ac)(bd) + B_(ad)(bc)) / n_L."""
        a, b = self.ntk_A[-1], self.ntk_B[-1]
        return (a + b.permute(0, 2, 1, 3) + b.permute(0, 2, 3, 1)) / self.widths[-1]

    @property
    def ntk_variance(self) -> torch.Tensor:
        """Var Θ̂(x_a, x_a) of one output unit at order 1/n, per input: (A + 2B) / n_L."""
        n = self.nngp.shape[1]
        return self.ntk_covariance.reshape(n * n, n * n).diagonal()[:: n + 1]

    @property
    def ntk_relative_variance(self) -> torch.Tensor:
        """Var Θ̂(x_a, x_a) / Θ(x_a, x_a)², per input."""
        return self.ntk_variance / self.ntk[-1].diagonal() ** 2

    def __repr__(self) -> str:
        return (f"FiniteWidthStatistics(layers={len(self.widths)}, widths={self.widths}, "
                f"inputs={self.nngp.shape[1]})")


@functools.lru_cache
def _legendre(count: int) -> tuple[np.ndarray, np.ndarray]:
    return np.polynomial.legendre.leggauss(count)


def _gaussian_grid(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Quadrature for z ~ N(0, cov) (module docstring): weights [Q], nodes z [Q, s],
    u = cov⁻¹ z [Q, s] and cov⁻¹."""
    s = len(cov)
    chol = np.linalg.cholesky(cov)
    count, cutoff = QUADRATURE[s]
    nodes, weights = _legendre(count)
    xi, w = np.zeros((1, 0)), np.ones(1)
    for i in range(s):  # z_i = L_i,<i ξ_<i + L_ii ξ_i vanishes at one ξ_i: split there
        kink = np.clip(-(xi @ chol[i, :i]) / chol[i, i], -cutoff, cutoff)[:, None]
        left, right = (kink + cutoff) / 2, (cutoff - kink) / 2
        t = np.concatenate([kink - left + left * nodes, kink + right + right * nodes], 1)
        wt = np.concatenate([left * weights, right * weights], 1) * np.exp(-t ** 2 / 2) / math.sqrt(2 * math.pi)
        xi = np.concatenate([np.repeat(xi, t.shape[1], 0), t.reshape(-1, 1)], 1)
        w = (w[:, None] * wt).reshape(-1)
    return w, xi @ chol.T, xi @ np.linalg.inv(chol), np.linalg.inv(cov)   # u = L⁻ᵀξ


def _hermite4(u: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """The fourth Hermite tensor of N(0, K) at u = K⁻¹z: ∂⁴ of the density over the density."""
    out = np.einsum("qx,qy,qz,qw->qxyzw", u, u, u, u)
    for pair, rest in (("xy", "zw"), ("xz", "yw"), ("xw", "yz"), ("yz", "xw"), ("yw", "xz"), ("zw", "xy")):
        out -= np.einsum(f"{pair},q{rest[0]},q{rest[1]}->qxyzw", inverse, u, u)
    for first, second in (("xy", "zw"), ("xz", "yw"), ("xw", "yz")):
        out += np.einsum(f"{first},{second}->xyzw", inverse, inverse)[None]
    return out


@dataclass
class _Moments:
    """Gaussian expectations over z ~ N(0, K) (N samples): pp = ⟨σ_a σ_b⟩, qq = ⟨σ'_a σ'_b⟩,
    ssss = ⟨σ_a σ_b σ_c σ_d⟩, ddss = ⟨σ'_a σ'_b σ_c σ_d⟩, dddd = ⟨σ'_a σ'_b σ'_c σ'_d⟩,
    hp[a,b,x,y] = ⟨∂_x∂_y(σ_a σ_b)⟩, hq likewise for σ'σ', gds[a,b,x] = ⟨∂_x(σ'_a σ_b)⟩ and
    fp, fq the fourth derivatives [a,b,x,y,u,v]."""

    pp: np.ndarray
    qq: np.ndarray
    ssss: np.ndarray
    ddss: np.ndarray
    dddd: np.ndarray
    hp: np.ndarray
    hq: np.ndarray
    gds: np.ndarray
    fp: np.ndarray
    fq: np.ndarray


def activation_derivatives(activation: Activation, z: np.ndarray, order: int = 1) -> list[np.ndarray]:
    """σ, σ', ..., σ^(order) at the grid nodes z (nested autograd)."""
    nodes = torch.as_tensor(z).requires_grad_(True)
    with torch.enable_grad():
        values = [activation.fn(nodes)]
        for _ in range(order):
            (derivative,) = torch.autograd.grad(values[-1].sum(), nodes, create_graph=order > 1)
            values.append(derivative)
    return [v.detach().numpy() for v in values]


def weighted_outer_mean(w: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Σ_q w_q left_q ⊗ right_q for arrays [Q, ...] (one matrix product)."""
    q = len(w)
    out = (w[:, None] * left.reshape(q, -1)).T @ right.reshape(q, -1)
    return out.reshape(left.shape[1:] + right.shape[1:])


def _check_nondegenerate(k: np.ndarray, group: tuple[int, ...], layer: int) -> None:
    """Each set of up to four inputs needs a non-singular kernel (its Gaussian has a density)."""
    eigenvalues = np.linalg.eigvalsh(k)
    if eigenvalues.min() <= 1e-10 * np.abs(eigenvalues).max():
        raise ValueError(f"the layer-{layer} kernel of inputs {list(group)} is singular: pass inputs "
                         f"of which every four are distinct and linearly independent (or a net with "
                         f"b_std > 0)")


def sample_groups(k: np.ndarray, layer: int):
    """Every set of up to four samples, largest first (so that, writing each entry from the
    grid of its set, smaller sets overwrite their entries, more accurately), with its quadrature
    (`_gaussian_grid`): yields (size, group, w, z, u, K⁻¹)."""
    for size in range(min(len(k), 4), 0, -1):
        for group in itertools.combinations(range(len(k)), size):
            _check_nondegenerate(k[np.ix_(group, group)], group, layer)
            yield size, group, *_gaussian_grid(k[np.ix_(group, group)])


def _moments(activation: Activation, k: np.ndarray, layer: int = 1) -> _Moments:
    """Each entry from the grid of exactly its own samples (module docstring): sets of up to
    four samples for the four-sample moments, of one or two for the rest."""
    n = len(k)
    out = _Moments(*(np.zeros((n,) * rank) for rank in (2, 2, 4, 4, 4, 4, 4, 3, 6, 6)))
    for size, group, w, z, u, inverse in sample_groups(k, layer):
        s, d = activation_derivatives(activation, z)
        ss, dd, ds = (np.einsum("qa,qb->qab", p, q) for p, q in ((s, s), (d, d), (d, s)))
        index = lambda rank, group=group: np.ix_(*(group,) * rank)  # noqa: E731
        out.ssss[index(4)], out.ddss[index(4)], out.dddd[index(4)] = (
            weighted_outer_mean(w, ss, ss), weighted_outer_mean(w, dd, ss), weighted_outer_mean(w, dd, dd))
        if size > 2:
            continue
        second = np.einsum("qx,qy->qxy", u, u) - inverse
        fourth = _hermite4(u, inverse)
        out.pp[index(2)], out.qq[index(2)] = np.einsum("q,qab->ab", w, ss), np.einsum("q,qab->ab", w, dd)
        out.hp[index(4)] = weighted_outer_mean(w, ss, second)
        out.hq[index(4)] = weighted_outer_mean(w, dd, second)
        out.gds[index(3)] = weighted_outer_mean(w, ds, u)
        out.fp[index(6)] = weighted_outer_mean(w, ss, fourth)
        out.fq[index(6)] = weighted_outer_mean(w, dd, fourth)
    return out


def mlp_layers(net: Serial) -> tuple[list[Dense], list[Activation]]:
    """The Dense layers (the last one the readout) and the activation after each other one,
    validated."""
    layers = list(net.layers)
    denses: list[Dense] = []
    activations: list[Activation] = []
    for i in range(0, len(layers), 2):
        dense, act = layers[i], layers[i + 1] if i + 1 < len(layers) else None
        if not isinstance(dense, Dense) or (act is not None and not isinstance(act, Activation)):
            raise ValueError(f"net must be an MLP nk.serial(Dense, activation, Dense, ..., Dense) "
                             f"(e.g. nk.mlp(3, 128, W_std=1.4)); layer {i} is {layers[i]!r}"
                             + ("" if act is None else f" followed by {act!r}"))
        if dense.parameterization != "ntk" or not dense.trainable:
            raise ValueError(f"layer {i}, {dense!r}: the finite-width recursions are implemented "
                             f"for trainable layers in the NTK parameterization")
        denses.append(dense)
        if act is not None:
            activations.append(act)
    if len(activations) == len(denses):   # no layer, or an activation last
        raise ValueError("net must end with a Dense readout (the statistics are of its outputs)")
    return denses, activations


def _outer(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return np.einsum("ab,cd->abcd", p, q)


def finite_width(net: Serial, x) -> FiniteWidthStatistics:
    """The order-1/n statistics (module docstring) of the MLP `net` jointly over the input rows
    of `x` ([N, d] or [d]), every hidden width n_ℓ taken from the net's Dense layers.

    Cost: the four-sample moments need a grid of 32^min(N,4) nodes per set of four inputs and
    layer (about a second each: C(N, 4) of them); pass one input at a time for per-input values.
    Only sets of up to four inputs enter any entry, so N may exceed d + 1 (with biases) as long as
    every four inputs have a non-singular kernel.

    Parameters
    ----------
    net : Serial
        An MLP `nk.serial(Dense, activation, ..., Dense)` in the NTK parameterization, e.g. `nk.mlp`.
    x : tensor or array
        Inputs `[N, d]` (or one input `[d]`); every four of them with a non-singular kernel.

    Returns
    -------
    FiniteWidthStatistics
        K, V, K¹, Θ, Θ¹, A, B, D, F per layer; `ntk_covariance`, `ntk_variance`.

    Raises
    ------
    ValueError
        For a network that is not such an MLP, or inputs with a singular kernel.

    Examples
    --------
    >>> import math, torch, ntklab as nk
    >>> x = torch.full((1, 4), 1.0, dtype=torch.float64)              # ||x||² = d
    >>> stats = nk.finite_width(nk.mlp(4, 128, W_std=math.sqrt(2)), x)  # ReLU at criticality
    >>> round(float(stats.ntk_relative_variance) * 128 / 4, 6)       # (11L + 7)/(3(L + 1))
    3.4
    >>> nk.finite_width(nk.mlp(2, 64, b_std=0.1), torch.randn(3, 4)).ntk_covariance.shape
    torch.Size([3, 3, 3, 3])
    """
    x = torch.as_tensor(x, dtype=torch.float64)
    x = x[None] if x.ndim == 1 else x
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"x must be one input [d] or inputs [N, d], got shape {tuple(x.shape)}")
    denses, activations = mlp_layers(net)
    x = x.numpy()
    widths = [x.shape[1]] + [dense.out for dense in denses[:-1]]
    n = len(x)
    first = denses[0]
    cw, cb = float(first.W_std) ** 2, float(first.b_std or 0.0) ** 2
    k = cb + cw * x @ x.T / x.shape[1]
    theta = k.copy()  # λ = C in the NTK parameterization
    k1, theta1, v, a, b, d, f = np.zeros((n, n)), np.zeros((n, n)), *np.zeros((5,) + (n,) * 4)
    rows: dict[str, list[np.ndarray]] = {field.name: [] for field in fields(FiniteWidthStatistics)
                                         if field.name != "widths"}
    for ell, (act, dense) in enumerate(zip(activations, denses[1:], strict=True), start=1):
        for name, value in zip(rows, (k, v, k1, theta, theta1, a, b, d, f), strict=True):
            rows[name].append(value)
        m = _moments(act, k, ell)
        cw, cb = float(dense.W_std) ** 2, float(dense.b_std or 0.0) ** 2
        lw, lb = cw, cb
        r = widths[ell] / widths[ell - 1]
        with_v = lambda hf, hg, v=v: np.einsum("abxy,xyuv,cduv->abcd", hf, v, hg, optimize=True) / 4  # noqa: E731
        d_of_p = np.einsum("abxy,cdxy->abcd", d, m.hp) / 2       # 𝒟_ab[P_cd]
        d_of_q = np.einsum("abxy,cdxy->abcd", d, m.hq) / 2       # 𝒟_ab[Q_cd]
        s = m.ssss - _outer(m.pp, m.pp) + r * with_v(m.hp, m.hp)
        cross = (theta[:, :, None, None] * (m.ddss - _outer(m.qq, m.pp) + r * with_v(m.hq, m.hp))
                 + r * m.qq[:, :, None, None] * d_of_p)
        tangent = (_outer(theta, theta) * (m.dddd - _outer(m.qq, m.qq) + r * with_v(m.hq, m.hq))
                   + r * (_outer(theta, m.qq) * d_of_q.transpose(2, 3, 0, 1)
                          + _outer(m.qq, theta) * d_of_q + _outer(m.qq, m.qq) * a))
        b_next = cw ** 2 * (m.dddd * np.einsum("ac,bd->abcd", theta, theta) + r * _outer(m.qq, m.qq) * b)
        f_next = cw ** 2 * (np.einsum("acbd,ac->abcd", m.ddss, theta)
                            + r * np.einsum("axcy,abx,cdy->abcd", f, m.gds, m.gds, optimize=True))
        shift_p = (np.einsum("xy,abxy->ab", k1, m.hp) / 2
                   + np.einsum("xyuv,abxyuv->ab", v, m.fp, optimize=True) / 8)
        shift_q = (np.einsum("xy,abxy->ab", k1, m.hq) / 2
                   + np.einsum("xyuv,abxyuv->ab", v, m.fq, optimize=True) / 8)
        response = d + np.einsum("axby->abxy", f) + np.einsum("aybx->abxy", f)
        theta1 = r * (lw * shift_p + cw * (m.qq * theta1 + theta * shift_q
                                           + np.einsum("abxy,abxy->ab", response, m.hq) / 2))
        k1 = r * cw * shift_p
        a = lw ** 2 * s + lw * cw * (cross + cross.transpose(2, 3, 0, 1)) + cw ** 2 * tangent
        d = lw * cw * s + cw ** 2 * cross
        v, b, f = cw ** 2 * s, b_next, f_next
        k, theta = cb + cw * m.pp, lb + lw * m.pp + cw * m.qq * theta
    for name, value in zip(rows, (k, v, k1, theta, theta1, a, b, d, f), strict=True):
        rows[name].append(value)
    return FiniteWidthStatistics(widths=tuple(widths), **{name: torch.as_tensor(np.stack(values))
                                                          for name, values in rows.items()})


@dataclass(frozen=True)
class Criticality:
    """Initialization hyperparameters at which the mean metric neither grows nor decays with
    depth (PDLT ch. 5): χ_∥(K*) = χ_⊥(K*) = 1 at the fixed point K* = C_b + C_W ⟨σ²⟩_{K*}.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> c = nk.criticality(nk.Tanh())
    >>> c.universality, c.W_std, c.b_std
    ('K*=0', 1.0, 0.0)
    """

    C_W: float
    C_b: float
    K_star: float | None       # None for the scale-invariant class (every K is a fixed point)
    universality: str          # "scale-invariant", "K*=0" or "K*>0"

    @property
    def W_std(self) -> float:
        """sqrt(C_W)."""
        return self.C_W ** 0.5

    @property
    def b_std(self) -> float:
        """sqrt(C_b)."""
        return self.C_b ** 0.5


def _single_input(activation: Activation, k: float) -> tuple[float, float, float]:
    """(⟨σ²⟩, ⟨σ'²⟩, d⟨σ²⟩/dK) for z ~ N(0, k)."""
    m = _moments(activation, np.array([[float(k)]]))
    return float(m.pp[0, 0]), float(m.qq[0, 0]), float(m.hp[0, 0, 0, 0]) / 2


def criticality(activation: Activation) -> Criticality:
    """The critical (C_W, C_b) of `activation` (PDLT §5.2-5.3):
      * scale-invariant σ (ReLU, leaky ReLU, |x|, linear: σ(λz) = λσ(z)): C_b = 0,
        C_W = 1/⟨σ'²⟩ (ReLU: 2), critical at every K;
      * a fixed point K* > 0 with ⟨σ'²⟩ = d⟨σ²⟩/dK, C_W = 1/⟨σ'²⟩, C_b = K* - C_W⟨σ²⟩ >= 0
        (e.g. GELU and SWISH);
      * else the K* = 0 class (σ(0) = 0, σ'(0) != 0: tanh, sin, erf): C_b = 0, C_W = 1/σ'(0)².
    Raises ValueError when none applies.

    Parameters
    ----------
    activation : Activation
        An ntklab activation, e.g. `nk.Tanh()`.

    Returns
    -------
    Criticality

    Raises
    ------
    ValueError
        When no critical initialization exists.

    Examples
    --------
    >>> import ntklab as nk
    >>> round(nk.criticality(nk.Relu()).C_W, 12)
    2.0
    >>> round(nk.criticality(nk.Gelu()).K_star, 6)                # (3 + sqrt 17) / 2
    3.561553
    """
    if not isinstance(activation, Activation):
        raise ValueError(f"activation must be an ntklab activation such as nk.Tanh(), got {activation!r}")
    z = torch.linspace(-4, 4, 81, dtype=torch.float64)
    if torch.allclose(activation.fn(2 * z), 2 * activation.fn(z), rtol=1e-12, atol=1e-12):
        c_w = 1.0 / _single_input(activation, 1.0)[1]
        return Criticality(C_W=c_w, C_b=0.0, K_star=None, universality="scale-invariant")
    def gap(k):  # χ_⊥ - χ_∥ at C_W = 1: zero at a fixed point with both equal to one
        _, slope2, derivative = _single_input(activation, k)
        return slope2 - derivative

    grid = np.logspace(-3, 3, 241)
    signs = np.sign([gap(k) for k in grid])
    for i in np.flatnonzero(signs[:-1] * signs[1:] < 0):
        k_star = brentq(gap, grid[i], grid[i + 1], xtol=1e-14, rtol=1e-14)
        mean2, slope2, _ = _single_input(activation, k_star)
        c_w = 1.0 / slope2
        c_b = k_star - c_w * mean2
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


def ntk_diagonal_samples(net: Serial, x, count: int, *, seed: int = 0, method: str = "auto",
                         device=None) -> torch.Tensor:
    """Exact samples of the NTK's diagonal Θ̂(x, x) of `count` independently initialized
    finite-width MLPs at one input, without building any network: O(n L) per network for any
    activation ("vectors"), O(L) for ReLU without biases ("chi-square").

    Derivation (one input, NTK parameterization, one output f = z^(L+1)). The NTK is
    Θ̂ = Σ_ℓ ||δ^(ℓ)||² (C_W ||h^(ℓ-1)||² / n_{ℓ-1} + C_b), δ^(ℓ) = ∂f/∂z^(ℓ), h^(ℓ) = σ(z^(ℓ)),
    h^(0) = x. Split each weight matrix along the unit vector ĥ = h^(ℓ)/||h^(ℓ)||:
    W^(ℓ+1) = v ĥᵀ + W' with v = W^(ℓ+1) ĥ ~ N(0, I) and W' = W^(ℓ+1)(I - ĥĥᵀ) independent of v
    (rows of a Gaussian matrix projected on orthogonal subspaces). The forward pass uses only v:
    z^(ℓ+1) = sqrt(C_W / n_ℓ) ||h^(ℓ)|| v + sqrt(C_b) b, and W' enters only the backward pass,
    Wᵀδ^(ℓ+1) = ĥ (vᵀδ^(ℓ+1)) + ||δ^(ℓ+1)|| (I - ĥĥᵀ) g with g ~ N(0, I_{n_ℓ}) independent of
    everything else (δ^(ℓ+1) depends on v and the later layers only). The forward and backward
    passes are therefore coupled only through vᵀδ^(ℓ+1), which is computed, not assumed away:

        δ^(ℓ) = sqrt(C_W / n_ℓ) σ'(z^(ℓ)) ⊙ (ĥ vᵀδ^(ℓ+1) + ||δ^(ℓ+1)|| (g - ĥ ĥᵀg))   ("vectors")

    with fresh Gaussian vectors v, b, g per layer: the joint law of (z^(ℓ), δ^(ℓ))_ℓ is that of
    the network, at O(n) per layer. For ReLU without biases it reduces to scalars: z^(ℓ) = sqrt(q_ℓ) u,
    the number of active units is k_ℓ ~ Binomial(n_ℓ, 1/2) and ||h^(ℓ)||² = q_ℓ c_ℓ with
    c_ℓ ~ χ²(k_ℓ), so q_{ℓ+1} = C_W q_ℓ c_ℓ / n_ℓ; ĥ lies in the active units, so the active part of
    g orthogonal to ĥ has squared norm e_ℓ ~ χ²(k_ℓ - 1) (independent of c_ℓ given k_ℓ); and
    Euler's identity for the degree-1 homogeneous network, z^(ℓ)ᵀδ^(ℓ) = f for every ℓ, gives
    vᵀδ^(ℓ+1) = f / sqrt(q_{ℓ+1}) with f² = q_{L+1} ξ², ξ ~ N(0, 1) -- the one coupling, shared by
    all layers. With β_ℓ = q_ℓ ||δ^(ℓ)||² = q_{L+1} t_ℓ:

        Θ̂ = q_{L+1} Σ_{ℓ=1}^{L+1} t_ℓ,   t_{L+1} = 1,   t_ℓ = (ξ² + t_{ℓ+1} e_ℓ) / c_ℓ    ("chi-square")

    (Θ̂ = 0 when some layer has no active unit.) Hanin & Nica (2020), "Finite depth and width
    corrections to the neural tangent kernel", use the same decomposition for ReLU; tests compare
    both methods with explicit networks (means, variances, Kolmogorov-Smirnov) and check
    Euler's identity and the independence on autograd through real networks.

    Parameters
    ----------
    net : Serial
        An MLP `nk.serial(Dense, activation, ..., Dense(1))` in the NTK parameterization, e.g.
        `nk.mlp` with one output.
    x : tensor or array
        One input `[d]` (or `[1, d]`).
    count : int
        Number of networks.
    seed : int
        Seeds the draws (deterministic given seed, count and method).
    method : {"auto", "vectors", "chi-square"}
        "chi-square" needs ReLU and no bias contribution (b_std None or 0); "auto" takes it when
        it applies, else "vectors".
    device : torch.device, optional
        Where "vectors" computes (its cost is O(count n L)).

    Returns
    -------
    torch.Tensor
        `[count]` float64 samples of Θ̂(x, x), one per network.

    Raises
    ------
    ValueError
        For a network that is not such an MLP, more than one output or input, or "chi-square"
        on a network it does not apply to.

    Examples
    --------
    >>> import math, torch, ntklab as nk
    >>> net = nk.mlp(4, 256, W_std=math.sqrt(2))                   # ReLU at criticality
    >>> theta = nk.ntk_diagonal_samples(net, torch.ones(3), 100_000)
    >>> round(float(theta.mean()), 1)                             # Θ = (L + 1) C_W ||x||²/d
    10.0
    """
    denses, activations = mlp_layers(net)
    count = positive_int(count, "count")
    x = torch.as_tensor(x, dtype=torch.float64)
    x = x[0] if x.ndim == 2 and len(x) == 1 else x
    if x.ndim != 1 or x.numel() == 0 or not torch.isfinite(x).all():
        raise ValueError("x must be one finite input [d] or [1, d] (the sampler is for one input: "
                         "call it once per input)")
    if denses[-1].out != 1:
        raise ValueError(f"the readout {denses[-1]!r} has {denses[-1].out} outputs: pass a net with one "
                         f"output (e.g. nk.mlp(..., out=1); each output's diagonal has the same law)")
    relu_without_bias = (all(isinstance(a, Relu) for a in activations)
                         and all(not d.b_std for d in denses))
    if method not in ("auto", "vectors", "chi-square"):
        raise ValueError(f"method must be 'auto', 'vectors' or 'chi-square', got {method!r}")
    if method == "chi-square" and not relu_without_bias:
        raise ValueError("method='chi-square' needs ReLU activations and no bias (b_std None or 0): "
                         "use method='vectors' for this net")
    scales = [(float(d.W_std) ** 2, float(d.b_std or 0.0) ** 2) for d in denses]
    q1 = scales[0][0] * float(x @ x) / len(x) + scales[0][1]
    if method == "chi-square" or (method == "auto" and relu_without_bias):
        return _relu_chi_square(q1, [c_w for c_w, _ in scales[1:]], [d.out for d in denses[:-1]], count, seed)
    return _vectors(x, scales, activations, [d.out for d in denses[:-1]], count, seed, device)


def _relu_chi_square(q1: float, c_w: list[float], widths: list[int], count: int, seed: int) -> torch.Tensor:
    """The "chi-square" sampler of `ntk_diagonal_samples` (bias-free ReLU): q_1 the first layer's
    variance, c_w the C_W of layers 2..L+1, widths n_1..n_L."""
    rng = np.random.default_rng(seed)
    xi2 = rng.standard_normal(count) ** 2
    active = [rng.binomial(n, 0.5, count) for n in widths]
    c = [2 * rng.standard_gamma(k / 2) for k in active]                      # χ²(k_ℓ)
    e = [2 * rng.standard_gamma(np.maximum(k - 1, 0) / 2) for k in active]  # χ²(k_ℓ - 1)
    alive = np.all([k > 0 for k in active], axis=0)
    q = q1 * np.prod([w * ci / n for w, ci, n in zip(c_w, c, widths, strict=True)], axis=0)
    t, total = np.ones(count), np.ones(count)
    with np.errstate(divide="ignore", invalid="ignore"):
        for c_l, e_l in zip(reversed(c), reversed(e), strict=True):
            t = (xi2 + t * e_l) / c_l
            total += t
        return torch.as_tensor(np.where(alive, q * total, 0.0))


def _vectors(x: torch.Tensor, scales: list[tuple[float, float]], activations: list[Activation],
             widths: list[int], count: int, seed: int, device) -> torch.Tensor:
    """The "vectors" sampler of `ntk_diagonal_samples`: scales (C_W, C_b) of the L+1 Dense
    layers, widths n_1..n_L; in chunks of networks so that memory stays ~100 MB."""
    g = torch.Generator(device=device or "cpu").manual_seed(seed)
    normal = functools.partial(torch.randn, generator=g, dtype=torch.float64, device=device)
    chunk = max(1, 2_000_000 // (max(widths) * len(widths)))
    out = []
    for start in range(0, count, chunk):
        s = min(chunk, count - start)
        norm2 = torch.full((s,), float(x @ x), dtype=torch.float64, device=device)   # ||h^(0)||²
        fan_in, theta = len(x), torch.zeros(s, dtype=torch.float64, device=device)
        layers: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for (c_w, c_b), act, n in zip(scales[:-1], activations, widths, strict=True):
            v = normal(s, n)
            z = (c_w * norm2 / fan_in).sqrt()[:, None] * v + (math.sqrt(c_b) * normal(s, n) if c_b else 0.0)
            with torch.enable_grad():
                z.requires_grad_(True)
                h = act.fn(z)
                (slope,) = torch.autograd.grad(h.sum(), z)
            h = h.detach()
            layers.append((v, c_w * norm2 / fan_in + c_b, h, slope))
            norm2, fan_in = (h ** 2).sum(1), n
        c_w, c_b = scales[-1]
        v_next = normal(s, 1)                                                         # the readout's v
        delta = torch.ones(s, 1, dtype=torch.float64, device=device)                 # δ^(L+1)
        theta += c_w * norm2 / fan_in + c_b
        for ell in range(len(widths) - 1, -1, -1):
            v, variance, h, slope = layers[ell]
            unit = h / h.norm(dim=1, keepdim=True).clamp_min(torch.finfo(h.dtype).tiny)  # ĥ (0 when h = 0)
            gauss = normal(s, widths[ell])
            along = (v_next * delta).sum(1, keepdim=True)                                # vᵀδ^(ℓ+1)
            orthogonal = gauss - unit * (unit * gauss).sum(1, keepdim=True)                  # (I - ĥĥᵀ) g
            backward = unit * along + delta.norm(dim=1, keepdim=True) * orthogonal
            delta = math.sqrt(scales[ell + 1][0] / widths[ell]) * slope * backward
            theta += (delta ** 2).sum(1) * variance
            v_next = v
        out.append(theta.cpu())
    return torch.cat(out)
