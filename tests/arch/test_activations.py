"""Closed-form activation duals against quadrature and Monte Carlo."""
import math

import numpy as np
import pytest
import torch

import ntklab as nk

# (var1, cov, var2) triples covering strong/weak/negative correlation and unequal scales
COV = torch.tensor([[1.0, 0.3, 0.7], [2.0, -1.1, 1.5], [0.5, 0.49, 0.5], [3.0, 2.9, 2.9],
                    [0.2, 0.0, 4.0], [1.3, -1.29, 1.3]], dtype=torch.float64)


def dual(layer, cov=COV):
    v1, c, v2 = cov.T
    return layer.dual(c.clone(), v1, v2)


@pytest.mark.parametrize("closed, fn, n_points", [
    (nk.Erf(), torch.erf, 256),
    # erf(1.9 x) at variance 3 is steep on the Gaussian scale: more nodes than the default
    (nk.Erf(a=0.7, b=1.9, c=0.3), lambda z: 0.7 * torch.erf(1.9 * z) + 0.3, 512),
    (nk.Sigmoid_like(), lambda z: 0.5 * torch.erf(z / 2.4020563531719796) + 0.5, 256),
    (nk.Gelu(), torch.nn.functional.gelu, 256)])
def test_smooth_closed_forms_match_quadrature(closed, fn, n_points):
    """Issue requirement: quadrature accurate to 1e-8 where a closed form exists."""
    nngp, dot = dual(closed)
    q_nngp, q_dot = dual(nk.Elementwise(fn, n_points=n_points))
    torch.testing.assert_close(q_nngp, nngp, rtol=0, atol=1e-8)
    torch.testing.assert_close(q_dot, dot, rtol=0, atol=1e-8)


def monte_carlo(fn, cov_row, samples=2_000_000, seed=0):
    """Sample mean and standard error of fn(u) fn(v) and fn'(u) fn'(v)."""
    v1, c, v2 = cov_row.tolist()
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(2, samples, generator=g, dtype=torch.float64)
    u = math.sqrt(v1) * z[0]
    rho = c / math.sqrt(v1 * v2)
    v = math.sqrt(v2) * (rho * z[0] + math.sqrt(max(1 - rho ** 2, 0)) * z[1])
    uu, vv = u.clone().requires_grad_(True), v.clone().requires_grad_(True)
    du = torch.autograd.grad(fn(uu).sum(), uu)[0]
    dv = torch.autograd.grad(fn(vv).sum(), vv)[0]
    out = []
    for prod in (fn(u) * fn(v), du * dv):
        out.append((prod.mean(), prod.std() / math.sqrt(samples)))
    return out


@pytest.mark.parametrize("layer", [nk.Relu(), nk.LeakyRelu(0.2), nk.Abs(), nk.Sign(),
                                   nk.ABRelu(-0.5, 2.0)])
def test_piecewise_linear_closed_forms_match_monte_carlo(layer):
    nngp, dot = dual(layer)
    for row, (n, d) in zip(COV, zip(nngp, dot, strict=True), strict=True):
        (mc_n, se_n), (mc_d, se_d) = monte_carlo(layer.fn, row)
        assert abs(n - mc_n) < 5 * se_n + 1e-12, (row, n, mc_n)
        if not isinstance(layer, nk.Sign):  # sign' = 0 a.e., the NTK is not propagated
            assert abs(d - mc_d) < 5 * se_d + 1e-12, (row, d, mc_d)
        else:
            assert d == 0


def test_tanh_quadrature_matches_monte_carlo_and_converges():
    nngp, dot = dual(nk.Tanh())                       # default 256 nodes
    fine = [dual(nk.Tanh(n_points=n)) for n in (512, 1024)]
    torch.testing.assert_close(fine[0], fine[1], rtol=0, atol=1e-10)   # converged
    torch.testing.assert_close((nngp, dot), fine[1], rtol=0, atol=1e-8)
    for row, n, d in zip(COV, nngp, dot, strict=True):
        (mc_n, se_n), (mc_d, se_d) = monte_carlo(torch.tanh, row)
        assert abs(n - mc_n) < 5 * se_n and abs(d - mc_d) < 5 * se_d


def test_diagonal_of_closed_forms_is_exact():
    """At correlation 1: E[relu(u)^2] = v/2, E[sign(u)^2] = 1, E[|u|^2] = v."""
    var = torch.tensor([0.3, 1.0, 7.0], dtype=torch.float64)
    assert torch.equal(nk.Relu().dual(var.clone(), var, var)[0], var / 2)
    assert torch.equal(nk.Sign().dual(var.clone(), var, var)[0], torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(nk.Abs().dual(var.clone(), var, var)[0], var, rtol=1e-15, atol=0)


def test_zero_variance_inputs_follow_neural_tangents_convention():
    zero = torch.zeros(2, dtype=torch.float64)
    nngp, dot = nk.Relu().dual(zero.clone(), zero, torch.ones(2, dtype=torch.float64))
    assert torch.equal(nngp, zero) and torch.allclose(dot, torch.full((2,), 0.25, dtype=torch.float64))


UNIT = torch.tensor([[1.0, 0.3, 1.0], [1.0, -0.8, 1.0], [1.0, 0.999, 1.0], [1.0, 0.0, 1.0]],
                    dtype=torch.float64)


@pytest.mark.parametrize("closed, cov", [
    (nk.Sin(a=1.0, b=1.3, c=0.2), COV), (nk.Cos(a=0.7, b=1.1, c=0.4), COV), (nk.Rbf(gamma=0.8), COV),
    (nk.Gaussian(a=1.2, b=-1.0), COV), (nk.Gaussian(a=0.5, b=0.05), COV), (nk.Exp(a=0.5, b=0.3), COV),
    *[(nk.Monomial(p), COV) for p in range(6)],
    (nk.Polynomial([0.1, -0.5, 0.3, 0.2]), COV), (nk.Polynomial([1.0]), COV),
    *[(nk.Hermite(n), cov) for n in range(5) for cov in (UNIT, COV)]])
def test_new_closed_forms_match_quadrature(closed, cov):
    """E[phi phi] and E[phi' phi'] against 2-D Gauss-Hermite quadrature of phi (exact for the
    polynomials, exponentially convergent for the smooth ones)."""
    nngp, dot = dual(closed, cov)
    q_nngp, q_dot = dual(nk.Elementwise(closed.fn, n_points=512), cov)
    scale = max(1.0, q_nngp.abs().max().item())
    torch.testing.assert_close(nngp, q_nngp, rtol=0, atol=1e-9 * scale)
    torch.testing.assert_close(dot, q_dot, rtol=0, atol=1e-9 * max(1.0, q_dot.abs().max().item()))


def gauss_hermite_2d(f, g, v1, c, v2, n_points=40):
    """E[f(u) g(v)] for (u, v) ~ N(0, [[v1, c], [c, v2]]) by numpy's probabilists' Gauss-Hermite
    rule on u = sqrt(v1) s, v = (c / sqrt(v1)) s + sqrt(v2 - c^2 / v1) t (exact for polynomials
    of degree < 2 n_points in each of s, t)."""
    from numpy.polynomial import hermite_e
    nodes, weights = hermite_e.hermegauss(n_points)
    weights = weights / weights.sum()
    s, t = np.meshgrid(nodes, nodes, indexing="ij")
    slope = c / math.sqrt(v1)
    u, v = math.sqrt(v1) * s, slope * s + math.sqrt(v2 - slope * slope) * t
    return float((np.outer(weights, weights) * f(u) * g(v)).sum())


@pytest.mark.parametrize("degree", range(7))
def test_hermite_is_exact_for_any_variances(degree):
    """He_n / sqrt(n!) of (u, v) with variances far from 1 (neural-tangents' cov^n holds only at
    unit variance): E[phi phi] and E[phi' phi'] against numpy's 2-D Gauss-Hermite quadrature of
    the polynomial (exact), 1e-12 relative; at unit variance they are cov^n and n cov^(n-1)."""
    from numpy.polynomial import hermite_e
    coef = np.zeros(degree + 1)
    coef[degree] = 1 / math.sqrt(math.factorial(degree))
    phi = lambda z: hermite_e.hermeval(z, coef)                           # noqa: E731
    dphi = lambda z: hermite_e.hermeval(z, hermite_e.hermeder(coef))      # noqa: E731
    rows = torch.cat([COV, torch.tensor([[2.25, 0.7, 1.3], [0.3, -0.2, 4.0], [5.0, 4.9, 5.0]],
                                        dtype=torch.float64)])
    nngp, dot = dual(nk.Hermite(degree), rows)
    for (v1, c, v2), n, d in zip(rows.tolist(), nngp.tolist(), dot.tolist(), strict=True):
        want_n, want_d = gauss_hermite_2d(phi, phi, v1, c, v2), gauss_hermite_2d(dphi, dphi, v1, c, v2)
        assert abs(n - want_n) <= 1e-12 * max(1.0, abs(want_n)), (degree, v1, c, v2, n, want_n)
        assert abs(d - want_d) <= 1e-12 * max(1.0, abs(want_d)), (degree, v1, c, v2, d, want_d)
    unit_n, unit_d = dual(nk.Hermite(degree), UNIT)
    torch.testing.assert_close(unit_n, UNIT[:, 1] ** degree, rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(unit_d, degree * UNIT[:, 1] ** max(degree - 1, 0), rtol=1e-15, atol=1e-15)


def positive_quadrant(fn, v1, c, v2):
    """E[fn(u) fn(v)] for fn vanishing on negatives: scipy's adaptive 2-D quadrature over the
    quadrant u, v >= 0 only, where the integrand is smooth."""
    from scipy import integrate
    rho = c / math.sqrt(v1 * v2)
    rest = math.sqrt(1 - rho * rho)

    def integrand(z2, z1):
        return (fn(math.sqrt(v1) * z1) * fn(math.sqrt(v2) * (rho * z1 + rest * z2))
                * math.exp(-(z1 * z1 + z2 * z2) / 2) / (2 * math.pi))
    return integrate.dblquad(integrand, 0, 12, lambda z1: -rho * z1 / rest, 12,
                             epsabs=1e-13, epsrel=1e-11)[0]


@pytest.mark.parametrize("degree", [0, 1, 2, 3, 4])
def test_rectified_monomial_matches_adaptive_quadrature(degree):
    """Arc-cosine kernels of every degree (the recursion for J_n), NNGP and NTK factor;
    degree 1 is ReLU's closed form."""
    layer = nk.RectifiedMonomial(degree)
    nngp, dot = dual(layer, COV[:5])
    for row, n, d in zip(COV[:5].tolist(), nngp, dot, strict=True):
        want = positive_quadrant(lambda t: t ** degree, *row)
        assert abs(n.item() - want) <= 1e-9 * max(1.0, abs(want)), (degree, row, n.item(), want)
        want_dot = (degree ** 2 * positive_quadrant(lambda t: t ** (degree - 1), *row)
                    if degree else 0.0)
        assert abs(d.item() - want_dot) <= 1e-9 * max(1.0, abs(want_dot)), (degree, row)
    torch.testing.assert_close(dual(nk.RectifiedMonomial(1))[0], dual(nk.Relu())[0], rtol=1e-13, atol=1e-14)


def test_elementwise_with_a_closed_form_dual_takes_the_ntk_factor_from_autograd():
    def erf_dual(cov, var1, var2):
        return torch.asin(2 * cov / torch.sqrt((1 + 2 * var1) * (1 + 2 * var2))) * 2 / math.pi

    layer = nk.Elementwise(torch.erf, dual=erf_dual)
    assert layer.quadrature_points == 1
    nngp, dot = dual(layer)
    want_nngp, want_dot = dual(nk.Erf())
    torch.testing.assert_close(nngp, want_nngp, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(dot, want_dot, rtol=1e-12, atol=1e-14)
