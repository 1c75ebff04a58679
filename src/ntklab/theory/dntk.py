"""The dNTK's and ddNTK's leading statistics -- the dNTK's correlation with the preactivations and
the ddNTK's mean, at order 1/n over a set of inputs -- from layer-to-layer recursions (Roberts,
Yaida & Hanin 2022, PDLT ch. 11).

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

The ddNTK ddĤ_{i0 i1 i2 i3; abcd} = Σ_μ ∂z_{i0;a}/∂θ_μ ∂dĤ_{i1 i2 i3; bcd}/∂θ_μ has a mean of order
1/n (symmetric in (i2, c) ↔ (i3, d)):

    E[ddĤ_{i0 i1 i2 i3; abcd}] = (1/n_{ℓ-1}) (δ_{i0 i1} δ_{i2 i3} R_abcd + δ_{i0 i2} δ_{i1 i3} S_abcd
                                            + δ_{i0 i3} δ_{i1 i2} S_abdc),

so one output has E[ddĤ(x_a, x_b, x_c, x_d)] = (R_abcd + S_abcd + S_abdc) / n_L. At one input (sample
indices dropped), with g = σσ', h = σ'σ'', λ = ⟨g'⟩ + Θ⟨h'⟩ and B, F, P, Q of that input:

    R' = C_W² [2⟨g²⟩Θ + 2(⟨g'σ'²⟩ + 2⟨gh⟩)Θ² + 2(⟨σ'³σ'''⟩ + 2⟨h²⟩)Θ³
               + r (2Fλ² + ⟨σ'²⟩λ(2B + 2Q + P) + ⟨σ'²⟩² R)]
    S' = C_W² [⟨g²⟩Θ + (⟨σ'⁴⟩ + 4⟨gh⟩)Θ² + (2⟨σ'³σ'''⟩ + 4⟨h²⟩)Θ³
               + r (Fλ² + 2⟨σ'²⟩λQ + ⟨σ'²⟩B(⟨σ'²⟩ + 2⟨σσ''⟩ + Θ(2⟨σ'σ'''⟩ + ⟨σ''²⟩)) + ⟨σ'²⟩² S)]

with R^(1) = S^(1) = 0; over several inputs every term carries its samples (`_next_ddntk`, whose
groups of terms are listed there). Derivation (ours): ⟨A, B⟩ = Σ_μ ∂_μA ∂_μB obeys the product
and chain rules, so ddĤ^(ℓ+1) = ⟨z_a, ⟨z_b, Ĥ_cd⟩⟩ expands through W^(ℓ+1) and layer ℓ into terms
carrying Ĥ, dĤ and ddĤ of layer ℓ; Isserlis over the four rows of W^(ℓ+1) involved; then over
layer ℓ the rules above, plus: ddĤ^(ℓ) enters through its mean (its correlation with the
preactivations is of higher order), and a product of an off-diagonal NTK with a dNTK is of higher
order. For one hidden layer at one input this is the closed form
2C_W²Θ[2⟨g²⟩ + Θ(7⟨gh⟩ + 2⟨σ'⁴⟩) + 3Θ²(2⟨h²⟩ + ⟨σ'³σ'''⟩)] found by differentiating the network
directly. The coefficients of δ_{i0 i2} δ_{i1 i3} and δ_{i0 i3} δ_{i1 i2} come from different terms
and agree (T_abcd = S_abdc) to rounding: a check of the sample bookkeeping. Checked against Monte
Carlo of `nk.ntk_hierarchy` (tests, `finite-width` report).
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch

from ..arch.activations import Activation
from ..arch.serial import Serial
from .finite_width import (activation_derivatives, finite_width, mlp_layers, sample_groups,
                                  weighted_outer_mean)


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


def _layer_moments(activation: Activation, k: np.ndarray, layer: int, fours=(), twos=(), grads=()) -> dict:
    """Gaussian moments over z ~ N(0, K) of derivatives σ^(i) (orders 0-3), each entry from the
    grid of exactly its own samples (`sample_groups`): for orders (i, j, l, m) in `fours`,
    [a,b,c,d] = ⟨σ^(i)_a σ^(j)_b σ^(l)_c σ^(m)_d⟩; for (i, j) in `twos`, [a,b] = ⟨σ^(i)_a σ^(j)_b⟩;
    for (i, j) in `grads`, [a,b,x] = ⟨∂_x(σ^(i)_a σ^(j)_b)⟩ = ⟨σ^(i)_a σ^(j)_b u_x⟩ (Stein,
    u = K⁻¹z). Keys: ("four", orders), ("two", orders), ("grad", orders)."""
    n = len(k)
    out = {**{("four", o): np.zeros((n,) * 4) for o in fours}, **{("two", o): np.zeros((n,) * 2) for o in twos},
           **{("grad", o): np.zeros((n,) * 3) for o in grads}}
    order = max(max(o) for o in (*fours, *twos, *grads))
    for size, group, w, z, u, _ in sample_groups(k, layer):
        values = activation_derivatives(activation, z, order)
        index = lambda rank, group=group: np.ix_(*(group,) * rank)  # noqa: E731
        for o in fours:
            first, second = (np.einsum("qa,qb->qab", values[i], values[j]) for i, j in (o[:2], o[2:]))
            out["four", o][index(4)] = weighted_outer_mean(w, first, second)
        if size <= 2:
            for o in twos:
                out["two", o][index(2)] = np.einsum("q,qa,qb->ab", w, values[o[0]], values[o[1]])
            for o in grads:
                out["grad", o][index(3)] = np.einsum("q,qa,qb,qx->abx", w, values[o[0]], values[o[1]], u)
    return out


DNTK_MOMENTS = {"fours": [(1, 1, 2, 0)], "twos": [(1, 1), (2, 0)], "grads": [(1, 0), (1, 2)]}
DDNTK_MOMENTS = {"fours": [(1, 1, 2, 0), (1, 1, 1, 1), (1, 1, 0, 2), (0, 1, 1, 0), (0, 1, 0, 1), (1, 2, 1, 0),
                           (1, 2, 0, 1), (1, 0, 2, 1), (1, 0, 1, 2), (1, 1, 3, 1), (0, 1, 2, 1), (1, 2, 2, 1),
                           (1, 1, 2, 2)],
                 "twos": [(1, 1), (2, 0), (0, 2), (3, 1), (1, 3), (2, 2)],
                 "grads": [(0, 1), (1, 0), (1, 2), (2, 1)]}


def _swap_last(slots: dict) -> dict:
    """The mirror image of a term under exchanging the ddNTK's last two units with their samples:
    R_abcd ← R_abdc, S_abcd ← T_abdc, T_abcd ← S_abdc."""
    last = lambda t: t.transpose(0, 1, 3, 2)  # noqa: E731
    return {"R": last(slots["R"]), "S": last(slots["T"]), "T": last(slots["S"])}


def _next_ddntk(dd: dict, p, q, moments: dict, theta, f, f_next, b, cw: float, r: float) -> dict:
    """(R, S, T) of layer ℓ + 1 from layer ℓ's (module docstring), T_abcd = S_abdc: the terms of
    ddĤ' = ⟨z_a, ⟨z_b, Ĥ'_cd⟩⟩ (samples a, b, c, d) grouped by their origin (the module
    docstring's derivation), each slot's coefficient of δ_ab δ_cd (R), δ_ac δ_bd (S), δ_ad δ_bc (T)."""
    e = lambda spec, *ops: np.einsum(spec, *ops, optimize=True)  # noqa: E731
    four = lambda *o: moments["four", o]  # noqa: E731
    two, grad = (lambda *o: moments["two", o]), (lambda *o: moments["grad", o])
    th, qq = theta, two(1, 1)
    zero = np.zeros_like(p)
    # δ_cd ⟨z_a, ⟨z_b, C_W/n Σ_j σ_jc σ_jd⟩⟩: the mean covariance's derivatives
    metric = {"R": (e("abcd,ac,bc->abcd", four(1, 1, 2, 0), th, th)
                    + four(1, 1, 1, 1) * (e("ad,bc->abcd", th, th) + e("ac,bd->abcd", th, th))
                    + e("abcd,ad,bd->abcd", four(1, 1, 0, 2), th, th)
                    + e("abcd,bc->abcd", four(0, 1, 1, 0), th) + e("abcd,bd->abcd", four(0, 1, 0, 1), th)
                    + e("abcd,ab,bc->abcd", four(1, 2, 1, 0), th, th) + e("abcd,ab,bd->abcd", four(1, 2, 0, 1), th, th)
                    + r * (e("ab,cd,abcc->abcd", qq, two(2, 0), b) + e("ab,cd,abdc->abcd", qq, qq, b)
                           + e("ab,cd,abcd->abcd", qq, qq, b) + e("ab,cd,abdd->abcd", qq, two(0, 2), b)
                           + e("bxcy,abx,cdy->abcd", f, grad(0, 1), grad(1, 0))
                           + e("bxdy,abx,cdy->abcd", f, grad(0, 1), grad(0, 1))
                           + e("ab,bxcy,abx,cdy->abcd", th, f, grad(1, 2), grad(1, 0))
                           + e("ab,bxdy,abx,cdy->abcd", th, f, grad(1, 2), grad(0, 1))
                           + e("ab,abce,cde->abcd", qq, q, grad(1, 0)) + e("ab,abde,cde->abcd", qq, q, grad(0, 1)))),
              "S": zero, "T": zero}
    # ⟨z_a, ⟨z_b, W_c⟩⟩-type: second derivatives of the next layer's weights, and one on each
    weights = {"R": zero,
               "S": four(1, 1, 1, 1) * e("ab,cd->abcd", th, th) + r * e("ac,bd,acbd->abcd", qq, qq, b),
               "T": four(1, 1, 1, 1) * e("ab,cd->abcd", th, th) + r * e("bc,ad,bcad->abcd", qq, qq, b)}
    # one derivative on a weight of z'_c or z'_d, the other through layer ℓ (z_b's then z_a's)
    one = {"T": (e("abcd,ac,cd->abcd", four(1, 0, 2, 1), th, th) + e("abcd,ad,cd->abcd", four(1, 0, 1, 2), th, th)
                 + r * (e("bc,ad,ccad->abcd", two(0, 2), qq, b)
                        + e("ad,cxdy,bcx,ady->abcd", th, f, grad(0, 1), grad(1, 2))
                        + e("ad,adce,bce->abcd", qq, q, grad(0, 1)))),
           "S": (e("abcd,ac,cd->abcd", four(1, 0, 2, 1), th, th) + e("abcd,ad,cd->abcd", four(1, 0, 1, 2), th, th)
                 + r * (e("ac,cxdy,acx,bdy->abcd", th, f, grad(1, 2), grad(0, 1))
                        + e("ac,bd,acdd->abcd", qq, two(0, 2), b)
                        + e("ac,acde,bde->abcd", qq, q, grad(0, 1))))}
    through_a = {"R": zero, "S": one["S"], "T": one["T"]}
    through_b = {"R": zero, "S": one["T"].transpose(1, 0, 2, 3), "T": one["S"].transpose(1, 0, 2, 3)}
    # both derivatives through layer ℓ: terms (i)-(iv), (ix) and their mirror images, and (xi)
    t3 = e("ac,bc,cd->abcd", th, th, th)
    first = {"R": four(1, 1, 3, 1) * t3 + r * e("cd,cd,ab,abcc->abcd", th, two(3, 1), qq, b)
                  + e("abcd,bc,cd->abcd", four(0, 1, 2, 1), th, th)
                  + r * e("cd,bxcy,abx,cdy->abcd", th, f, grad(0, 1), grad(2, 1))
                  + four(1, 2, 2, 1) * e("ab,bc,cd->abcd", th, th, th)
                  + r * e("cd,ab,bxcy,abx,cdy->abcd", th, th, f, grad(1, 2), grad(2, 1))
                  + r * e("cd,ab,abce,cde->abcd", th, qq, q, grad(2, 1))
                  + four(1, 1, 2, 2) * e("bc,ad,cd->abcd", th, th, th)
                  + r * e("cd,cd,ab,bacd->abcd", th, two(2, 2), qq, b),
             "S": four(1, 1, 3, 1) * t3 + r * e("ac,ac,bd,ccbd->abcd", th, two(1, 3), qq, b)
                  + four(1, 2, 2, 1) * e("ab,bc,cd->abcd", th, th, th)
                  + four(1, 1, 2, 2) * e("bc,ad,cd->abcd", th, th, th)
                  + r * e("ac,bd,bdce,ace->abcd", th, qq, q, grad(1, 2)),
             "T": four(1, 1, 3, 1) * t3 + r * e("bc,bc,ad,ccad->abcd", th, two(1, 3), qq, b)
                  + four(1, 2, 2, 1) * e("ab,bc,cd->abcd", th, th, th)
                  + r * e("bc,bc,ad,bcad->abcd", th, two(2, 2), qq, b)
                  + four(1, 1, 2, 2) * e("bc,ad,cd->abcd", th, th, th)
                  + r * e("bc,ad,cxdy,bcx,ady->abcd", th, th, f, grad(1, 2), grad(1, 2))
                  + r * e("bc,ad,adce,bce->abcd", th, qq, q, grad(1, 2))}
    mirrored = _swap_last(first)
    carried = {"R": r * (e("cd,bcde,abe->abcd", qq, p, grad(0, 1)) + e("ab,cd,bcde,abe->abcd", th, qq, p, grad(1, 2))
                         + e("cd,ab,abcd->abcd", qq, qq, dd["R"])),
               "S": r * e("ac,bd,abcd->abcd", qq, qq, dd["S"]),
               "T": r * e("ad,bc,abdc->abcd", qq, qq, dd["S"])}
    next_weights = {"R": zero, "S": e("cadb->abcd", f_next), "T": e("cbda->abcd", f_next)}
    terms = (metric, weights, through_a, through_b, first, mirrored, carried)
    return {slot: cw ** 2 * sum(term[slot] for term in terms) + next_weights[slot] for slot in "RST"}


def _next_dntk(p, q, moments: dict, theta, f, f_next, b, cw: float, r: float):
    """(P, Q) of layer ℓ + 1 from layer ℓ's (module docstring)."""
    e = lambda spec, *ops: np.einsum(spec, *ops, optimize=True)  # noqa: E731
    m = SimpleNamespace(t4=moments["four", (1, 1, 2, 0)], qq=moments["two", (1, 1)], hs=moments["two", (2, 0)],
                        gds=moments["grad", (1, 0)], gdh=moments["grad", (1, 2)])
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


def _layers(net: Serial, x, moments: dict):
    """`nk.finite_width(net, x)` and, per layer ℓ → ℓ + 1, the inputs of the recursions: the Gaussian
    moments `moments` (keyword arguments of `_layer_moments`) at K^(ℓ), Θ, F, B of layer ℓ, F' of
    layer ℓ + 1, C_W of the weights into ℓ + 1 and r = n_ℓ / n_{ℓ-1}. Refuses rough activations."""
    denses, activations = mlp_layers(net)
    rough = [act for act in activations if not act.smooth]   # the declared capability
    if rough:
        hint = (" (declare a twice-differentiable function with nk.Elementwise(fn, smooth=True))"
                if type(rough[0]).__name__ == "Elementwise" else "")
        raise ValueError(f"the dNTK and ddNTK statistics need a smooth activation (they involve σ''), "
                         f"got {rough[0]!r}{hint}; use e.g. nk.Gelu() or nk.Erf()")
    stats = finite_width(net, x)

    def inputs():
        for ell in range(1, len(denses)):
            layer = lambda tensor, ell=ell: tensor[ell - 1].numpy()  # noqa: E731
            yield {"moments": _layer_moments(activations[ell - 1], layer(stats.nngp), ell, **moments),
                   "theta": layer(stats.ntk), "f": layer(stats.ntk_F), "f_next": stats.ntk_F[ell].numpy(),
                   "b": layer(stats.ntk_B), "cw": float(denses[ell].W_std) ** 2,
                   "r": stats.widths[ell] / stats.widths[ell - 1]}
    return stats, inputs()


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
    stats, layers = _layers(net, x, DNTK_MOMENTS)
    P, Q = [np.zeros(stats.ntk_A.shape[1:])], [np.zeros(stats.ntk_A.shape[1:])]
    for inputs in layers:
        p, q = _next_dntk(P[-1], Q[-1], **inputs)
        P.append(p)
        Q.append(q)
    return DNTKStatistics(widths=stats.widths, P=torch.as_tensor(np.stack(P)), Q=torch.as_tensor(np.stack(Q)))


@dataclass(frozen=True)
class DDNTKStatistics:
    """R and S of the ddNTK mean per layer ℓ = 1..L+1 over N inputs (module docstring), each
    [L+1, N, N, N, N]; `widths[ℓ-1]` is the fan-in n_{ℓ-1} of layer ℓ.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> stats = nk.ddntk_statistics(nk.mlp(2, 64, activation=nk.Tanh()), torch.ones(3))
    >>> stats.R.shape, float(stats.R[0].abs().max()), round(float(stats.output_mean) * 64, 4)
    (torch.Size([3, 1, 1, 1, 1]), 0.0, -1.7469)
    """

    widths: tuple[int, ...]
    R: torch.Tensor
    S: torch.Tensor

    @property
    def output_mean(self) -> torch.Tensor:
        """E[ddĤ(x_a, x_b, x_c, x_d)] of one output unit at order 1/n, [N, N, N, N]:
        (R_abcd + S_abcd + S_abdc) / n_L."""
        s = self.S[-1]
        return (self.R[-1] + s + s.permute(0, 1, 3, 2)) / self.widths[-1]


def ddntk_statistics(net: Serial, x) -> DDNTKStatistics:
    """`nk.ddntk_statistics(net, x)`: R and S of the ddNTK mean of the MLP `net` over the inputs
    x, per layer, at order 1/n (module docstring for the recursion and its derivation).

    Cost: as `nk.dntk_statistics`, with 13 four-sample moments per layer.

    Parameters
    ----------
    net : Serial
        An MLP `nk.serial(Dense, activation, ..., Dense)` in the NTK parameterization with a
        smooth activation (tanh, erf, GELU, ...).
    x : tensor or array
        Inputs `[N, d]` (or one input `[d]`); every four of them with a non-singular kernel.

    Returns
    -------
    DDNTKStatistics
        `R`, `S` [L+1, N, N, N, N]; `output_mean` = E[ddĤ(x_a, x_b, x_c, x_d)] of one output.

    Raises
    ------
    ValueError
        For a non-smooth activation, and as `nk.finite_width` for other networks or inputs.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> net = nk.mlp(1, 128, activation=nk.Tanh())     # one hidden layer: exact at any width
    >>> round(float(nk.ddntk_statistics(net, torch.ones(3)).output_mean) * 128, 4)
    -0.9337
    """
    stats, layers = _layers(net, x, DDNTK_MOMENTS)
    zero = np.zeros(stats.ntk_A.shape[1:])
    p, q, ddntk = zero, zero, {slot: zero for slot in "RST"}
    R, S = [zero], [zero]
    for inputs in layers:                   # the dNTK's recursion alongside (its moments are among these)
        ddntk = _next_ddntk(ddntk, p, q, **inputs)
        p, q = _next_dntk(p, q, **inputs)
        R.append(ddntk["R"])
        S.append(ddntk["S"])
    return DDNTKStatistics(widths=stats.widths, R=torch.as_tensor(np.stack(R)), S=torch.as_tensor(np.stack(S)))
