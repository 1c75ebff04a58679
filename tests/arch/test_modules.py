"""Finite networks built from the same description converge to the analytic kernels."""
import math

import pytest
import torch
from torch.func import functional_call, jacrev, vmap

import ntklab as nk

X = torch.randn(6, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def explicit_ntk(model, x):
    """Theta(x, x') = sum over parameters of df(x)/dp . df(x')/dp, by per-sample autograd."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def f(p, xi):
        return functional_call(model, p, (xi[None],))[0, 0]
    jac = vmap(jacrev(f), in_dims=(None, 0))(params, x)
    flat = torch.cat([j.reshape(len(x), -1) for j in jac.values()], 1)
    return flat @ flat.T


def relative_error(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.slow
@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_nngp_of_wide_network_matches_analytic(parameterization):
    """Covariance of 2048 iid output units of width-2048 nets, over 8 seeds ~ NNGP
    (Monte Carlo and finite-width errors both O((seeds n)^-1/2), about 1.5% here)."""
    def dense(n):
        return nk.Dense(n, W_std=1.4, b_std=0.3, parameterization=parameterization)
    net = nk.serial(dense(2048), nk.Erf(), dense(2048), nk.Relu(), dense(2048))
    empirical = 0
    for seed in range(8):
        with torch.no_grad():
            out = net.module(in_shape=(5,), seed=seed, dtype=torch.float64)(X)   # [N, 2048]
        empirical = empirical + out @ out.T / out.shape[1] / 8
    assert relative_error(empirical, net.kernel(X).nngp) < 0.04


def test_empirical_ntk_converges_to_analytic_at_rate_n_to_minus_half():
    widths, seeds = (64, 1024), range(6)
    errors = {}
    for n in widths:
        net = nk.serial(nk.Dense(n, 1.5, 0.05), nk.Relu(), nk.Dense(n, 1.5, 0.05), nk.Relu(),
                        nk.Dense(1, 1.5, 0.05))
        analytic = net.kernel(X).ntk
        errors[n] = sum(relative_error(explicit_ntk(net.module((5,), seed=s, dtype=torch.float64), X),
                                       analytic) for s in seeds) / len(seeds)
    assert errors[1024] < 0.15
    ratio = errors[64] / errors[1024]           # theory: sqrt(1024 / 64) = 4
    assert 2.0 < ratio < 8.0, errors


def test_standard_parameterization_ntk_matches_finite_network_of_same_width():
    """The standard NTK depends on width; compare at the width it was computed for."""
    net = nk.serial(nk.Dense(2048, 1.3, 0.2, "standard"), nk.Relu(), nk.Dense(1, 1.3, 0.2, "standard"))
    model = net.module((5,), seed=1, dtype=torch.float64)
    assert relative_error(explicit_ntk(model, X), net.kernel(X).ntk) < 0.06


def test_symmetric_initialization_gives_zero_function_and_same_ntk():
    net = nk.serial(nk.Dense(64, 1.5, 0.1), nk.Gelu(), nk.Dense(64, 1.5, 0.1), nk.Relu(), nk.Dense(1))
    sym = net.module((5,), seed=7, symmetric=True, dtype=torch.float64)
    plain = net.module((5,), seed=7, dtype=torch.float64)
    assert torch.equal(sym(X), torch.zeros(6, 1, dtype=torch.float64))
    assert not torch.equal(plain(X), torch.zeros(6, 1, dtype=torch.float64))
    torch.testing.assert_close(explicit_ntk(sym, X), explicit_ntk(plain, X), rtol=1e-12, atol=1e-12)
    # parameters are separate: one gradient step breaks the symmetry
    loss = (sym(X) - 1).square().sum()
    loss.backward()
    with torch.no_grad():
        for p in sym.parameters():
            p -= 0.01 * p.grad
    assert sym(X).abs().max() > 0


def test_module_init_is_deterministic_and_parameterized():
    net = nk.serial(nk.Dense(8, W_std=2.0, b_std=0.5), nk.Relu(), nk.Dense(3))
    a, b = net.module(4, seed=3), net.module(4, seed=3)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    # NTK parameterization: N(0, 1) parameters, scale applied in forward
    dense = a[0]
    x = torch.randn(2, 4)
    expected = x @ (dense.weight * 2.0 / math.sqrt(4)).T + 0.5 * dense.bias
    torch.testing.assert_close(dense(x), expected)
    assert a(x).shape == (2, 3)
