"""Monte Carlo kernels: the streaming mean and standard error against an explicit loop, and
the average of wide networks against the analytic kernels."""
import math

import numpy as np
import pytest
import torch
from torch import nn

import ntklab as nk

X = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_streaming_moments_equal_an_explicit_loop():
    net = nk.mlp(2, 32, W_std=1.4, b_std=0.1, out=4)
    seen = {}
    mc = nk.monte_carlo_kernel(net, X, n_samples=6, seed=10, each=lambda s, k: seen.update({s: k["ntk"]}))
    models = [net.module((3,), seed=10 + s, dtype=torch.float64) for s in range(6)]
    ntk = torch.stack([nk.empirical_ntk(m, X) for m in models])
    nngp = torch.stack([m(X) @ m(X).T / 4 for m in models]).detach()
    for got, got_se, samples in ((mc.ntk, mc.ntk_standard_error, ntk), (mc.nngp, mc.nngp_standard_error, nngp)):
        torch.testing.assert_close(got, samples.mean(0), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(got_se, samples.std(0) / math.sqrt(6), rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(torch.stack([seen[s] for s in range(6)]), ntk, rtol=0, atol=0)
    assert mc.n_samples == 6 and nk.monte_carlo_kernel(net, X, n_samples=2, get="nngp").ntk is None


def test_any_module_factory_and_the_empirical_nngp():
    def factory(seed):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    mc = nk.monte_carlo_kernel(factory, X, X[:2], n_samples=3, get="nngp")
    outputs = [factory(s)(X).detach() for s in range(3)]
    expected = sum(f @ f[:2].T / 2 for f in outputs) / 3
    torch.testing.assert_close(mc.nngp, expected, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="factory must return a torch.nn.Module"):
        nk.monte_carlo_kernel(lambda seed: 3, X, n_samples=2)
    with pytest.raises(ValueError, match="n_samples must be a positive integer"):
        nk.monte_carlo_kernel(factory, X, n_samples=0)


def test_wide_networks_average_to_the_analytic_kernels():
    """Width 1024, 16 networks, 256 outputs for the NNGP: within 5 standard errors (plus the
    O(1/n) finite-width bias, 1% here) of the infinite-width NNGP and NTK."""
    net = nk.serial(nk.Dense(1024, W_std=1.5, b_std=0.1), nk.Relu(), nk.Dense(256, W_std=1.5, b_std=0.1))
    mc = nk.monte_carlo_kernel(net, X, n_samples=16, seed=3)
    analytic = net.kernel(X)
    for name in ("nngp", "ntk"):
        mean, error, exact = getattr(mc, name), getattr(mc, f"{name}_standard_error"), getattr(analytic, name)
        assert bool((mean - exact).abs().le(5 * error + 0.01 * exact.abs().max()).all()), name
        assert float(error.max()) < 0.05 * float(exact.abs().max())
    assert np.isfinite(mc.ntk_standard_error.numpy()).all()
