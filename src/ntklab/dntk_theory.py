"""The dNTK's leading statistic for one input: its correlation with the preactivations, at order
1/n, from a layer-to-layer recursion (Roberts, Yaida & Hanin 2022, PDLT ch. 11).

The dNTK of layer ℓ is dĤ_{i0 i1 i2} = Σ_μ ∂z_{i0}/∂θ_μ ∂Ĥ_{i1 i2}/∂θ_μ (μ over the parameters of
layers ≤ ℓ, NTK parameterization, unit learning rates as in `nk.ntk_hierarchy`). It has zero mean
(flipping the signs of one layer's weights and biases flips z and dĤ); its leading statistic, at
one input x, is defined here by

    E[dĤ_{i0 i1 i2} z_{i3}] = (1/n_{ℓ-1}) (δ_{i0 i3} δ_{i1 i2} P + δ_{i0 i1} δ_{i2 i3} Q + δ_{i0 i2} δ_{i1 i3} Q),

the book's P and Q (our normalization: 1/fan-in, as `nk.finite_width`). For one output,
E[dĤ(x,x,x) z(x)] = (P + 2Q) / n_L. Recursion, with the moments ⟨·⟩ over z ~ N(0, K^(ℓ)),
g = σσ', h = σ'σ'', K, Θ and B (the NTK's B tensor at one input) from `nk.finite_width`,
C_W of the weights into layer ℓ + 1, C_W⁻ of those into layer ℓ, r = n_ℓ / n_{ℓ-1}:

    Γ^(ℓ)       = ⟨g²⟩ Θ + r C_W⁻² ⟨g'⟩² Γ^(ℓ-1)                      (Γ^(1) = ⟨g²⟩ Θ^(1))
    G^(ℓ)       = ⟨g h⟩ Θ + r C_W⁻² ⟨g'⟩ ⟨h'⟩ Γ^(ℓ-1)
    P^(ℓ+1)     = 2 C_W² (Γ + Θ G) + r C_W² ⟨σ'²⟩ ⟨g'⟩ P^(ℓ)
    Q^(ℓ+1)     = C_W² (Γ + Θ G + ⟨σσ'²σ''⟩ Θ² + r ⟨σ'²⟩ ⟨σσ''⟩ B) + r C_W² ⟨σ'²⟩ ⟨g'⟩ Q^(ℓ)

with P^(1) = Q^(1) = 0 (the first layer is linear in its parameters). Γ^(ℓ) = (1/n_ℓ) Σ_jk
E[g_j g_k Ĥ_jk] and G^(ℓ) likewise with g_j h_k: their off-diagonal parts are the NTK's
correlation with two different units' preactivations, E[g_j h_k Ĥ_jk | layer ℓ-1] =
(C_W⁻²/n_{ℓ-1}²) Σ_m1m2 g_m1 g_m2 Ĥ_m1m2 ⟨g'⟩⟨h'⟩ by Stein's lemma over the rows W_j, W_k.
Derivation (ours; the book's chapter 11 is not at hand): write dĤ^(ℓ+1) through layer ℓ's
quantities (the derivatives by W^(ℓ+1); those through σ(z^(ℓ)) bring σσ', σ'σ'' Ĥ Ĥ and σ'σ'σ'
dĤ^(ℓ)), then Isserlis over W^(ℓ+1) with the W of z^(ℓ+1); the dĤ^(ℓ) terms are projected on the
first Hermite polynomial (E[dĤ F(z)] = Σ E[dĤ z_j] ⟨∂_j F⟩ at leading order) and the squared
off-diagonal NTK is B / n_{ℓ-1}. Checked against Monte Carlo of `nk.ntk_hierarchy` (tests and
the `finite-width` report). Smooth activations only: ReLU's dNTK involves σ'' = δ.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .arch.activations import ABRelu, Abs, Activation, LeakyRelu, Relu, Sign
from .arch.serial import Serial
from .finite_width_theory import _derivatives, _gaussian_grid, _mlp_layers, finite_width

NON_SMOOTH = (Relu, LeakyRelu, ABRelu, Abs, Sign)


@dataclass(frozen=True)
class DNTKStatistics:
    """P and Q of the dNTK-preactivation correlation per layer ℓ = 1..L+1 at one input (module
    docstring); `widths[ℓ-1]` is the fan-in n_{ℓ-1} of layer ℓ.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> stats = nk.dntk_statistics(nk.mlp(2, 64, activation=nk.Tanh()), torch.ones(3))
    >>> stats.P.shape, float(stats.P[0]), float(stats.Q[0])
    (torch.Size([3]), 0.0, 0.0)
    """
    widths: tuple[int, ...]
    P: torch.Tensor
    Q: torch.Tensor

    @property
    def output_correlation(self) -> float:
        """E[dĤ(x,x,x) z(x)] of one output unit at order 1/n: (P + 2Q) / n_L."""
        return float(self.P[-1] + 2 * self.Q[-1]) / self.widths[-1]


def _moments(activation: Activation, k: float) -> dict[str, float]:
    w, z, _, _ = _gaussian_grid(np.array([[k]]))
    s, s1, s2, s3 = _derivatives(activation, z[:, 0], 3)
    mean = lambda f: float(w @ f)  # noqa: E731
    return {"gg": mean((s * s1) ** 2), "gh": mean(s * s1 ** 2 * s2), "g'": mean(s1 ** 2 + s * s2),
            "h'": mean(s2 ** 2 + s1 * s3), "σ'²": mean(s1 ** 2), "σσ''": mean(s * s2)}


def dntk_statistics(net: Serial, x) -> DNTKStatistics:
    """`nk.dntk_statistics(net, x)`: P and Q of the dNTK's correlation with the preactivations
    of the MLP `net` at one input x, per layer, at order 1/n (module docstring for the recursion
    and its derivation).

    Parameters
    ----------
    net : Serial
        An MLP `nk.serial(Dense, activation, ..., Dense)` in the NTK parameterization with a
        smooth activation (tanh, erf, GELU, ...).
    x : tensor or array
        One input, `[d]` or `[1, d]`.

    Returns
    -------
    DNTKStatistics
        `P`, `Q` [L+1]; `output_correlation` = E[dĤ(x,x,x) z(x)] of one output.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> net = nk.mlp(1, 128, activation=nk.Tanh())     # one hidden layer: exact at any width
    >>> round(nk.dntk_statistics(net, torch.ones(3)).output_correlation * 128, 4)
    -0.2739
    """
    x = torch.as_tensor(x, dtype=torch.float64).reshape(-1, torch.as_tensor(x).shape[-1])
    if len(x) != 1:
        raise ValueError(f"x must be one input [d] or [1, d], got {len(x)} inputs; "
                         f"call dntk_statistics once per input")
    pairs = _mlp_layers(net)
    rough = [act for _, act in pairs[:-1] if isinstance(act, NON_SMOOTH)]
    if rough:
        raise ValueError(f"dntk_statistics needs a smooth activation (the dNTK involves σ''), got "
                         f"{rough[0]!r}; use e.g. nk.Gelu() or nk.Erf()")
    stats = finite_width(net, x)
    widths = stats.widths
    P, Q, gamma = [0.0], [0.0], 0.0
    for ell in range(1, len(pairs)):            # layer ℓ → ℓ + 1
        k, theta = float(stats.nngp[ell - 1, 0, 0]), float(stats.ntk[ell - 1, 0, 0])
        b = float(stats.ntk_B[ell - 1, 0, 0, 0, 0])
        m = _moments(pairs[ell - 1][1], k)
        cw_in, cw = float(pairs[ell - 1][0].W_std) ** 2, float(pairs[ell][0].W_std) ** 2
        r = widths[ell] / widths[ell - 1]
        correlation = m["gh"] * theta + r * cw_in ** 2 * m["g'"] * m["h'"] * gamma
        gamma = m["gg"] * theta + r * cw_in ** 2 * m["g'"] ** 2 * gamma
        recursive = r * cw ** 2 * m["σ'²"] * m["g'"]
        P.append(2 * cw ** 2 * (gamma + theta * correlation) + recursive * P[-1])
        Q.append(cw ** 2 * (gamma + theta * correlation + m["gh"] * theta ** 2 + r * m["σ'²"] * m["σσ''"] * b)
                 + recursive * Q[-1])
    return DNTKStatistics(widths=widths, P=torch.tensor(P, dtype=torch.float64),
                          Q=torch.tensor(Q, dtype=torch.float64))
