"""Every new layer's finite module against its infinite-width kernel: the mean empirical
NNGP/NTK of wide random networks converges to the analytic kernel (Monte Carlo), and a
negative control (the kernel of a nearby but different architecture) is clearly farther
away, so each test can tell the layer's kernel from a wrong one."""
import pytest
import torch

import ntklab as nk

GEN = torch.Generator().manual_seed(3)
X_VEC = torch.randn(5, 6, generator=GEN, dtype=torch.float64)
X_IMG = torch.randn(3, 2, 6, 6, generator=GEN, dtype=torch.float64)
X_SEQ = torch.randn(3, 5, 4, generator=GEN, dtype=torch.float64)


def distances(net, wrong, x, get, n_samples):
    """Distance of the Monte Carlo mean to the analytic kernel of `net` and of `wrong`, in
    units of the Monte Carlo error allowance: 4 standard errors (per entry) plus 2% of the
    kernel's scale for the O(1/width) finite-width bias.  Below 1: consistent."""
    mc = nk.monte_carlo_kernel(net, x, n_samples=n_samples, get=get, progress=False)
    mean, error = getattr(mc, get), getattr(mc, f"{get}_standard_error")
    exact, other = net.kernel(x, get=get), wrong.kernel(x, get=get)
    allowance = 4 * error + 0.02 * exact.abs().max()
    return float(((mean - exact).abs() / allowance).max()), float(((mean - other).abs() / allowance).max())


def res(*branch):
    return nk.serial(nk.FanOut(2), nk.parallel(nk.serial(*branch), nk.Identity()), nk.FanInSum())


def d(width=1024):
    return nk.Dense(width, 1.4, 0.1)


CASES = {
    # name: (network, negative control, inputs, get, networks averaged)
    "residual": (nk.serial(d(), res(nk.Relu(), d(), nk.Relu(), d()), nk.Relu(), d(1)),
                 nk.serial(d(), nk.Relu(), d(), nk.Relu(), d(), nk.Relu(), d(1)), X_VEC, "ntk", 24),
    "concat": (nk.serial(nk.FanOut(2), nk.parallel(d(512), nk.serial(d(), nk.Relu(), d(1536))),
                         nk.FanInConcat(), d(), nk.Relu(), d(1)),
               nk.serial(nk.FanOut(2), nk.parallel(d(), nk.serial(d(), nk.Relu(), d())),
                         nk.FanInSum(), d(), nk.Relu(), d(1)), X_VEC, "ntk", 6),
    "prod": (nk.serial(d(), nk.FanOut(2), nk.parallel(nk.serial(nk.Relu(), d()), nk.Identity()),
                       nk.FanInProd(), d(1)),
             nk.serial(d(), res(nk.Relu(), d()), d(1)), X_VEC, "ntk", 6),
    "layernorm": (nk.serial(d(), nk.Relu(), d(), nk.LayerNorm(), nk.Relu(), d(1)),
                  nk.serial(d(), nk.Relu(), d(), nk.Relu(), d(1)), X_VEC, "ntk", 6),
    "avgpool": (nk.serial(nk.Conv(256, (3, 3), padding="SAME", W_std=1.4, b_std=0.1), nk.Relu(),
                          nk.AvgPool((3, 3), strides=(2, 2), padding="SAME", normalize_edges=True),
                          nk.Flatten(), nk.Dense(1)),
                nk.serial(nk.Conv(256, (3, 3), padding="SAME", W_std=1.4, b_std=0.1), nk.Relu(),
                          nk.AvgPool((3, 3), strides=(2, 2), padding="SAME"), nk.Flatten(), nk.Dense(1)),
                X_IMG, "ntk", 6),
    "avgpool_zeros_counted": (
        nk.serial(nk.Conv(256, (3, 3), padding="SAME", W_std=1.4, b_std=0.1), nk.Relu(),
                  nk.AvgPool((2, 3), strides=(1, 2), padding="SAME"), nk.Flatten(), nk.Dense(1)),
        nk.serial(nk.Conv(256, (3, 3), padding="SAME", W_std=1.4, b_std=0.1), nk.Relu(),
                  nk.AvgPool((2, 3), strides=(1, 2), padding="SAME", normalize_edges=True),
                  nk.Flatten(), nk.Dense(1)), X_IMG, "ntk", 6),
    "sumpool": (nk.serial(nk.Conv(256, (3, 3), padding="SAME", W_std=1.4), nk.Relu(),
                          nk.SumPool((2, 2), strides=(2, 2)), nk.GlobalSumPool(), nk.Dense(256)),
                nk.serial(nk.Conv(256, (3, 3), padding="SAME", W_std=1.4), nk.Relu(),
                          nk.AvgPool((2, 2), strides=(2, 2)), nk.GlobalSumPool(), nk.Dense(256)),
                X_IMG, "nngp", 8),
    "strided_circular": (nk.serial(nk.Conv(256, (3, 3), strides=(2, 1), padding="CIRCULAR", W_std=1.4),
                                   nk.Relu(), nk.Conv(256, (2, 3), strides=(1, 2), padding="SAME"),
                                   nk.Relu(), nk.GlobalAvgPool(), nk.Dense(1)),
                         nk.serial(nk.Conv(256, (3, 3), strides=(2, 1), padding="SAME", W_std=1.4),
                                   nk.Relu(), nk.Conv(256, (2, 3), strides=(1, 2), padding="SAME"),
                                   nk.Relu(), nk.GlobalAvgPool(), nk.Dense(1)),
                         X_IMG, "ntk", 6),
    "attention": (nk.serial(nk.Dense(512), nk.GlobalSelfAttention(512, 512, 128, n_heads=4, W_key_std=2.0,
                                                                  b_std=0.2),
                            nk.Relu(), nk.GlobalAvgPool(), nk.Dense(1)),
                  nk.serial(nk.Dense(512), nk.GlobalSelfAttention(512, 512, 128, n_heads=4,
                                                                  attention_mechanism="IDENTITY", b_std=0.2),
                            nk.Relu(), nk.GlobalAvgPool(), nk.Dense(1)),
                  X_SEQ, "ntk", 6),
}
ACTIVATIONS = {  # one hidden layer: NNGP and NTK are exact expectations over the hidden width
    "sin": (nk.Sin(1.0, 1.3, 0.2), nk.Sin(1.0, 1.3, 0.6)), "cos": (nk.Cos(0.7, 1.1), nk.Cos(0.7, 0.8)),
    "rbf": (nk.Rbf(0.8), nk.Rbf(0.5)), "gaussian": (nk.Gaussian(1.0, -1.0), nk.Gaussian(1.0, -0.6)),
    "exp": (nk.Exp(0.5, 0.3), nk.Exp(0.5, 0.5)), "monomial": (nk.Monomial(3), nk.Monomial(2)),
    "rectified_monomial": (nk.RectifiedMonomial(2), nk.RectifiedMonomial(3)),
    "polynomial": (nk.Polynomial([0.1, -0.5, 0.3, 0.2]), nk.Polynomial([0.1, -0.5, 0.3])),
}


@pytest.mark.parametrize("name", list(CASES))
def test_wide_networks_converge_to_the_layer_kernel(name):
    net, wrong, x, get, n_samples = CASES[name]
    right, other = distances(net, wrong, x, get, n_samples)
    assert right < 1, (name, right)
    assert other > 3, (name, other)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_wide_networks_converge_to_the_activation_kernel(name):
    act, wrong_act = ACTIVATIONS[name]
    for get, readout in (("nngp", 1024), ("ntk", 1)):  # the NNGP averages over readout units
        net = lambda a, readout=readout: nk.serial(nk.Dense(2048, 0.9, 0.1), a, nk.Dense(readout))  # noqa: E731
        right, other = distances(net(act), net(wrong_act), X_VEC, get, 4)
        assert right < 1, (name, get, right)
        assert other > 3, (name, get, other)


def test_hermite_after_layernorm_converges():
    """Hermite's dual assumes unit-variance inputs: LayerNorm provides them."""
    for get, readout in (("nngp", 1024), ("ntk", 1)):
        net = lambda n, readout=readout: nk.serial(nk.Dense(2048), nk.LayerNorm(), nk.Hermite(n),  # noqa: E731
                                                   nk.Dense(readout))
        right, other = distances(net(3), net(1), X_VEC, get, 6)
        assert right < 1 and other > 3, (get, right, other)
