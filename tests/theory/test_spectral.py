"""The spectral theory of kernel regression on the sphere (`ntklab.theory.spectral`): eigenvalues
against closed forms, the quadrature against scipy's, eigenlearning against its closed form for one
degree and against kernel ridge regression run on samples (Monte Carlo), refusals."""
import math

import numpy as np
import pytest
import torch
from scipy import special

import ntklab as nk
from ntklab.lab.studies import sphere as S
from ntklab.theory.spectral import (eigenlearning, gegenbauer_quadrature, half_learned_samples, harmonic_count,
                                    legendre, sphere_spectrum)


def test_harmonic_counts_are_the_dimensions_of_the_harmonic_spaces():
    # d = 3: 2k + 1; d = 4: (k + 1)^2; and the counts up to degree k are those of polynomials of degree <= k
    # restricted to the sphere: C(d + k, k) - C(d + k - 2, k - 2)
    assert [harmonic_count(3, k) for k in range(5)] == [1, 3, 5, 7, 9]
    assert [harmonic_count(4, k) for k in range(5)] == [1, 4, 9, 16, 25]
    d, k = 10, 4
    assert sum(harmonic_count(d, j) for j in range(k + 1)) == math.comb(d + k, k) - math.comb(d + k - 2, k - 2)


@pytest.mark.parametrize("d", [3, 10, 40])
def test_golub_welsch_nodes_equal_scipys_gauss_jacobi(d):
    t, weights = gegenbauer_quadrature(d, 30)
    alpha = (d - 3) / 2
    reference_t, reference_w = special.roots_jacobi(30, alpha, alpha)
    np.testing.assert_allclose(np.sort(t), reference_t, atol=1e-12)
    np.testing.assert_allclose(weights[np.argsort(t)], reference_w / reference_w.sum(), rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("d", [5, 12, 300])
@pytest.mark.parametrize("get, constant, quadratic", [("nngp", 1.0, 2.0), ("ntk", 0.0, 4.0)])
def test_eigenvalues_of_a_quadratic_kernel_are_its_legendre_coefficients(d, get, constant, quadratic):
    """Dense (W_std = 1, no bias) then x^2, for unit-variance u, v of correlation t: NNGP
    kappa(t) = E[u^2 v^2] = 1 + 2 t^2, NTK t E[phi'(u) phi'(v)] = 4 t^2; with t^2 = 1/d + (1 - 1/d) P_2(t),
    a + b t^2 has lambda_0 = a + b/d, N(d, 2) lambda_2 = b (d - 1)/d and no other degree."""
    net = nk.serial(nk.Dense(1, W_std=1.0, b_std=0.0), nk.Monomial(2))
    spectrum = sphere_spectrum(net, d, max_degree=5, nodes=20, get=get)
    expected = np.zeros(6)
    expected[0], expected[2] = constant + quadratic / d, quadratic * (d - 1) / d / harmonic_count(d, 2)
    np.testing.assert_allclose(spectrum.eigenvalues, expected, atol=1e-12)
    assert spectrum.trace == pytest.approx(constant + quadratic)
    assert spectrum.tail_trace == pytest.approx(0.0, abs=1e-12)


def test_relu_ntk_expansion_reconstructs_the_kernel():
    """kappa(t) = sum_k N(d, k) lambda_k P_k(t) (Funk-Hecke), checked at interior t against the kernel
    itself with 30 degrees (the ReLU NTK's coefficients decay polynomially: 1e-4 relative)."""
    net = nk.mlp(1, 1, W_std=1.0, b_std=1.0, readout_b_std=0.0)
    d = 5
    spectrum = sphere_spectrum(net, d, max_degree=30, nodes=600)
    t = np.array([-0.6, -0.1, 0.3, 0.8])
    series = sum(spectrum.multiplicities[k] * spectrum.eigenvalues[k] * legendre(d, k, t) for k in range(31))
    u = torch.zeros(d, dtype=torch.float64)
    u[0] = math.sqrt(d)
    others = torch.zeros(len(t), d, dtype=torch.float64)
    others[:, 0], others[:, 1] = math.sqrt(d) * torch.tensor(t), math.sqrt(d) * torch.tensor(np.sqrt(1 - t ** 2))
    kernel = net.kernel(u[None], others, get="ntk")[0].numpy()
    np.testing.assert_allclose(series, kernel, rtol=1e-4)
    assert 0 < spectrum.tail_trace < sphere_spectrum(net, d, max_degree=10, nodes=600).tail_trace
    # negative control: 3 degrees leave a visible error
    short = sum(spectrum.multiplicities[k] * spectrum.eigenvalues[k] * legendre(d, k, t) for k in range(3))
    assert np.max(np.abs(short - kernel) / kernel) > 1e-3


def test_eigenlearning_with_one_degree_solves_its_quadratic():
    """One degree of N modes with eigenvalue lambda and ridge delta: N lambda/(lambda + kappa) + delta/kappa = n,
    i.e. n kappa^2 + (n lambda - N lambda - delta) kappa - delta lambda = 0."""
    spectrum = sphere_spectrum(nk.serial(nk.Dense(1, W_std=1.0, b_std=0.0), nk.Monomial(2)), 6, max_degree=4,
                               nodes=20, get="nngp")
    n, delta = 7, 0.3
    lam, count = spectrum.eigenvalues, spectrum.multiplicities
    # two degrees here (0 and 2): solve the rational equation independently with numpy's polynomial roots
    a0, a2 = lam[0], lam[2]
    # (count0 a0 (a2 + k) k + count2 a2 (a0 + k) k + delta (a0 + k)(a2 + k) - n k (a0 + k)(a2 + k)) = 0
    poly = (np.polymul([count[0] * a0, 0], [1, a2]) + np.polymul([count[2] * a2, 0], [1, a0]))
    poly = np.polyadd(poly, delta * np.polymul([1, a0], [1, a2]))
    poly = np.polysub(poly, n * np.polymul([1, 0], np.polymul([1, a0], [1, a2])))
    roots = np.roots(poly)
    kappa = max(r.real for r in roots if abs(r.imag) < 1e-12 and r.real > 0)
    prediction = eigenlearning(spectrum, n, ridge=delta, target_energy={2: 1.0})
    assert prediction.kappa == pytest.approx(kappa, rel=1e-10)
    learn = a2 / (a2 + kappa)
    e0 = n / (n - count[0] * (a0 / (a0 + kappa)) ** 2 - count[2] * learn ** 2)
    assert prediction.test_mse == pytest.approx(e0 * (1 - learn) ** 2, rel=1e-10)
    # n_1/2 of degree 2 is where kappa = lambda_2
    n_half = half_learned_samples(spectrum, 2, ridge=delta)
    assert n_half == pytest.approx(count[0] * a0 / (a0 + a2) + count[2] / 2 + delta / a2, rel=1e-12)


def test_eigenlearning_predicts_kernel_ridge_regression_on_samples():
    """The learned fraction of degrees 2 and 3 by the two-layer ReLU NTK at d = 6, n = 84 (= N_<=3),
    averaged over 12 datasets, equals eigenlearning's L_k within 3 standard errors (prediction fixed
    before the run; the ridge is the experiment's)."""
    net = nk.mlp(1, 1, W_std=1.0, b_std=1.0, readout_b_std=0.0)
    d, n, ridge = 6, 84, 1e-3
    spectrum = sphere_spectrum(net, d, max_degree=10)
    fractions = {2: [], 3: []}
    for seed in range(12):
        target = S.single_index_target(d, (2, 3), seed=seed)
        x, y = S.sample(target, n, noise=0.1, seed=100 + seed)
        predictor, delta = S.kernel_ridge(net, x, y, ridge=ridge)
        measured, _ = S.learned_fractions(predictor, target, 3000, seed=200 + seed)
        for k in fractions:
            fractions[k].append(measured[k][0])
    prediction = eigenlearning(spectrum, n, ridge=delta, target_energy={2: 0.5, 3: 0.5})
    for k, values in fractions.items():
        mean, se = np.mean(values), np.std(values, ddof=1) / np.sqrt(len(values))
        assert abs(mean - prediction.learnability[k]) < 3 * se + 0.01, (k, mean, se, prediction.learnability[k])
    # negative control: the learned fraction of degree 3 is far from degree 2's prediction
    assert abs(np.mean(fractions[3]) - prediction.learnability[2]) > 10 * se


def test_refusals_name_the_argument():
    net = nk.mlp(1, 1)
    with pytest.raises(ValueError, match="d must be >= 3"):
        sphere_spectrum(net, 2)
    with pytest.raises(ValueError, match="get must be one of"):
        sphere_spectrum(net, 5, get="cov")
    spectrum = sphere_spectrum(net, 5, max_degree=2)
    with pytest.raises(ValueError, match="larger max_degree"):
        eigenlearning(spectrum, 10_000)
    with pytest.raises(ValueError, match="target_energy has degree 7"):
        eigenlearning(sphere_spectrum(net, 5, max_degree=6), 10, target_energy={7: 1.0})

    class Anisotropic:     # a kernel that is not a function of x . x': refused
        def kernel(self, x1, x2=None, get="ntk"):
            x2 = x1 if x2 is None else x2
            return (x1 * torch.arange(1.0, x1.shape[1] + 1, dtype=x1.dtype)) @ x2.T / x1.shape[1]
    with pytest.raises(ValueError, match="not a function of x . x'"):
        sphere_spectrum(Anisotropic(), 5)


def test_learned_fractions_of_zonal_predictors_are_exact():
    """A predictor of u . x alone is integrated exactly by the quadrature: the target reads (1, 1) and
    loss 0, its degree-2 half (1, 0) and loss 1/2, to 1e-10; a degree-4 harmonic about u, orthogonal to
    both, reads (0, 0) and loss 2."""
    target = S.single_index_target(7, (2, 3), seed=0)
    half = S.ZonalTarget(target.u, {2: target.coefficients[2]})
    other = S.ZonalTarget(target.u, {4: 1.0})
    for predictor, expected, loss in ((target, (1, 1), 0.0), (half, (1, 0), 0.5), (other, (0, 0), 2.0)):
        fractions, (measured_loss, _) = S.learned_fractions(predictor, target, 320, seed=1)
        assert fractions[2][0] == pytest.approx(expected[0], abs=1e-10)
        assert fractions[3][0] == pytest.approx(expected[1], abs=1e-10)
        assert measured_loss == pytest.approx(loss, abs=1e-10)


def test_half_crossing_interpolates_in_log_n_and_is_nan_when_never_reached():
    from ntklab.lab.experiments.dimension_sweep import half_crossing
    rows = [{"n": 100, "f": 0.2}, {"n": 400, "f": 0.8}, {"n": 200, "f": 0.4}]
    assert half_crossing(rows, "f") == pytest.approx(200 * 2 ** 0.25)   # 0.4 -> 0.8 over a factor 2: a quarter
    assert half_crossing([{"n": 50, "f": 0.6}, *rows], "f") == 50
    assert math.isnan(half_crossing([r for r in rows if r["f"] < 0.5], "f"))


def test_the_truncation_check_sees_a_kernel_without_odd_degrees():
    """The bias-free ReLU NTK has lambda_k = 0 for odd k >= 3 (Bietti & Mairal 2019): with max_degree = 5
    the last degree is never learned, while degree 4 is: refused (it was accepted, kappa 12 % off)."""
    net = nk.mlp(1, 1, W_std=1.0, b_std=0.0, readout_b_std=0.0)
    spectrum = sphere_spectrum(net, 8, max_degree=5)
    assert spectrum.eigenvalues[5] < 1e-12 * spectrum.eigenvalues[4]
    with pytest.raises(ValueError, match="larger max_degree"):
        eigenlearning(spectrum, 3000)
    with pytest.raises(ValueError, match="larger max_degree"):
        half_learned_samples(spectrum, 4)
    eigenlearning(sphere_spectrum(net, 8, max_degree=16), 3000)   # enough degrees: accepted


def test_generalization_error_is_the_noiseless_excess_risk_of_kernel_regression():
    """eigenlearning's generalization_error (= test_mse - noise^2) against the measured E[(f - f*)^2] of
    kernel ridge regression at d = 8, n = 312, noise 0.3, over 12 datasets: within 3 s.e. + 0.005;
    test_mse (against noisy labels) is noise^2 = 0.09 above it, far outside (negative control)."""
    net = nk.mlp(1, 1, W_std=1.0, b_std=1.0, readout_b_std=0.0)
    d, n, noise = 8, 312, 0.3
    spectrum = sphere_spectrum(net, d, max_degree=10)
    losses = []
    for seed in range(12):
        target = S.single_index_target(d, (2, 3), seed=seed)
        x, y = S.sample(target, n, noise=noise, seed=100 + seed)
        predictor, delta = S.kernel_ridge(net, x, y, ridge=1e-3)
        losses.append(S.learned_fractions(predictor, target, 2000, seed=200 + seed)[1][0])
    prediction = eigenlearning(spectrum, n, ridge=delta, target_energy={2: 0.5, 3: 0.5}, noise=noise)
    mean, se = np.mean(losses), np.std(losses, ddof=1) / np.sqrt(len(losses))
    assert abs(mean - prediction.generalization_error) < 3 * se + 0.005, (mean, se, prediction)
    assert abs(mean - prediction.test_mse) > 3 * se + 0.005


def test_spherical_helpers_refuse_low_dimensions_and_non_unit_directions():
    from ntklab.theory.spectral import legendre
    for call in (lambda: legendre(2, 3, [0.3]), lambda: gegenbauer_quadrature(2, 8),
                 lambda: S.single_index_target(2, (2, 3), seed=0)):
        with pytest.raises(ValueError, match="d must be >= 3"):
            call()
    with pytest.raises(ValueError, match="unit vector"):
        S.ZonalTarget(3 * torch.eye(5, dtype=torch.float64)[0], {1: 1.0})
