"""Convolutional kernels (Conv, Flatten, GlobalAvgPool): neural-tangents' values,
brute-force filter sums, and Monte Carlo averages of wide finite CNNs."""
import itertools

import numpy as np
import pytest
import torch

import ntklab as nk
from ntklab.arch.conv import filter_sum

ACTIVATIONS = {"relu": nk.Relu, "erf": nk.Erf}
CONV_CASES = ["conv/0", "conv/1", "conv/2"]


def conv_net(case, channels=8):
    act = ACTIVATIONS[case["activation"]]
    layers = []
    for _ in range(case["conv_layers"]):
        layers += [nk.Conv(channels, tuple(case["filter"]), None, case["padding"], case["W_std"],
                           case["b_std"], case["parameterization"]), act()]
    readout = nk.Flatten() if case["readout"] == "flatten" else nk.GlobalAvgPool()
    return nk.serial(*layers, readout, nk.Dense(1, case["W_std"], case["b_std"]))


@pytest.mark.parametrize("name", CONV_CASES)
def test_conv_kernels_match_neural_tangents(reference, name):
    cases, z = reference
    case = cases[name]
    net = conv_net(case)
    x1, x2 = (z[case[key]].transpose(0, 3, 1, 2) for key in ("x1", "x2"))  # NHWC -> NCHW
    k12, k11 = net.kernel(x1, x2), net.kernel(x1)
    off = ~np.eye(len(x1), dtype=bool)
    for g in ("nngp", "ntk"):
        np.testing.assert_allclose(getattr(k12, g).numpy(), z[f"{name}/{g}_x1x2"], rtol=0, atol=1e-10)
        np.testing.assert_allclose(getattr(k11, g).numpy()[off], z[f"{name}/{g}_x1x1"][off],
                                   rtol=0, atol=1e-10)
        # the diagonal: neural-tangents evaluates the arc-cosine at a correlation rounded
        # below 1 (errors ~1e-9, see test_reference); ntklab keeps it exactly 1
        np.testing.assert_allclose(getattr(k11, g).diagonal().numpy(),
                                   np.diag(z[f"{name}/{g}_x1x1"]), rtol=1e-8, atol=0)
    # a block size of one pair gives the same numbers as the automatic blocks
    small = net.kernel(x1, x2, block_size=1)
    torch.testing.assert_close(small.ntk, k12.ntk, rtol=1e-13, atol=0)


def brute_force_filter_sum(t, filter_shape, padding, full):
    """sum_d t[i + d, j + d] by explicit loops over output pixels and offsets."""
    h, w = t.shape[-2:]
    lows = [(f - 1) // 2 if padding == "SAME" else 0 for f in filter_shape]
    outs = [s if padding == "SAME" else s - f + 1 for s, f in zip((h, w), filter_shape, strict=True)]
    if not full:
        out = torch.zeros(*t.shape[:-2], *outs, dtype=t.dtype)
        for i, j in itertools.product(range(outs[0]), range(outs[1])):
            for a, b in itertools.product(range(filter_shape[0]), range(filter_shape[1])):
                src = (i + a - lows[0], j + b - lows[1])
                if 0 <= src[0] < h and 0 <= src[1] < w:
                    out[..., i, j] += t[..., src[0], src[1]]
        return out
    out = torch.zeros(*t.shape[:-4], *outs, *outs, dtype=t.dtype)
    for p, q in itertools.product(itertools.product(*map(range, outs)), repeat=2):
        for a, b in itertools.product(range(filter_shape[0]), range(filter_shape[1])):
            sp, sq = (p[0] + a - lows[0], p[1] + b - lows[1]), (q[0] + a - lows[0], q[1] + b - lows[1])
            if all(0 <= i < s for i, s in zip(sp + sq, (h, w, h, w), strict=True)):
                out[..., p[0], p[1], q[0], q[1]] += t[..., sp[0], sp[1], sq[0], sq[1]]
    return out


@pytest.mark.parametrize("filter_shape", [(3, 3), (2, 3), (1, 4)])
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_filter_sum_matches_explicit_loops(filter_shape, padding):
    g = torch.Generator().manual_seed(0)
    full = torch.randn(2, 4, 5, 4, 5, generator=g, dtype=torch.float64)
    got = filter_sum(full, filter_shape, padding, full=True)
    torch.testing.assert_close(got, brute_force_filter_sum(full, filter_shape, padding, True),
                               rtol=1e-14, atol=1e-14)
    diagonal = full.flatten(1, 2).flatten(2).diagonal(0, 1, 2).reshape(2, 4, 5)
    got_diagonal = filter_sum(diagonal, filter_shape, padding, full=False)
    torch.testing.assert_close(got_diagonal, brute_force_filter_sum(diagonal, filter_shape, padding, False),
                               rtol=1e-14, atol=1e-14)
    n = got.shape[1] * got.shape[2]
    same_pixel = got.flatten(1, 2).flatten(2).diagonal(0, 1, 2).reshape(2, *got.shape[1:3])
    assert torch.equal(same_pixel, got_diagonal.reshape(2, *got.shape[1:3])) and n > 0


def _mc_setup(param, readout, fix):
    return nk.serial(nk.Conv(256, (3, 2), None, "SAME", 1.5, 0.2, param, trainable=not fix),
                     nk.Relu(), nk.Conv(256, (2, 2), None, "VALID", 1.3, 0.1, param), nk.Erf(),
                     readout, nk.Dense(1, 1.2, 0.3, param, trainable=not fix))


@pytest.mark.parametrize("param", ["ntk", "standard"])
@pytest.mark.parametrize("readout", [nk.Flatten, nk.GlobalAvgPool])
def test_cntk_is_the_mean_empirical_ntk_of_wide_cnns(param, readout):
    """Average empirical NTK of 8 CNNs with 256 channels vs the analytic kernel
    (first and last layers fixed: trainable=False, Arora et al.'s "fix" option).
    The Monte Carlo error is ~1-2%; the kernel with all layers trained, or with
    the other readout, is >=10% away, so the test tells them apart."""
    x = torch.randn(4, 2, 5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    arch = _mc_setup(param, readout(), fix=True)
    empirical = torch.stack([nk.empirical_ntk(arch.module((2, 5, 5), seed=s, dtype=torch.float64), x)
                             for s in range(8)]).mean(0)
    scale = empirical.abs().max()
    distance = lambda net: float((net.kernel(x).ntk - empirical).abs().max() / scale)  # noqa: E731
    assert distance(arch) < 0.05
    other = nk.GlobalAvgPool() if readout is nk.Flatten else nk.Flatten()
    assert distance(_mc_setup(param, readout(), fix=False)) > 0.1
    assert distance(_mc_setup(param, other, fix=True)) > 0.1


def test_modules_have_the_shapes_of_the_kernel_layers():
    arch = nk.serial(nk.Conv(6, (3, 3), padding="VALID"), nk.Relu(), nk.Conv(5, (2, 2), padding="SAME"),
                     nk.GlobalAvgPool(), nk.Dense(3))
    model = arch.module((2, 7, 6))
    assert model(torch.randn(4, 2, 7, 6)).shape == (4, 3)
    flat = nk.serial(nk.Conv(4, (3, 3), padding="VALID"), nk.Flatten(), nk.Dense(1)).module((1, 5, 5))
    assert flat[2].in_features == 4 * 3 * 3
    fixed = nk.serial(nk.Conv(4, (3, 3), trainable=False), nk.Flatten(), nk.Dense(1)).module((1, 5, 5))
    assert [name for name, p in fixed.named_parameters() if p.requires_grad] == ["2.weight"]   # b_std=None: no bias


def test_bad_images_and_layers_are_refused():
    net = nk.serial(nk.Conv(4, (3, 3), padding="SAME"), nk.Relu(), nk.Flatten(), nk.Dense(1))
    x = torch.randn(3, 2, 6, 6)
    with pytest.raises(ValueError, match=r"x1 must be a batch of images \[N, C, H, W\].*x1\[None\]"):
        net.kernel(x[0])
    with pytest.raises(ValueError, match="channels-last.*transpose"):
        net.kernel(torch.randn(3, 6, 6, 3))
    with pytest.raises(ValueError, match="same feature shape"):
        net.kernel(x, torch.randn(2, 2, 5, 6))
    with pytest.raises(ValueError, match="larger than the.*VALID"):
        nk.serial(nk.Conv(4, (7, 3), padding="VALID"), nk.Flatten(), nk.Dense(1)).kernel(x)
    with pytest.raises(ValueError, match="larger than the.*VALID"):
        nk.serial(nk.Conv(4, (7, 3), padding="VALID"), nk.Flatten(), nk.Dense(1)).module((2, 6, 6))
    with pytest.raises(ValueError, match="end it with nk.Flatten"):
        nk.serial(nk.Conv(4, (3, 3)), nk.Relu()).kernel(x)
    with pytest.raises(ValueError, match="ends on images.*Flatten"):   # Dense acts on each pixel
        nk.serial(nk.Conv(4, (3, 3)), nk.Dense(1)).kernel(x)
    with pytest.raises(ValueError, match="filter_shape"):
        nk.Conv(4, 3)
    with pytest.raises(ValueError, match="padding"):
        nk.Conv(4, (3, 3), padding="REFLECT")
    with pytest.raises(ValueError, match=r"in_shape.*\(C, H, W\)"):
        net.module((36,))


def test_gd_ensemble_takes_images_for_convolutional_architectures():
    """t = infinity with no ridge is kernel regression with the CNTK."""
    g = torch.Generator().manual_seed(3)
    x_train, x_test = (torch.randn(n, 2, 5, 5, generator=g, dtype=torch.float64) for n in (12, 4))
    y_train = torch.randn(12, 2, generator=g, dtype=torch.float64)
    net = nk.serial(nk.Conv(4, (3, 3), None, "SAME", 1.5), nk.Relu(), nk.GlobalAvgPool(), nk.Dense(1))
    mean = nk.predict.gradient_descent_mse_ensemble(net, x_train, y_train)(None, x_test, "ntk")
    ntk_train, ntk_test = net.kernel(x_train, get="ntk"), net.kernel(x_test, x_train, get="ntk")
    torch.testing.assert_close(mean, ntk_test @ torch.linalg.solve(ntk_train, y_train),
                               rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="x_test must have samples of shape"):
        nk.predict.gradient_descent_mse_ensemble(net, x_train, y_train)(None, x_test[:, :1], "ntk")


@pytest.mark.parametrize("param", ["ntk", "standard"])
@pytest.mark.parametrize("padding", ["SAME", "VALID", "CIRCULAR"])
@pytest.mark.parametrize("full", [False, True])
def test_a_first_strided_conv_from_input_patches_equals_the_layer_recursion(param, padding, full):
    """`Conv.input_state` (one GEMM over input patches) against `kernel_map` of the input
    state, for every padding, both parameterizations, a fixed layer and either layout."""
    from ntklab.arch.state import KernelState
    x1 = torch.randn(4, 3, 7, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x2 = torch.randn(3, 3, 7, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for trainable in (True, False):
        conv = nk.Conv(5, (3, 2), strides=(2, 3), padding=padding, W_std=1.3, b_std=0.2,
                       parameterization=param, trainable=trainable)
        for b in (x2, None):
            fused = conv.input_state(x1, b, need_ntk=True, full=full)
            plain = conv.kernel_map(KernelState.from_inputs(x1, b, need_ntk=True, full=full))
            assert fused.spatial == plain.spatial and fused.width == plain.width == 5
            for name in ("nngp", "ntk", "var1", "var2"):
                got, want = getattr(fused, name), getattr(plain, name)
                if isinstance(want, float):
                    assert got == want
                else:
                    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)
