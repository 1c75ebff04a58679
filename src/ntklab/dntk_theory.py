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
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .arch.activations import ABRelu, Abs, Activation, LeakyRelu, Relu, Sign
from .arch.serial import Serial
from .finite_width_theory import _derivatives, _mean, _mlp_layers, _sample_groups, finite_width

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
