"""The dNTK's leading statistic: its correlation with the preactivations, at order 1/n, over a
set of inputs, from a layer-to-layer recursion (Roberts, Yaida & Hanin 2022, PDLT ch. 11).

The dNTK of layer ℓ is dĤ_{i0 i1 i2; a b c} = Σ_μ ∂z_{i0;a}/∂θ_μ ∂Ĥ_{i1 i2; b c}/∂θ_μ (μ over the
parameters of layers ≤ ℓ, NTK parameterization, unit learning rates as in `nk.ntk_hierarchy`;
a, b, c, d sample indices). It has zero mean (flipping the signs of one layer's weights and
biases flips z and dĤ); its leading statistic is defined here by

    E[dĤ_{i0 i1 i2; abc} z_{i3; d}] = (1/n_{ℓ-1}) (δ_{i0 i3} δ_{i1 i2} P_abcd + δ_{i0 i1} δ_{i2 i3} Q_abcd
                                                + δ_{i0 i2} δ_{i1 i3} Q_acbd),

the book's P and Q (our normalization: 1/fan-in, as `nk.finite_width`). For one output,
E[dĤ(x_a, x_b, x_c) z(x_d)] = (P_abcd + Q_abcd + Q_acbd) / n_L. Recursion, with the Gaussian
moments ⟨·⟩ over z ~ N(0, K^(ℓ)) jointly over the samples, K, Θ, B and F of `nk.finite_width`
(F' that of layer ℓ + 1, F_(ax)(cy) = n_{ℓ-1} E[Ĥ_{ij;ac} z_{i;x} z_{j;y}], i ≠ j), C_W the
weights into layer ℓ + 1 and r = n_ℓ / n_{ℓ-1}:

    P'_abcd = F'_(ad)(bc) + F'_(ad)(cb)
              + C_W² [⟨σ'_a σ'_c σ''_b σ_d⟩ Θ_ab Θ_bc + r Θ_bc Σ_xy F_(ax)(by) ⟨∂_x(σ'_a σ_d)⟩⟨∂_y(σ'_c σ''_b)⟩]
              + C_W² [⟨σ'_a σ'_b σ''_c σ_d⟩ Θ_ac Θ_bc + r Θ_bc Σ_xy F_(ax)(cy) ⟨∂_x(σ'_a σ_d)⟩⟨∂_y(σ'_b σ''_c)⟩]
              + r C_W² ⟨σ'_b σ'_c⟩ Σ_e P_abce ⟨∂_e(σ'_a σ_d)⟩
    Q'_abcd = F'_(ba)(cd)
              + C_W² [⟨σ'_a σ'_c σ''_b σ_d⟩ Θ_ab Θ_bc + r Θ_ab Σ_xy F_(bx)(cy) ⟨∂_x(σ'_a σ''_b)⟩⟨∂_y(σ'_c σ_d)⟩]
              + C_W² [⟨σ'_a σ'_b σ''_c σ_d⟩ Θ_ac Θ_bc + r ⟨σ'_a σ'_b⟩⟨σ''_c σ_d⟩ B_(ab)(cc)]
              + r C_W² ⟨σ'_a σ'_b⟩ Σ_e Q_abce ⟨∂_e(σ'_c σ_d)⟩

with P^(1) = Q^(1) = 0 (the first layer is linear in its parameters). Derivation (ours; the
book's chapter 11 is not at hand): write dĤ^(ℓ+1) = ⟨z_a, Ĥ^(ℓ+1)_bc⟩ through layer ℓ (the
derivatives by W^(ℓ+1) give the F' terms; those through σ(z^(ℓ)) give σ'σ'' Ĥ Ĥ and σ'σ'σ' dĤ^(ℓ)),
then Isserlis over W^(ℓ+1) with the W of z^(ℓ+1)_d. Over layer ℓ, at leading order: a diagonal
NTK is Θ; an off-diagonal one correlates with two units' functions through F,
E[Ĥ_{ij;ac} f(z_i) g(z_j)] = (1/n_{ℓ-1}) Σ_xy F_(ax)(cy) ⟨∂_x f⟩⟨∂_y g⟩ (Stein's lemma over both
units' incoming weights); its square is B / n_{ℓ-1}; and the dNTK enters through its first
Hermite projection, E[dĤ G(z)] = Σ_{k,e} E[dĤ z_{k;e}] ⟨∂_{k;e} G⟩. Checked against Monte Carlo
of `nk.ntk_hierarchy` over several inputs (tests and the `finite-width` report). Smooth
activations only: ReLU's dNTK involves σ'' = δ.

The ddNTK ddĤ_{i0 i1 i2 i3} = Σ_μ ∂z_{i0}/∂θ_μ ∂dĤ_{i1 i2 i3}/∂θ_μ has a mean of order 1/n; at one
input x (sample indices dropped; symmetric in i2, i3)

    E[ddĤ_{i0 i1 i2 i3}] = (1/n_{ℓ-1}) (δ_{i0 i1} δ_{i2 i3} R + δ_{i0 i2} δ_{i1 i3} S + δ_{i0 i3} δ_{i1 i2} S),

so one output has E[ddĤ(x,x,x,x)] = (R + 2S) / n_L. With g = σσ', h = σ'σ'', λ = ⟨g'⟩ + Θ⟨h'⟩,
the moments over z ~ N(0, K^(ℓ)) and B, F (`nk.finite_width`), P, Q (above) at that input:

    R' = C_W² [2⟨g²⟩Θ + 2(⟨g'σ'²⟩ + 2⟨gh⟩)Θ² + 2(⟨σ'³σ'''⟩ + 2⟨h²⟩)Θ³
               + r (2Fλ² + ⟨σ'²⟩λ(2B + 2Q + P) + ⟨σ'²⟩² R)]
    S' = C_W² [⟨g²⟩Θ + (⟨σ'⁴⟩ + 4⟨gh⟩)Θ² + (2⟨σ'³σ'''⟩ + 4⟨h²⟩)Θ³
               + r (Fλ² + 2⟨σ'²⟩λQ + ⟨σ'²⟩B(⟨σ'²⟩ + 2⟨σσ''⟩ + Θ(2⟨σ'σ'''⟩ + ⟨σ''²⟩)) + ⟨σ'²⟩² S)]

with R^(1) = S^(1) = 0. Derivation (ours): expand ddĤ^(ℓ+1) = ⟨z_a, ⟨z_b, Ĥ_cd⟩⟩ (⟨A, B⟩ =
Σ_μ ∂_μA ∂_μB, a derivation: the product and chain rules hold) through W^(ℓ+1) and layer ℓ (the
terms carry Ĥ, dĤ and ddĤ of layer ℓ), Isserlis over the four rows of W^(ℓ+1) involved, then over
layer ℓ the same leading-order rules as for P and Q, plus: ddĤ^(ℓ) enters through its mean (its
correlation with the preactivations is of higher order), and a product of an off-diagonal NTK
with a dNTK is of higher order. For one hidden layer this is the closed form
2C_W²Θ[2⟨g²⟩ + Θ(7⟨gh⟩ + 2⟨σ'⁴⟩) + 3Θ²(2⟨h²⟩ + ⟨σ'³σ'''⟩)] found by differentiating the network
directly. Checked against Monte Carlo of `nk.ntk_hierarchy` (tests, `finite-width` report).
Not covered: the ddNTK over several inputs (the book's R, S, T, U with sample indices).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .arch.activations import ABRelu, Abs, Activation, LeakyRelu, Relu, Sign
from .arch.serial import Serial
from .finite_width_theory import _derivatives, _gaussian_grid, _mean, _mlp_layers, _sample_groups, finite_width

NON_SMOOTH = (Relu, LeakyRelu, ABRelu, Abs, Sign)


@dataclass(frozen=True)
class DNTKStatistics:
    """P and Q of the dNTK-preactivation correlation per layer ℓ = 1..L+1 over N inputs (module
    docstring), each [L+1, N, N, N, N]; `widths[ℓ-1]` is the fan-in n_{ℓ-1} of layer ℓ.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> stats = nk.dntk_statistics(nk.mlp(2, 64, activation=nk.Tanh()), torch.eye(2, 3))
    >>> stats.P.shape, float(stats.P[0].abs().max()), stats.output_correlation.shape
    (torch.Size([3, 2, 2, 2, 2]), 0.0, torch.Size([2, 2, 2, 2]))
    """
    widths: tuple[int, ...]
    P: torch.Tensor
    Q: torch.Tensor

    @property
    def output_correlation(self) -> torch.Tensor:
        """E[dĤ(x_a, x_b, x_c) z(x_d)] of one output unit at order 1/n, [N, N, N, N]:
        (P_abcd + Q_abcd + Q_acbd) / n_L."""
        q = self.Q[-1]
        return (self.P[-1] + q + q.permute(0, 2, 1, 3)) / self.widths[-1]


@dataclass
class _Moments:
    """Over z ~ N(0, K), each entry from the grid of its own samples: t4[a,b,c,d] = ⟨σ'_a σ'_b
    σ''_c σ_d⟩, qq = ⟨σ'_a σ'_b⟩, hs = ⟨σ''_a σ_b⟩, gds[a,b,x] = ⟨∂_x(σ'_a σ_b)⟩ and gdh[a,b,x] =
    ⟨∂_x(σ'_a σ''_b)⟩ (Stein: ⟨∂_x f⟩ = ⟨f u_x⟩, u = K⁻¹z)."""
    t4: np.ndarray
    qq: np.ndarray
    hs: np.ndarray
    gds: np.ndarray
    gdh: np.ndarray


def _moments(activation: Activation, k: np.ndarray, layer: int) -> _Moments:
    n = len(k)
    out = _Moments(*(np.zeros((n,) * rank) for rank in (4, 2, 2, 3, 3)))
    for size, group, w, z, u, _ in _sample_groups(k, layer):
        s, d, h = _derivatives(activation, z, 2)
        dd, hs, ds, dh = (np.einsum("qa,qb->qab", p, q) for p, q in ((d, d), (h, s), (d, s), (d, h)))
        index = lambda rank: np.ix_(*(group,) * rank)  # noqa: E731
        out.t4[index(4)] = _mean(w, dd, hs)
        if size <= 2:
            out.qq[index(2)], out.hs[index(2)] = np.einsum("q,qab->ab", w, dd), np.einsum("q,qab->ab", w, hs)
            out.gds[index(3)], out.gdh[index(3)] = _mean(w, ds, u), _mean(w, dh, u)
    return out


def _next_layer(p, q, m: _Moments, theta, f, f_next, b, cw: float, r: float):
    """(P, Q) of layer ℓ + 1 from layer ℓ's (module docstring)."""
    e = lambda spec, *ops: np.einsum(spec, *ops, optimize=True)  # noqa: E731
    diagonal = (e("acbd,ab,bc->abcd", m.t4, theta, theta), e("abcd,ac,bc->abcd", m.t4, theta, theta))
    p_next = (e("adbc->abcd", f_next) + e("adcb->abcd", f_next)
              + cw ** 2 * (diagonal[0] + r * e("bc,axby,adx,cby->abcd", theta, f, m.gds, m.gdh))
              + cw ** 2 * (diagonal[1] + r * e("bc,axcy,adx,bcy->abcd", theta, f, m.gds, m.gdh))
              + r * cw ** 2 * e("bc,abce,ade->abcd", m.qq, p, m.gds))
    q_next = (e("bacd->abcd", f_next)
              + cw ** 2 * (diagonal[0] + r * e("ab,bxcy,abx,cdy->abcd", theta, f, m.gdh, m.gds))
              + cw ** 2 * (diagonal[1] + r * e("ab,cd,abcc->abcd", m.qq, m.hs, b))
              + r * cw ** 2 * e("ab,abce,cde->abcd", m.qq, q, m.gds))
    return p_next, q_next


def dntk_statistics(net: Serial, x) -> DNTKStatistics:
    """`nk.dntk_statistics(net, x)`: P and Q of the dNTK's correlation with the preactivations
    of the MLP `net` over the inputs x, per layer, at order 1/n (module docstring for the
    recursion and its derivation).

    Cost: the Gaussian moments of `nk.finite_width` and ⟨σ'σ'σ''σ⟩ over every set of four
    inputs, and [N]^4 tensors per layer.

    Parameters
    ----------
    net : Serial
        An MLP `nk.serial(Dense, activation, ..., Dense)` in the NTK parameterization with a
        smooth activation (tanh, erf, GELU, ...).
    x : tensor or array
        Inputs `[N, d]` (or one input `[d]`); every four of them with a non-singular kernel.

    Returns
    -------
    DNTKStatistics
        `P`, `Q` [L+1, N, N, N, N]; `output_correlation` = E[dĤ(x_a, x_b, x_c) z(x_d)] of one output.

    Raises
    ------
    ValueError
        For a non-smooth activation, and as `nk.finite_width` for other networks or inputs.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> net = nk.mlp(1, 128, activation=nk.Tanh())     # one hidden layer: exact at any width
    >>> round(float(nk.dntk_statistics(net, torch.ones(3)).output_correlation) * 128, 4)
    -0.2739
    """
    pairs = _mlp_layers(net)
    rough = [act for _, act in pairs[:-1] if isinstance(act, NON_SMOOTH)]
    if rough:
        raise ValueError(f"dntk_statistics needs a smooth activation (the dNTK involves σ''), got "
                         f"{rough[0]!r}; use e.g. nk.Gelu() or nk.Erf()")
    stats = finite_width(net, x)
    n = stats.nngp.shape[1]
    P, Q = [np.zeros((n,) * 4)], [np.zeros((n,) * 4)]
    for ell in range(1, len(pairs)):            # layer ℓ → ℓ + 1
        layer = lambda tensor: tensor[ell - 1].numpy()  # noqa: E731
        p, q = _next_layer(P[-1], Q[-1], _moments(pairs[ell - 1][1], layer(stats.nngp), ell),
                           layer(stats.ntk), layer(stats.ntk_F), stats.ntk_F[ell].numpy(),
                           layer(stats.ntk_B), float(pairs[ell][0].W_std) ** 2,
                           stats.widths[ell] / stats.widths[ell - 1])
        P.append(p)
        Q.append(q)
    return DNTKStatistics(widths=stats.widths, P=torch.as_tensor(np.stack(P)), Q=torch.as_tensor(np.stack(Q)))


@dataclass(frozen=True)
class DDNTKStatistics:
    """R and S of the ddNTK mean per layer ℓ = 1..L+1 at one input (module docstring), each
    [L+1]; `widths[ℓ-1]` is the fan-in n_{ℓ-1} of layer ℓ.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> stats = nk.ddntk_statistics(nk.mlp(2, 64, activation=nk.Tanh()), torch.ones(3))
    >>> stats.R.shape, float(stats.R[0]), round(stats.output_mean * 64, 4)
    (torch.Size([3]), 0.0, -1.7469)
    """
    widths: tuple[int, ...]
    R: torch.Tensor
    S: torch.Tensor

    @property
    def output_mean(self) -> float:
        """E[ddĤ(x,x,x,x)] of one output unit at order 1/n: (R + 2S) / n_L."""
        return float(self.R[-1] + 2 * self.S[-1]) / self.widths[-1]


def _one_input_moments(activation: Activation, k: float) -> dict[str, float]:
    """The Gaussian moments of the R, S recursion at one input, z ~ N(0, k)."""
    w, z, _, _ = _gaussian_grid(np.array([[k]]))
    s, s1, s2, s3 = _derivatives(activation, z[:, 0], 3)
    g, h, dg, dh = s * s1, s1 * s2, s1 ** 2 + s * s2, s2 ** 2 + s1 * s3
    terms = {"g²": g * g, "gh": g * h, "h²": h * h, "g'": dg, "h'": dh, "g'σ'²": dg * s1 ** 2,
             "σ'²": s1 ** 2, "σ'⁴": s1 ** 4, "σ'³σ'''": s1 ** 3 * s3, "σσ''": s * s2,
             "σ'σ'''": s1 * s3, "σ''²": s2 ** 2}
    return {name: float(w @ values) for name, values in terms.items()}


def ddntk_statistics(net: Serial, x) -> DDNTKStatistics:
    """`nk.ddntk_statistics(net, x)`: R and S of the ddNTK mean of the MLP `net` at one input x,
    per layer, at order 1/n (module docstring for the recursion and its derivation).

    Parameters
    ----------
    net : Serial
        An MLP `nk.serial(Dense, activation, ..., Dense)` in the NTK parameterization with a
        smooth activation (tanh, erf, GELU, ...).
    x : tensor or array
        One input, `[d]` or `[1, d]`.

    Returns
    -------
    DDNTKStatistics
        `R`, `S` [L+1]; `output_mean` = E[ddĤ(x,x,x,x)] of one output.

    Raises
    ------
    ValueError
        For several inputs, a non-smooth activation, or as `nk.finite_width`.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> net = nk.mlp(1, 128, activation=nk.Tanh())     # one hidden layer: exact at any width
    >>> round(nk.ddntk_statistics(net, torch.ones(3)).output_mean * 128, 4)
    -0.9337
    """
    x = torch.as_tensor(x, dtype=torch.float64)
    if x.ndim == 2 and len(x) != 1:
        raise ValueError(f"x must be one input [d] or [1, d], got {len(x)} inputs; the ddNTK "
                         f"recursion is implemented at one input (call once per input)")
    pairs = _mlp_layers(net)
    dntk = dntk_statistics(net, x)
    stats = finite_width(net, x)
    R, S = [0.0], [0.0]
    for ell in range(1, len(pairs)):            # layer ℓ → ℓ + 1
        at = lambda tensor: float(tensor[ell - 1].reshape(-1)[0])  # noqa: E731
        theta, b, f, p, q = (at(t) for t in (stats.ntk, stats.ntk_B, stats.ntk_F, dntk.P, dntk.Q))
        m = _one_input_moments(pairs[ell - 1][1], at(stats.nngp))
        cw, r = float(pairs[ell][0].W_std) ** 2, stats.widths[ell] / stats.widths[ell - 1]
        lam = m["g'"] + theta * m["h'"]
        R.append(cw ** 2 * (2 * m["g²"] * theta + 2 * (m["g'σ'²"] + 2 * m["gh"]) * theta ** 2
                            + 2 * (m["σ'³σ'''"] + 2 * m["h²"]) * theta ** 3
                            + r * (2 * f * lam ** 2 + m["σ'²"] * lam * (2 * b + 2 * q + p)
                                   + m["σ'²"] ** 2 * R[-1])))
        S.append(cw ** 2 * (m["g²"] * theta + (m["σ'⁴"] + 4 * m["gh"]) * theta ** 2
                            + (2 * m["σ'³σ'''"] + 4 * m["h²"]) * theta ** 3
                            + r * (f * lam ** 2 + 2 * m["σ'²"] * lam * q
                                   + m["σ'²"] * b * (m["σ'²"] + 2 * m["σσ''"]
                                                     + theta * (2 * m["σ'σ'''"] + m["σ''²"]))
                                   + m["σ'²"] ** 2 * S[-1])))
    return DDNTKStatistics(widths=stats.widths, R=torch.tensor(R, dtype=torch.float64),
                           S=torch.tensor(S, dtype=torch.float64))
