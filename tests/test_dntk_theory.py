"""`nk.dntk_statistics`: the dNTK-preactivation correlation E[dĤ z] = (P + 2Q)/n at one input.
One hidden layer against an independent closed form (scipy quadrature of analytic derivatives);
deeper networks against Monte Carlo of each network's own dNTK (`nk.ntk_hierarchy`, slow), with
a negative control (the recursion without the NTK's B term is rejected)."""
import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy import integrate
from scipy.special import erf

import ntklab as nk
import ntklab.dntk_theory as theory
from ntklab.studies.finite_width import hierarchy_moments

# σ, σ', σ'' in closed form
ACTIVATIONS = {
    "tanh": (nk.Tanh(), lambda z: np.tanh(z), lambda z: 1 - np.tanh(z) ** 2,
             lambda z: -2 * np.tanh(z) * (1 - np.tanh(z) ** 2)),
    "erf": (nk.Erf(), lambda z: erf(z), lambda z: 2 / math.sqrt(math.pi) * np.exp(-z * z),
            lambda z: -4 * z / math.sqrt(math.pi) * np.exp(-z * z)),
}


def gaussian_mean(f, k):
    return integrate.quad(lambda z: f(z) * np.exp(-z * z / (2 * k)) / math.sqrt(2 * math.pi * k),
                          -np.inf, np.inf, epsabs=1e-13, epsrel=1e-12)[0]


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_one_hidden_layer_matches_its_closed_form(name):
    """dĤ = (2C_W^{3/2} Θ / n^{3/2}) Σ_j (2 v_j σσ'² + v_j³ σ'²σ'' Θ) for one hidden layer, so
    P = 2C_W²Θ(⟨(σσ')²⟩ + ⟨σσ'²σ''⟩Θ), Q = C_W²Θ(⟨(σσ')²⟩ + 2⟨σσ'²σ''⟩Θ), at any width."""
    activation, s, s1, s2 = ACTIVATIONS[name]
    x = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
    cw, cb = 1.3 ** 2, 0.2 ** 2
    stats = nk.dntk_statistics(nk.mlp(1, 64, W_std=1.3, b_std=0.2, activation=activation), x)
    theta = cb + cw * float(x @ x) / 3                 # = K^(1): λ = C in the NTK parameterization
    gg = gaussian_mean(lambda z: (s(z) * s1(z)) ** 2, theta)
    gh = gaussian_mean(lambda z: s(z) * s1(z) ** 2 * s2(z), theta)
    assert float(stats.P[1]) == pytest.approx(2 * cw ** 2 * theta * (gg + gh * theta), rel=1e-9)
    assert float(stats.Q[1]) == pytest.approx(cw ** 2 * theta * (gg + 2 * gh * theta), rel=1e-9)
    assert stats.P[0] == 0 and stats.Q[0] == 0
    assert stats.output_correlation == pytest.approx(float(stats.P[1] + 2 * stats.Q[1]) / 64)


def test_non_smooth_activations_and_several_inputs_are_refused():
    with pytest.raises(ValueError, match="smooth activation"):
        nk.dntk_statistics(nk.mlp(2, 8), torch.ones(3))
    with pytest.raises(ValueError, match="one input"):
        nk.dntk_statistics(nk.mlp(2, 8, activation=nk.Tanh()), torch.ones(2, 3))


@pytest.mark.slow
def test_two_hidden_layers_agree_with_monte_carlo_and_the_b_term_is_needed(monkeypatch):
    """tanh, W_std 1.5, b_std 0.3, n = 48, 3000 initializations: Monte Carlo of E[dĤ z] from each
    network's dNTK against (P + 2Q)/n; without the NTK's B term the recursion misses it."""
    net = nk.mlp(2, 48, W_std=1.5, b_std=0.3, activation=nk.Tanh())
    x = torch.ones(1, 3, dtype=torch.float64)
    measured = hierarchy_moments(net, x, 3000)
    predicted = nk.dntk_statistics(net, x).output_correlation
    z = (measured["dntk_output"] - predicted) / measured["dntk_output_se"]
    assert abs(z) < 3, (measured, predicted)

    def without_b(net, x):
        stats = nk.finite_width(net, x)
        return dataclasses.replace(stats, ntk_B=torch.zeros_like(stats.ntk_B))
    monkeypatch.setattr(theory, "finite_width", without_b)
    wrong = nk.dntk_statistics(net, x).output_correlation
    assert abs(measured["dntk_output"] - wrong) / measured["dntk_output_se"] > 3.5
