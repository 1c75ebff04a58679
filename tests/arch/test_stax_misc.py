"""repeat, Dense per pixel, Dropout, Index/Slice, ImageResize, Gelu(approximate=) and Gabor: kernels
against neural-tangents 0.6.5's stored values (benchmarks/make_reference_misc.py), closed forms
against quadrature, and each finite module against its kernel by Monte Carlo; each with a
negative control."""
import numpy as np
import pytest
import torch

import ntklab as nk
from nt_reference import assert_matches_neural_tangents
from conftest import load_reference

W, B = 1.5, 0.05
CASES, ARRAYS = load_reference("neural_tangents_misc")


def dense():
    return nk.Dense(1, W, B)


def conv():
    return nk.Conv(1, (3, 3), padding="SAME", W_std=W, b_std=B)


NETWORKS = {   # the ntklab networks of the stored cases (their JSON `architecture`)
    "repeat": nk.serial(dense(), nk.repeat(nk.serial(nk.Relu(), dense()), 3), nk.Relu(), dense()),
    "gelu": nk.serial(dense(), nk.Gelu(), dense(), nk.Gelu(), dense()),
    "gabor": nk.serial(dense(), nk.Gabor(), dense(), nk.Gabor(), dense()),
    "dropout": nk.serial(dense(), nk.Relu(), nk.Dropout(0.7), dense(), nk.Relu(), dense()),
    "dense_pixels": nk.serial(conv(), nk.Relu(), dense(), nk.Relu(), nk.Flatten(), dense()),
    "dense_pixels_gap": nk.serial(conv(), nk.Relu(), dense(), nk.Relu(), nk.GlobalAvgPool(), dense()),
    "dropout_conv": nk.serial(conv(), nk.Relu(), nk.Dropout(0.6), conv(), nk.Relu(), nk.GlobalAvgPool(), dense()),
    "index": nk.serial(conv(), nk.Relu(), nk.Index(nk.Slice[:, :, 1:5, ::-2]), conv(), nk.Relu(),
                       nk.GlobalAvgPool(), dense()),
    # neural-tangents' ImageResize after one Conv resizes the transposed shape: its Conv stores the
    # kernel's spatial axes reversed (`is_reversed`) and ImageResize does not look; its (9, 7) is the
    # kernel of the network resized to (7, 9) (its finite network resizes to (9, 7): Monte Carlo below)
    "resize_linear_up": nk.serial(conv(), nk.Relu(), nk.ImageResize((7, 9), "linear"), conv(), nk.Relu(),
                                  nk.GlobalAvgPool(), dense()),
    "resize_linear_down": nk.serial(conv(), nk.ImageResize((3, 4), "linear"), nk.Relu(), nk.Flatten(), dense()),
    "resize_nearest": nk.serial(conv(), nk.Relu(), nk.ImageResize((9, 4), "nearest"), conv(), nk.Relu(),
                                nk.Flatten(), dense()),
}


def inputs(case):
    x1, x2 = (torch.from_numpy(ARRAYS[CASES[case][key]]) for key in ("x1", "x2"))
    if x1.ndim == 4:   # stored NHWC
        x1, x2 = x1.permute(0, 3, 1, 2), x2.permute(0, 3, 1, 2)
    return x1, x2


@pytest.mark.parametrize("case", sorted(NETWORKS))
def test_kernels_equal_neural_tangents(case):
    """Against neural-tangents' stored values (`nt_reference`)."""
    x1, x2 = inputs(case)
    assert_matches_neural_tangents(NETWORKS[case], x1, x2,
                                   lambda get, pair: ARRAYS[CASES[case]["arrays"][f"{get}_{pair}"]])


def test_the_reference_tells_the_new_layers_from_their_neighbours():
    """Negative controls: the stored values reject Dropout in test mode, a resize by the other
    method or to neural-tangents' stated (transposed) shape, a slice without the reversal, and
    three instead of four repeated blocks."""
    others = {
        "dropout": nk.serial(dense(), nk.Relu(), nk.Dropout(0.7, mode="test"), dense(), nk.Relu(), dense()),
        "resize_linear_up": nk.serial(conv(), nk.Relu(), nk.ImageResize((7, 9), "nearest"), conv(), nk.Relu(),
                                      nk.GlobalAvgPool(), dense()),
        "index": nk.serial(conv(), nk.Relu(), nk.Index(nk.Slice[:, :, 1:5, ::2]), conv(), nk.Relu(),
                           nk.GlobalAvgPool(), dense()),
        "resize_nearest": nk.serial(conv(), nk.Relu(), nk.ImageResize((4, 9), "nearest"), conv(), nk.Relu(),
                                    nk.Flatten(), dense()),
        "repeat": nk.serial(dense(), nk.repeat(nk.serial(nk.Relu(), dense()), 2), nk.Relu(), dense()),
    }
    assert len(set(others)) == 5
    for case, net in others.items():
        x1, _ = inputs(case)
        expected = ARRAYS[CASES[case]["arrays"]["ntk_x1x1"]]
        assert np.abs(net.kernel(x1, get="ntk").numpy() - expected).max() > 1e-3 * np.abs(expected).max(), case


@pytest.mark.slow
def test_gelu_approximate_is_the_tanh_networks_kernel_not_the_exact_one():
    """neural-tangents returns the exact GELU's kernel for approximate=True; ntklab integrates the
    tanh approximation: it matches scipy's adaptive 2-D integral of the tanh-GELU to 1e-9 and
    differs from neural-tangents' (exact-GELU) value by more than that, less than 1e-3."""
    from scipy import integrate, stats
    x1, _ = inputs("gelu_approximate")
    first = nk.serial(dense()).kernel(x1[:2], get="nngp").double()
    v1, v2, c = float(first[0, 0]), float(first[1, 1]), float(first[0, 1])
    tanh_gelu = lambda z: 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z ** 3)))  # noqa: E731
    cov = np.array([[v1, c], [c, v2]])
    density = stats.multivariate_normal(cov=cov).pdf
    integral = integrate.dblquad(lambda v, u: tanh_gelu(u) * tanh_gelu(v) * density([u, v]),
                                 -9 * v1 ** 0.5, 9 * v1 ** 0.5, -9 * v2 ** 0.5, 9 * v2 ** 0.5,
                                 epsabs=1e-12, epsrel=1e-11)[0]
    ours = nk.serial(dense(), nk.Gelu(approximate=True), dense()).kernel(x1[:2], get="nngp")
    nt = ARRAYS[CASES["gelu_approximate"]["arrays"]["nngp_x1x1"]][:2, :2]
    ours_01, nt_01 = float(ours[0, 1]), float(nt[0, 1])
    assert abs(ours_01 - (W ** 2 * integral + B ** 2)) < 1e-9
    assert 1e-7 < abs(ours_01 - nt_01) < 1e-3
    exact = nk.serial(dense(), nk.Gelu(), dense()).kernel(x1[:2], get="nngp")
    np.testing.assert_allclose(exact.numpy(), nt, rtol=1e-10, atol=1e-12)   # exact GELU: = neural-tangents


def test_gabor_closed_form_equals_quadrature():
    """The closed form (NNGP and its Price derivative in the NTK) against 2-D Gauss-Hermite
    quadrature of exp(-z^2) sin z; the negative control, sin z alone, is far."""
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    closed = nk.serial(nk.Dense(8, 1.3, 0.2), nk.Gabor(), nk.Dense(1)).kernel(x)
    quad = nk.serial(nk.Dense(8, 1.3, 0.2), nk.Elementwise(lambda z: torch.exp(-z * z) * torch.sin(z)),
                     nk.Dense(1)).kernel(x)
    sine = nk.serial(nk.Dense(8, 1.3, 0.2), nk.Sin(), nk.Dense(1)).kernel(x)
    for get in ("nngp", "ntk"):
        torch.testing.assert_close(getattr(closed, get), getattr(quad, get), rtol=0, atol=1e-10)   # quadrature's error
        assert (getattr(closed, get) - getattr(sine, get)).abs().max() > 0.05


def test_dense_on_images_is_a_one_by_one_convolution():
    """Dense on NCHW images = Conv with a 1x1 filter, kernel and finite module (same seed: same
    weights); a 3x3 Conv (the negative control) differs."""
    x = torch.randn(3, 2, 5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    pixelwise = nk.serial(nk.Dense(16, W, B), nk.Relu(), nk.Dense(8, W, B, parameterization="standard"),
                          nk.GlobalAvgPool(), nk.Dense(1))
    one_by_one = nk.serial(nk.Conv(16, (1, 1), W_std=W, b_std=B), nk.Relu(),
                           nk.Conv(8, (1, 1), W_std=W, b_std=B, parameterization="standard"),
                           nk.GlobalAvgPool(), nk.Dense(1))
    three = nk.serial(nk.Conv(16, (3, 3), padding="SAME", W_std=W, b_std=B), nk.Relu(),
                      nk.Conv(8, (1, 1), W_std=W, b_std=B, parameterization="standard"),
                      nk.GlobalAvgPool(), nk.Dense(1))
    k, k1, k3 = pixelwise.kernel(x), one_by_one.kernel(x), three.kernel(x)
    torch.testing.assert_close(k.ntk, k1.ntk, rtol=1e-13, atol=0)
    assert (k.ntk - k3.ntk).abs().max() > 1e-2 * k.ntk.abs().max()
    f = pixelwise.module((2, 5, 5), seed=4, dtype=torch.float64)(x)
    f1 = one_by_one.module((2, 5, 5), seed=4, dtype=torch.float64)(x)
    torch.testing.assert_close(f, f1, rtol=1e-12, atol=1e-12)


def test_repeat_is_serial_of_copies_with_their_own_weights():
    block = nk.serial(nk.Dense(8), nk.Relu())
    net = nk.repeat(block, 3)
    assert repr(net) == repr(nk.serial(block, block, block))
    module = net.module(4, seed=0)
    assert not torch.equal(module[0].weight[:, :4], module[2].weight[:, :4])   # own weights
    x = torch.randn(3, 4, dtype=torch.float64)
    torch.testing.assert_close(nk.repeat(block, 0).kernel(x, get="nngp"), x @ x.T / 4, rtol=0, atol=0)
    from ntklab.arch.spec import parse_architecture
    assert repr(parse_architecture("Dense(4), repeat(serial(Relu(), Dense(4)), 2)")) == \
        "serial(Dense(4), Relu(), Dense(4), Relu(), Dense(4))"
    for bad, match in ((lambda: nk.repeat(block, -1), "non-negative"), (lambda: nk.repeat("relu", 2), "layer"),
                       (lambda: parse_architecture("repeat(Relu(), -1)"), "repeat.*non-negative")):
        with pytest.raises(ValueError, match=match):
            bad()


def test_bad_uses_are_refused_naming_the_layer():
    images = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    cases = [
        (lambda: nk.Dropout(0.0), "keep probability"), (lambda: nk.Dropout(0.5, mode="eval"), "mode"),
        (lambda: nk.serial(nk.Dropout(0.5), nk.Dense(1)).kernel(torch.randn(2, 3)), r"layer 0, Dropout.*inputs"),
        (lambda: nk.serial(nk.Dense(4), nk.Dropout(0.5), nk.Relu()).kernel(torch.randn(2, 3)), "Gaussian"),
        (lambda: nk.Index(nk.Slice[:, 2]), "integer would remove"),
        (lambda: nk.serial(nk.Conv(4), nk.Index(nk.Slice[:, :2]), nk.Flatten()).kernel(images),
         r"layer 1, Index.*channel axis"),
        (lambda: nk.serial(nk.Conv(4), nk.Index(nk.Slice[1:]), nk.Flatten()).kernel(images), "batch axis"),
        (lambda: nk.serial(nk.Conv(4), nk.Index(nk.Slice[..., 7:]), nk.Flatten()).kernel(images), "no position"),
        (lambda: nk.ImageResize((4, 4), "cubic"), "method"),
        (lambda: nk.ImageResize(4, "linear"), "height, width"),
    ]
    for make, match in cases:
        with pytest.raises(ValueError, match=match):
            make()


GEN = torch.Generator().manual_seed(29)
X_VEC = torch.randn(4, 5, generator=GEN, dtype=torch.float64)
X_IMG = torch.randn(3, 2, 5, 5, generator=GEN, dtype=torch.float64)


def conv_wide():
    return nk.Conv(256, (3, 3), padding="SAME", W_std=W, b_std=0.1)


MONTE_CARLO = {   # name: (network, negative control, inputs, get, networks averaged)
    "dense_pixels": (nk.serial(conv_wide(), nk.Relu(), nk.Dense(256, W, 0.1), nk.Relu(), nk.GlobalAvgPool(),
                               nk.Dense(1)),
                     nk.serial(conv_wide(), nk.Relu(), conv_wide(), nk.Relu(), nk.GlobalAvgPool(), nk.Dense(1)),
                     X_IMG, "ntk", 6),
    "index": (nk.serial(conv_wide(), nk.Relu(), nk.Index(nk.Slice[..., 1:4, ::-2]), conv_wide(), nk.Relu(),
                        nk.GlobalAvgPool(), nk.Dense(1)),
              nk.serial(conv_wide(), nk.Relu(), conv_wide(), nk.Relu(), nk.GlobalAvgPool(), nk.Dense(1)),
              X_IMG, "ntk", 6),
    "resize": (nk.serial(conv_wide(), nk.ImageResize((7, 3), "linear"), nk.Relu(), nk.Flatten(), nk.Dense(1)),
               nk.serial(conv_wide(), nk.ImageResize((7, 3), "nearest"), nk.Relu(), nk.Flatten(), nk.Dense(1)),
               X_IMG, "nngp", 12),
    "gabor_gelu_tanh": (nk.serial(nk.Dense(1024, W, 0.1), nk.Gabor(), nk.Dense(1024, W, 0.1),
                                  nk.Gelu(approximate=True), nk.Dense(1)),
                        nk.serial(nk.Dense(1024, W, 0.1), nk.Sin(), nk.Dense(1024, W, 0.1), nk.Gelu(), nk.Dense(1)),
                        X_VEC, "ntk", 12),
}


@pytest.mark.parametrize("name", sorted(MONTE_CARLO))
def test_finite_networks_average_to_their_kernels(name):
    """The mean empirical kernel of wide networks is within 4 standard errors plus 2 % (the
    O(1/width) bias) of the kernel, and the negative control's kernel is outside it."""
    net, wrong, x, get, n_samples = MONTE_CARLO[name]
    mc = nk.monte_carlo_kernel(net, x, n_samples=n_samples, get=get, progress=False)
    mean, error = getattr(mc, get), getattr(mc, f"{get}_standard_error")
    exact, other = net.kernel(x, get=get), wrong.kernel(x, get=get)
    allowance = 4 * error + 0.02 * exact.abs().max()
    assert float(((mean - exact).abs() / allowance).max()) < 1, name
    assert float(((mean - other).abs() / allowance).max()) > 1, name


def test_dropout_network_averages_to_its_kernel():
    """Train-mode Dropout: NNGP E[f(x_i) f(x_j)] and NTK J(x_i) . J(x_j), each sample through its
    own forward pass (its own mask), averaged over 300 networks of width 512, against the kernel
    within 4 standard errors plus 2 %; Dropout in test mode (no 1 / rate on the diagonal) is outside."""
    net = nk.serial(nk.Dense(512, W, 0.1), nk.Relu(), nk.Dropout(0.5), nk.Dense(1))
    wrong = nk.serial(nk.Dense(512, W, 0.1), nk.Relu(), nk.Dropout(0.5, mode="test"), nk.Dense(1))
    torch.manual_seed(0)
    samples = {"nngp": [], "ntk": []}
    for seed in range(300):
        module = net.module(5, seed=seed, dtype=torch.float64)
        params = [p for p in module.parameters() if p.requires_grad]
        outputs, jacobians = [], []
        for xi in X_VEC:
            out = module(xi[None])[0, 0]
            jacobians.append(torch.cat([g.flatten() for g in torch.autograd.grad(out, params)]))
            outputs.append(out.detach())
        f, jac = torch.stack(outputs), torch.stack(jacobians)
        samples["nngp"].append(torch.outer(f, f))
        samples["ntk"].append(jac @ jac.T)
    for get, values in samples.items():
        stacked = torch.stack(values)
        mean, error = stacked.mean(0), stacked.std(0) / len(values) ** 0.5
        exact, other = net.kernel(X_VEC, get=get), wrong.kernel(X_VEC, get=get)
        allowance = 4 * error + 0.02 * exact.abs().max()
        assert float(((mean - exact).abs() / allowance).max()) < 1, get
        assert float(((mean - other).abs() / allowance).max()) > 1, get
