"""`nk.dntk_statistics`: the dNTK-preactivation correlation E[dĤ(x_a,x_b,x_c) z(x_d)] =
(P_abcd + Q_abcd + Q_acbd)/n. One hidden layer against independent closed forms (scipy quadrature at
one input, Gauss-Hermite quadrature over two inputs, analytic derivatives); deeper networks against
Monte Carlo of each network's own dNTK over three inputs (`nk.ntk_hierarchy`, slow), with negative
controls (wrong sample-index pairings, the recursion without the NTK's B term)."""
import math

import numpy as np
import pytest
import torch
from scipy import integrate
from scipy.special import erf

import ntklab as nk
import ntklab.theory.dntk as theory
from ntklab.lab.studies.finite_width import hierarchy_moments

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
    assert stats.P[0].abs().max() == 0 and stats.Q[0].abs().max() == 0
    assert float(stats.output_correlation) == pytest.approx(float(stats.P[1] + 2 * stats.Q[1]) / 64)


def test_one_hidden_layer_over_two_inputs_matches_its_closed_form():
    """Differentiating z = C_b^½β + (C_W/n)^½ Σ_j ω_j σ(u_j) directly (the first layer's NTK is Θ
    and deterministic): n E[dĤ_abc z_d] = C_W² (2⟨σ_a σ'_b σ'_c σ_d⟩Θ_bc + ⟨σ'_a σ'_b σ_c σ_d⟩Θ_ab
    + ⟨σ'_a σ_b σ'_c σ_d⟩Θ_ac + 3⟨σ'_a σ''_b σ'_c σ_d⟩Θ_ab Θ_bc + 3⟨σ'_a σ'_b σ''_c σ_d⟩Θ_ac Θ_bc),
    with E ω⁴ = 3; the moments here by the trapezoidal rule on a uniform grid in the whitened
    coordinates (spectrally accurate for these analytic, Gaussian-decaying integrands)."""
    activation, s, s1, s2 = ACTIVATIONS["tanh"]
    x = torch.tensor([[1.0, 2.0, -1.0], [0.5, -1.0, 1.5]], dtype=torch.float64)
    cw, cb = 1.3 ** 2, 0.2 ** 2
    stats = nk.dntk_statistics(nk.mlp(1, 64, W_std=1.3, b_std=0.2, activation=activation), x)
    theta = (cb + cw * x @ x.T / 3).numpy()
    nodes = np.linspace(-10, 10, 501)
    xi = np.stack(np.meshgrid(nodes, nodes, indexing="ij"), -1).reshape(-1, 2)
    u = xi @ np.linalg.cholesky(theta).T
    w = np.exp(-(xi ** 2).sum(1) / 2) * (nodes[1] - nodes[0]) ** 2 / (2 * math.pi)
    f = {name: np.stack([fn(u[:, 0]), fn(u[:, 1])]) for name, fn in (("s", s), ("s1", s1), ("s2", s2))}
    mean = lambda *terms: np.einsum("q,aq,bq,cq,dq->abcd", w, *terms)  # noqa: E731
    expected = cw ** 2 * (2 * mean(f["s"], f["s1"], f["s1"], f["s"]) * theta[None, :, :, None]
                          + mean(f["s1"], f["s1"], f["s"], f["s"]) * theta[:, :, None, None]
                          + mean(f["s1"], f["s"], f["s1"], f["s"]) * theta[:, None, :, None]
                          + 3 * mean(f["s1"], f["s2"], f["s1"], f["s"])
                          * np.einsum("ab,bc->abc", theta, theta)[..., None]
                          + 3 * mean(f["s1"], f["s1"], f["s2"], f["s"])
                          * np.einsum("ac,bc->abc", theta, theta)[..., None])
    np.testing.assert_allclose(64 * stats.output_correlation.numpy(), expected, rtol=1e-8, atol=1e-10)


def test_each_entry_depends_on_its_own_inputs_only():
    """Every entry of P and Q involves only its own samples: the single-input values reappear on
    the diagonal of a three-input computation, and P is symmetric in its middle samples."""
    net = nk.mlp(3, 32, W_std=1.2, b_std=0.4, activation=nk.Gelu())
    x = torch.tensor([[0.5, -1.0, 2.0], [1.0, 0.3, -0.2], [-0.7, 0.4, 0.9]], dtype=torch.float64)
    stats = nk.dntk_statistics(net, x)
    for i in range(3):
        alone = nk.dntk_statistics(net, x[i])
        np.testing.assert_allclose(stats.P[:, i, i, i, i], alone.P.reshape(-1), rtol=1e-7)
        np.testing.assert_allclose(stats.Q[:, i, i, i, i], alone.Q.reshape(-1), rtol=1e-7)
    torch.testing.assert_close(stats.P, stats.P.permute(0, 1, 3, 2, 4))


def test_non_smooth_activations_are_refused():
    with pytest.raises(ValueError, match="smooth activation"):
        nk.dntk_statistics(nk.mlp(2, 8), torch.ones(3))


@pytest.mark.parametrize("fn", [torch.relu, torch.abs])
def test_smoothness_is_declared_not_inferred_from_the_class(fn):
    """Elementwise(torch.relu) is ReLU: refused like nk.Relu() (it returned numbers: autograd's
    relu'' = 0 hides the kink); a function declared smooth is accepted and equals the named layer."""
    with pytest.raises(ValueError, match=r"smooth activation.*smooth=True"):
        nk.dntk_statistics(nk.mlp(2, 8, activation=nk.Elementwise(fn)), torch.ones(3))
    assert not nk.RectifiedMonomial(2).smooth and nk.RectifiedMonomial(3).smooth
    declared = nk.dntk_statistics(nk.mlp(2, 8, activation=nk.Elementwise(torch.tanh, smooth=True)), torch.ones(3))
    named = nk.dntk_statistics(nk.mlp(2, 8, activation=nk.Tanh()), torch.ones(3))
    torch.testing.assert_close(declared.P, named.P, rtol=0, atol=0)


def altered(recursion, **changes):
    """`recursion` with some of its keyword inputs changed: a negative control."""
    return lambda *args, **inputs: recursion(*args, **{**inputs, **{name: change(inputs[name])
                                                                    for name, change in changes.items()}})


def negative_controls(recursion) -> dict:
    """Plausible slips, each to be rejected by Monte Carlo: the next layer's F' with its sample
    pairs transposed, B's pairing of NTK and preactivation samples swapped, B dropped."""
    return {"F' transposed": altered(recursion, f_next=lambda f: f.transpose(1, 0, 3, 2)),
            "B pairs swapped": altered(recursion, b=lambda b: b.transpose(0, 2, 1, 3)),
            "no B": altered(recursion, b=lambda b: 0 * b)}


def mean_square_z(measured: dict, predicted: np.ndarray) -> float:
    z = (measured["dntk_output"] - predicted) / measured["dntk_output_se"]
    return float((z ** 2).mean())


@pytest.mark.slow
def test_three_inputs_agree_with_monte_carlo_and_wrong_pairings_are_rejected(monkeypatch):
    """tanh, W_std 1.5, b_std 0.3, L = 2, n = 128, 4000 initializations: Monte Carlo of all 81
    entries E[dĤ(x_a,x_b,x_c) z(x_d)] over three inputs from each network's own dNTK, against the
    recursion (mean z² 0.92, max |z| 2.0 when written; at n = 48 the 1/n² bias shows: 1.95).
    Negative controls, each a plausible slip: F' with its sample pairs transposed (mean z² 32),
    B's pairing of NTK and preactivation samples swapped (16), the B term dropped (4.0)."""
    net = nk.mlp(2, 128, W_std=1.5, b_std=0.3, activation=nk.Tanh())
    x = torch.tensor([[1.0, 0.5, -0.3], [-0.4, 1.2, 0.8], [0.9, -1.1, 0.6]], dtype=torch.float64)
    measured = hierarchy_moments(net, x, 4000, ddntk=False)
    predicted = nk.dntk_statistics(net, x).output_correlation.numpy()
    z = (measured["dntk_output"] - predicted) / measured["dntk_output_se"]
    assert mean_square_z(measured, predicted) < 2 and np.abs(z).max() < 4, z

    derived = theory._next_dntk
    for name, control in negative_controls(derived).items():
        monkeypatch.setattr(theory, "_next_dntk", control)
        wrong = nk.dntk_statistics(net, x).output_correlation.numpy()
        assert mean_square_z(measured, wrong) > 3, name


# σ''' in closed form, beside ACTIVATIONS' σ, σ', σ''
THIRD = {"tanh": lambda z: -2 * (1 - np.tanh(z) ** 2) ** 2 + 4 * np.tanh(z) ** 2 * (1 - np.tanh(z) ** 2),
         "erf": lambda z: (4 * z * z - 2) * 2 / math.sqrt(math.pi) * np.exp(-z * z)}


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_ddntk_mean_of_one_hidden_layer_matches_its_closed_form(name):
    """Differentiating the one-hidden-layer network directly (E ω² = 1, E ω⁴ = 3, E ω⁶ = 15 over
    the readout weights): n E[ddĤ(x,x,x,x)] = 2C_W²Θ[2⟨g²⟩ + Θ(7⟨gh⟩ + 2⟨σ'⁴⟩)
    + 3Θ²(2⟨h²⟩ + ⟨σ'³σ'''⟩)], g = σσ', h = σ'σ'', at any width; moments by scipy quadrature."""
    activation, s, s1, s2 = ACTIVATIONS[name]
    s3 = THIRD[name]
    x = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
    cw, cb = 1.3 ** 2, 0.2 ** 2
    stats = nk.ddntk_statistics(nk.mlp(1, 64, W_std=1.3, b_std=0.2, activation=activation), x)
    theta = cb + cw * float(x @ x) / 3
    mean = lambda f: gaussian_mean(f, theta)  # noqa: E731
    gg, gh = mean(lambda z: (s(z) * s1(z)) ** 2), mean(lambda z: s(z) * s1(z) ** 2 * s2(z))
    hh, d4, d3 = mean(lambda z: (s1(z) * s2(z)) ** 2), mean(lambda z: s1(z) ** 4), mean(lambda z: s1(z) ** 3 * s3(z))
    expected = 2 * cw ** 2 * theta * (2 * gg + theta * (7 * gh + 2 * d4) + 3 * theta ** 2 * (2 * hh + d3))
    assert 64 * float(stats.output_mean) == pytest.approx(expected, rel=1e-9)
    assert stats.R[0].abs().max() == 0 and stats.S[0].abs().max() == 0


def test_ddntk_over_several_inputs_is_consistent(monkeypatch):
    """The coefficients of δ_ac δ_bd (S) and δ_ad δ_bc (T) come from different terms of the
    recursion, yet T_abcd = S_abdc, as ddĤ's symmetry in its last two units requires; R_abcd =
    R_abdc likewise; the diagonal entries are the single-input values."""
    slots = []
    derived = theory._next_ddntk
    monkeypatch.setattr(theory, "_next_ddntk",
                        lambda *args, **inputs: slots.append(derived(*args, **inputs)) or slots[-1])
    net = nk.mlp(3, 32, W_std=1.2, b_std=0.4, activation=nk.Gelu())
    x = torch.tensor([[0.5, -1.0, 2.0], [1.0, 0.3, -0.2], [-0.7, 0.4, 0.9]], dtype=torch.float64)
    stats = nk.ddntk_statistics(net, x)
    assert len(slots) == 3
    for layer in slots:
        np.testing.assert_allclose(layer["T"], layer["S"].transpose(0, 1, 3, 2), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(layer["R"], layer["R"].transpose(0, 1, 3, 2), rtol=1e-10, atol=1e-12)
    for i in range(3):
        alone = nk.ddntk_statistics(net, x[i])
        np.testing.assert_allclose(stats.R[:, i, i, i, i], alone.R.reshape(-1), rtol=1e-7)
        np.testing.assert_allclose(stats.S[:, i, i, i, i], alone.S.reshape(-1), rtol=1e-7)
    with pytest.raises(ValueError, match="smooth activation"):
        nk.ddntk_statistics(nk.mlp(2, 8), torch.ones(3))


@pytest.mark.slow
def test_ddntk_mean_over_three_inputs_agrees_with_monte_carlo(monkeypatch):
    """tanh, W_std 1.5, b_std 0.3, L = 2, n = 64, 1200 initializations: Monte Carlo of all 81
    entries E[ddĤ(x_a,x_b,x_c,x_d)] from each network's own ddNTK against (R + S + Sᵀ)/n (1500
    initializations when written: mean z² 1.64, max |z| 2.3, the 1/n² bias included; at one input
    and n = 128, 3000 initializations: -229.7 ± 5.5 vs -228.1 for n E; L = 3 at n = 512 on a GPU:
    -118.9 ± 1.3 vs -118.4). Negative controls, each a plausible slip (mean z² 19, 553, 32 then):
    the next layer's F' with its sample pairs transposed, B's pairing swapped, B dropped."""
    net = nk.mlp(2, 64, W_std=1.5, b_std=0.3, activation=nk.Tanh())
    x = torch.tensor([[1.0, 0.5, -0.3], [-0.4, 1.2, 0.8], [0.9, -1.1, 0.6]], dtype=torch.float64)
    measured = hierarchy_moments(net, x, 1200)

    def mean_square_z(ddntk):
        return float((((measured["ddntk"] - ddntk.output_mean.numpy()) / measured["ddntk_se"]) ** 2).mean())
    assert mean_square_z(nk.ddntk_statistics(net, x)) < 2.5

    derived = theory._next_ddntk
    for name, control in negative_controls(derived).items():
        monkeypatch.setattr(theory, "_next_ddntk", control)
        assert mean_square_z(nk.ddntk_statistics(net, x)) > 5, name
