"""Closed-form activation duals against quadrature and Monte Carlo."""
import math

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
    for row, (n, d) in zip(COV, zip(nngp, dot)):
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
    for row, n, d in zip(COV, nngp, dot):
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
    # Hermite: neural-tangents' formula assumes unit-variance inputs
    *[(nk.Hermite(n), UNIT) for n in range(5)]])
def test_new_closed_forms_match_quadrature(closed, cov):
    """E[phi phi] and E[phi' phi'] against 2-D Gauss-Hermite quadrature of phi (exact for the
    polynomials, exponentially convergent for the smooth ones)."""
    nngp, dot = dual(closed, cov)
    q_nngp, q_dot = dual(nk.Elementwise(closed.fn, n_points=512), cov)
    scale = max(1.0, q_nngp.abs().max().item())
    torch.testing.assert_close(nngp, q_nngp, rtol=0, atol=1e-9 * scale)
    torch.testing.assert_close(dot, q_dot, rtol=0, atol=1e-9 * max(1.0, q_dot.abs().max().item()))


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
    for row, n, d in zip(COV[:5].tolist(), nngp, dot):
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
