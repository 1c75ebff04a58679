"""The convolution family in 1, 2 and 3 spatial dimensions (Conv, AvgPool, SumPool, global
pooling, Flatten on sequences [N, L, C] and volumes [N, C, D, H, W]; ConvTranspose and ConvLocal)
against neural-tangents 0.6.5 (tests/data/neural_tangents/neural_tangents_conv.*, made by
benchmarks/make_reference_conv.py), against Monte Carlo averages of the finite networks, and
against independent implementations of the finite layers (torch's conv_transpose, Conv)."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ntklab as nk
from ntklab.arch.spec import parse_architecture
from conftest import load_reference

ROOT = Path(__file__).resolve().parents[2]
NAME = "neural_tangents_conv"


@pytest.fixture(scope="module")
def reference():
    return load_reference(NAME)


def script():
    spec = importlib.util.spec_from_file_location("make_reference_conv",
                                                  ROOT / "benchmarks" / "make_reference_conv.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def inputs(z, case):
    """Stored channels-last (neural-tangents); ntklab: sequences as they are, images and volumes NC..."""
    return [torch.from_numpy(np.moveaxis(z[case[k]], -1, 1) if z[case[k]].ndim >= 4 else z[case[k]])
            for k in ("x1", "x2")]


def distance(net, x1, x2, z, case):
    """Largest |ntklab - neural-tangents| relative to the largest reference entry, off the x1x1 diagonal."""
    off = ~np.eye(len(x1), dtype=bool)
    worst = 0.0
    for other, pair in ((x2, "x1x2"), (None, "x1x1")):
        k = net.kernel(x1, other)
        for get in ("nngp", "ntk"):
            want, got = z[case["arrays"][f"{get}_{pair}"]], getattr(k, get).numpy()
            keep = off if pair == "x1x1" else np.ones_like(want, dtype=bool)
            worst = max(worst, float(np.abs(got - want)[keep].max() / np.abs(want).max()))
    return worst


def test_stored_inputs_are_the_recorded_draws_and_every_case_is_stored(reference):
    cases, z = reference
    drawn = script().draw_inputs()
    for key, value in drawn.items():
        np.testing.assert_array_equal(value, z[key], err_msg=key)
    listed = {key for case in cases.values() for key in case["arrays"].values()}
    assert listed | set(drawn) == set(z)
    assert {case["architecture"] for case in cases.values()} == {c["architecture"] for c in script().cases()}


@pytest.mark.parametrize("name", [name for name, case in load_reference(NAME)[0].items()
                                  if "neural_tangents_computes" not in case])
def test_kernels_match_neural_tangents(reference, name):
    """Off the diagonal to 1e-10 of the largest entry; the x1x1 diagonal within neural-tangents'
    arccos rounding at correlation 1 (1e-7, see test_reference.py) and exactly the kernel of each
    input alone.  The case neural-tangents computes with swapped axes is checked below."""
    cases, z = reference
    case = cases[name]
    net = parse_architecture(case["architecture"])
    x1, x2 = inputs(z, case)
    assert distance(net, x1, x2, z, case) < 1e-10
    k11 = net.kernel(x1)
    for get in ("nngp", "ntk"):
        diagonal = np.diag(getattr(k11, get).numpy())
        np.testing.assert_allclose(diagonal, np.diag(z[case["arrays"][f"{get}_x1x1"]]), rtol=1e-7)
        alone = [float(getattr(net.kernel(x1[i:i + 1]), get)[0, 0]) for i in range(len(x1))]
        np.testing.assert_allclose(diagonal, alone, rtol=1e-13)


def test_a_different_padding_or_stride_is_far_from_the_reference(reference):
    """Negative control: each argument the reference pins down changes the kernel well beyond 1e-10."""
    cases, z = reference
    for name, old, new in (("img/transpose_same_gap", "padding='SAME', W_std=1.5, b_std=0.05), Relu(), "
                            "GlobalAvgPool", "padding='CIRCULAR', W_std=1.5, b_std=0.05), Relu(), GlobalAvgPool"),
                           ("seq/transpose", "strides=(3,)", "strides=(2,)"),
                           ("vol/local", "ConvLocal(8, (2, 1, 2)", "Conv(8, (2, 1, 2)"),
                           ("vol/conv_pool_sum", "strides=(1, 2, 1)", "strides=(2, 1, 1)")):
        case = cases[name]
        assert old in case["architecture"], name
        wrong = parse_architecture(case["architecture"].replace(old, new))
        assert distance(wrong, *inputs(z, case), z, case) > 1e-3, name


def test_neural_tangents_swaps_conv_local_axes_after_a_conv(reference):
    """neural-tangents 0.6.5 keeps a Conv's all-pairs kernel with reversed spatial axes and
    un-reverses a following layer's filter shape and strides only for shared weights: after a Conv,
    ConvLocal((3, 2), strides=(1, 2)) is computed as ConvLocal((2, 3), strides=(2, 1)) (1e-10),
    which is far from the network's kernel (the Monte Carlo test below decides for ntklab's)."""
    cases, z = reference
    case = cases["img/local_after_conv_strided"]
    x1, x2 = inputs(z, case)
    assert distance(parse_architecture(case["neural_tangents_computes"]), x1, x2, z, case) < 1e-10
    assert distance(parse_architecture(case["architecture"]), x1, x2, z, case) > 1e-2


# -- Monte Carlo of the finite networks ---------------------------------------------------------

GEN = torch.Generator().manual_seed(5)
SEQ = torch.randn(3, 7, 2, generator=GEN, dtype=torch.float64)           # [N, L, C]
IMG = torch.randn(3, 2, 5, 4, generator=GEN, dtype=torch.float64)        # NCHW
VOL = torch.randn(3, 2, 3, 4, 3, generator=GEN, dtype=torch.float64)     # NCDHW


def mc_distances(net, wrong, x, n_samples, get="ntk"):
    """Distance of the Monte Carlo mean to the analytic kernels of `net` and `wrong`, in units of
    4 standard errors plus 2% of the kernel's scale (the O(1/width) bias); below 1: consistent."""
    mc = nk.monte_carlo_kernel(net, x, n_samples=n_samples, get=get, progress=False)
    mean, error = getattr(mc, get), getattr(mc, f"{get}_standard_error")
    exact, other = net.kernel(x, get=get), wrong.kernel(x, get=get)
    allowance = 4 * error + 0.02 * exact.abs().max()
    return float(((mean - exact).abs() / allowance).max()), float(((mean - other).abs() / allowance).max())


H = dict(W_std=1.4, b_std=0.1)


def wide(*layers, readout=None):
    """The layers read out by `readout` (default Flatten) and Dense(1)."""
    return nk.serial(*layers, readout or nk.Flatten(), nk.Dense(1))


MONTE_CARLO = {
    # name: (network, negative control, inputs, networks averaged); the NTK (self-averaging over the width)
    "conv1d_pools": (wide(nk.Conv(256, (3,), strides=(2,), padding="CIRCULAR", **H), nk.Relu(),
                          nk.AvgPool((2,), padding="SAME"), nk.SumPool((2,)), readout=nk.GlobalAvgPool()),
                     wide(nk.Conv(256, (3,), strides=(2,), padding="CIRCULAR", **H), nk.Relu(),
                          nk.AvgPool((2,), padding="SAME"), nk.AvgPool((2,)), readout=nk.GlobalAvgPool()),
                     SEQ, 6),
    "conv3d_pools": (wide(nk.Conv(256, (2, 3, 2), padding="SAME", **H), nk.Relu(),
                          nk.AvgPool((2, 2, 2), strides=(1, 2, 1)), readout=nk.GlobalSumPool()),
                     wide(nk.Conv(256, (2, 3, 2), padding="SAME", **H), nk.Relu(),
                          nk.AvgPool((2, 2, 2), strides=(2, 1, 1)), readout=nk.GlobalSumPool()), VOL, 16),
    "transpose2d": (wide(nk.ConvTranspose(256, (3, 2), strides=(2, 3), padding="SAME", **H), nk.Relu(),
                         readout=nk.GlobalAvgPool()),
                    wide(nk.Conv(256, (3, 2), strides=(2, 3), padding="SAME", **H), nk.Relu(),
                         readout=nk.GlobalAvgPool()), IMG, 6),
    "transpose1d_circular": (wide(nk.ConvTranspose(256, (5,), strides=(2,), padding="CIRCULAR", **H), nk.Relu(),
                                  nk.AvgPool((2,), padding="CIRCULAR")),
                             wide(nk.ConvTranspose(256, (5,), strides=(2,), padding="SAME", **H), nk.Relu(),
                                  nk.AvgPool((2,), padding="CIRCULAR")), SEQ, 32),
    "local_after_conv": (  # the architecture neural-tangents computes (swapped axes) is the control
        wide(nk.Conv(64, (3, 3), padding="SAME", **H), nk.Relu(),
             nk.ConvLocal(256, (3, 1), strides=(1, 3), padding="SAME", **H), nk.Relu(),
             nk.AvgPool((2, 2), strides=(1, 1), padding="SAME")),
        wide(nk.Conv(64, (3, 3), padding="SAME", **H), nk.Relu(),
             nk.ConvLocal(256, (1, 3), strides=(3, 1), padding="SAME", **H), nk.Relu(),
             nk.AvgPool((2, 2), strides=(1, 1), padding="SAME")), IMG, 24),
    "local_vs_shared": (wide(nk.ConvLocal(256, (3, 3), padding="SAME", **H), readout=nk.GlobalAvgPool()),
                        wide(nk.Conv(256, (3, 3), padding="SAME", **H), readout=nk.GlobalAvgPool()), IMG, 6),
}


SLOW = ("conv1d_pools", "local_after_conv")   # 3-5 s each


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name
                                  for name in MONTE_CARLO])
def test_wide_networks_converge_to_the_kernel(name):
    net, wrong, x, n_samples = MONTE_CARLO[name]
    right, other = mc_distances(net, wrong, x, n_samples)
    assert right < 1, (name, right)
    assert other > 3, (name, other)


# -- the finite layers against independent implementations -----------------------------------

def test_conv_transpose_module_is_torchs_conv_transpose_with_the_filter_flipped():
    """lax.conv_transpose (neural-tangents' layer) correlates the dilated, padded input with the
    filter as stored; torch's conv_transpose is the adjoint of conv2d, i.e. the same with the
    filter flipped and its channel axes swapped.  VALID: torch's output size (n - 1) s + k."""
    layer = nk.ConvTranspose(5, (3, 2), strides=(2, 2), padding="VALID", b_std=0.3)
    module = nk.serial(layer).module((2, 5, 4), dtype=torch.float64)[0]
    got = module(IMG)
    weight = module.weight_scale * module.weight.flip(2, 3).transpose(0, 1)
    want = F.conv_transpose2d(IMG, weight, module.bias_scale * module.bias, stride=(2, 2))
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)
    wrong = F.conv_transpose2d(IMG, weight.flip(2, 3), module.bias_scale * module.bias, stride=(2, 2))
    assert (got - wrong).abs().max() > 1e-2     # the flip matters: the comparison can fail


def test_conv_local_module_with_equal_weights_at_every_position_is_the_convolution():
    """Locally connected weights that happen to be equal at every position give the convolution."""
    for dims, x in ((1, SEQ), (2, IMG), (3, VOL)):
        filt, strides = (2,) * dims, (1,) * (dims - 1) + (2,)
        local = nk.serial(nk.ConvLocal(4, filt, strides, "CIRCULAR", b_std=0.2)).module(x.shape[1:], dtype=x.dtype)[0]
        shared = nk.serial(nk.Conv(4, filt, strides, "CIRCULAR", b_std=0.2)).module(x.shape[1:], dtype=x.dtype)[0]
        with torch.no_grad():
            flat = shared.weight.reshape(4, -1)   # [C_out, C_in |filter|]: the patch order of ConvLocal
            local.weight.copy_(flat.expand_as(local.weight))
            local.bias.copy_(shared.bias.reshape(4, *(1,) * dims).expand_as(local.bias))
        torch.testing.assert_close(local(x), shared(x), rtol=1e-13, atol=1e-13)
        with torch.no_grad():
            local.weight[0].mul_(2.0)   # one position's weights differ: only its outputs change
        assert not torch.allclose(local(x), shared(x))


def test_a_sequence_is_an_image_of_height_one():
    """Conv/AvgPool on sequences [N, L, C] = the same layers on images [N, C, 1, L] with (1, k)
    windows: the two layouts reach the same kernel and the same finite network."""
    seq = nk.serial(nk.Conv(8, (3,), strides=(2,), padding="SAME", **H), nk.Relu(),
                    nk.ConvTranspose(8, (3,), strides=(2,), padding="VALID"), nk.Erf(),
                    nk.AvgPool((2,), padding="SAME"), nk.GlobalAvgPool(), nk.Dense(1))
    img = nk.serial(nk.Conv(8, (1, 3), strides=(1, 2), padding="SAME", **H), nk.Relu(),
                    nk.ConvTranspose(8, (1, 3), strides=(1, 2), padding="VALID"), nk.Erf(),
                    nk.AvgPool((1, 2), padding="SAME"), nk.GlobalAvgPool(), nk.Dense(1))
    as_image = SEQ.transpose(1, 2)[:, :, None]
    torch.testing.assert_close(seq.kernel(SEQ).ntk, img.kernel(as_image).ntk, rtol=1e-14, atol=0)
    f_seq, f_img = seq.module((7, 2), dtype=torch.float64), img.module((2, 1, 7), dtype=torch.float64)
    torch.testing.assert_close(f_seq(SEQ), f_img(as_image), rtol=1e-13, atol=1e-13)
    assert not torch.allclose(seq.kernel(SEQ).ntk, img.kernel(as_image.flip(-1)).ntk)


def test_conv_local_with_flatten_readout_is_the_cnn_kernel():
    """Novak et al. (2019), sec. 5.1: without pooling, weight sharing does not change the kernel."""
    for strides in ((1, 1), (2, 1)):
        net = lambda layer, strides=strides: nk.serial(layer(8, (3, 2), strides, "SAME", **H), nk.Relu(),  # noqa: E731
                                      layer(8, (2, 2), padding="CIRCULAR"), nk.Relu(), nk.Flatten(), nk.Dense(1))
        torch.testing.assert_close(net(nk.ConvLocal).kernel(IMG).ntk, net(nk.Conv).kernel(IMG).ntk,
                                   rtol=1e-14, atol=0)
        pooled = lambda layer, strides=strides: nk.serial(layer(8, (3, 2), strides, "SAME", **H),  # noqa: E731
                                                          nk.Relu(),
                                         nk.GlobalAvgPool(), nk.Dense(1))
        assert not torch.allclose(pooled(nk.ConvLocal).kernel(IMG).ntk, pooled(nk.Conv).kernel(IMG).ntk)


# -- refusals -----------------------------------------------------------------------------------

def test_dense_on_volumes_acts_on_each_voxel():
    """Dense on NCDHW volumes is a 1x1x1 convolution (kernel to 0 and the same finite outputs from the same
    seed); a network ending on volumes is refused by kernel with the fix (Flatten, pooling or
    diagonal_spatial)."""
    dense = nk.serial(nk.Conv(4, (2, 2, 2)), nk.Relu(), nk.Dense(3, W_std=1.3, b_std=0.2), nk.Relu(), nk.Flatten(),
                      nk.Dense(1))
    conv = nk.serial(nk.Conv(4, (2, 2, 2)), nk.Relu(), nk.Conv(3, (1, 1, 1), W_std=1.3, b_std=0.2), nk.Relu(),
                     nk.Flatten(), nk.Dense(1))
    torch.testing.assert_close(dense.kernel(VOL).ntk, conv.kernel(VOL).ntk, rtol=1e-14, atol=0)
    shape = tuple(VOL.shape[1:])
    torch.testing.assert_close(dense.module(shape, seed=1, dtype=VOL.dtype)(VOL),
                               conv.module(shape, seed=1, dtype=VOL.dtype)(VOL), rtol=1e-13, atol=1e-13)
    with pytest.raises(ValueError, match=r"ends on volumes of spatial shape .*end it with nk.Flatten\(\)"):
        nk.serial(nk.Conv(4, (2, 2, 2)), nk.Relu(), nk.Dense(1)).kernel(VOL)


@pytest.mark.parametrize("net, x, match", [
    (lambda: nk.serial(nk.Conv(4, (3, 3)), nk.Relu(), nk.Flatten(), nk.Dense(1)), VOL,
     r"layer 0, Conv\(4\) acts on images \[N, C, H, W\].*gets volumes"),
    (lambda: nk.serial(nk.Conv(4, (2, 2, 2)), nk.Relu(), nk.Flatten(), nk.Dense(1)), IMG,
     r"layer 0, Conv\(4, filter_shape=\(2, 2, 2\)\) acts on volumes.*gets images"),
    (lambda: nk.serial(nk.Dense(4), nk.Flatten(), nk.ConvTranspose(4, (2,)), nk.Flatten(), nk.Dense(1)), SEQ,
     r"layer 2, ConvTranspose\(4, filter_shape=\(2,\)\) acts on token sequences.*gets vectors"),
    (lambda: nk.serial(nk.ConvLocal(4, (4, 3, 3)), nk.Flatten(), nk.Dense(1)), VOL,
     r"layer 0, ConvLocal.*window \(4, 3, 3\) is larger than the \(3, 4, 3\) volumes"),
])
def test_bad_combinations_are_refused_naming_the_layer(net, x, match):
    """Both the kernel and the finite module refuse, before any work."""
    with pytest.raises(ValueError, match=match):
        net().kernel(x)
    with pytest.raises(ValueError, match=match):
        net().module(tuple(x.shape[1:]))


def test_bad_shapes_are_refused_at_construction_and_at_the_module():
    with pytest.raises(ValueError, match=r"filter_shape must be a tuple of 1 to 3 positive integers"):
        nk.Conv(4, (2, 2, 2, 2))
    with pytest.raises(ValueError, match=r"strides must be a tuple of 2 positive integer"):
        nk.ConvTranspose(4, (2, 2), strides=(2,))
    with pytest.raises(ValueError, match=r"window_shape must be a tuple"):
        nk.AvgPool(2)
    module = nk.serial(nk.Conv(4, (2,), in_channels=2)).module((7, 2))
    with pytest.raises(ValueError, match=r"token sequences \[N, L, 2\].*x.transpose\(1, 2\)"):
        module(torch.randn(3, 2, 7))
    volumes = nk.serial(nk.Conv(4, (2, 2, 2))).module((2, 3, 4, 3))
    with pytest.raises(ValueError, match=r"NCDHW volumes \[N, 2, D, H, W\].*permute\(0, 4, 1, 2, 3\)"):
        volumes(torch.randn(3, 3, 4, 3, 2))


def largest_state(net, x) -> int:
    """The most numbers one pair of inputs holds in any layer's state of `net`'s recursion."""
    sizes = []
    net.inputs_map(x, None, need_ntk=True, full=net.needs_all_pixel_pairs,
                   after_layer=lambda i, k: sizes.append(k.nngp[0, 0].numel()))
    return max(sizes)


def test_block_sizes_count_the_positions_of_upsampled_states():
    """`pair_entries` (numbers per pair that block sizes budget for) bounds every layer's state,
    measured during the recursion, also when ConvTranspose multiplies the positions (without
    `position_growth` it budgeted 1/36 of the first network's); tight for SAME."""
    pooled = nk.serial(nk.ConvTranspose(4, (3, 3), strides=(2, 3), padding="SAME"), nk.Relu(),
                       nk.GlobalAvgPool(), nk.Dense(1))
    assert largest_state(pooled, IMG) == pooled.pair_entries(tuple(IMG.shape[1:])) == (5 * 2 * 4 * 3) ** 2
    flat = nk.serial(nk.Conv(4, (2,)), nk.ConvTranspose(4, (4,), strides=(2,), padding="VALID"), nk.Relu(),
                     nk.Flatten(), nk.Dense(1))
    assert 1 < largest_state(flat, SEQ) <= flat.pair_entries(tuple(SEQ.shape[1:])) < 3 * largest_state(flat, SEQ)
