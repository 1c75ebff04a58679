"""Issue 29's two silent wrong answers.

1. A layer acting on each feature after `Flatten` of images or token sequences (an activation,
   LayerNorm, a product of branches) acts on each position's pairs before the mean over
   positions: `Flatten` then `Relu` is the same finite network as `Relu` then `Flatten`, so
   the kernels agree to rounding; Monte Carlo of the finite network agrees.
2. `FanInConcat` of image branches concatenates channels (it read the height): branches of
   unequal channel counts work, the module's shapes let a following Conv run, and the kernel
   matches neural-tangents 0.6.5 (`conv/concat_unequal` of the v2 reference set) and Monte Carlo.

Monte Carlo checks: z = (MC mean - kernel) / MC standard error per entry of the upper
triangle, for one-hidden-layer networks whose expectation over the finite network is exactly
the kernel (no finite-width bias); |z| < Z_MAX, fixed beforehand (two-sided 1e-3 Bonferroni
over the entries of a test, with the t distribution's heavier tails for S = 30 samples).
"""
import math

import pytest
import torch

import ntklab as nk
from nt_reference import assert_matches_neural_tangents

GEN = torch.Generator().manual_seed(29)
IMAGES = torch.randn(3, 2, 5, 5, generator=GEN, dtype=torch.float64)
IMAGES2 = torch.randn(2, 2, 5, 5, generator=GEN, dtype=torch.float64)
TOKENS = torch.randn(3, 4, 3, generator=GEN, dtype=torch.float64)     # [N, T, C]
TOKENS2 = torch.randn(2, 4, 3, generator=GEN, dtype=torch.float64)
Z_MAX = 5.0


def conv(channels=8, **kw):
    return nk.Conv(channels, (3, 3), padding="SAME", W_std=1.3, b_std=0.2, **kw)


ACTIVATIONS = [nk.Relu(), nk.Erf(), nk.Gelu(), nk.Sign(), nk.Sigmoid_like(), nk.Sin(1.0, 1.3, 0.2),
               nk.ABRelu(-0.3, 0.8)]


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=repr)
@pytest.mark.parametrize("first", ["conv", "conv_full", "tokens"])
def test_activation_commutes_with_flatten(activation, first):
    """Both orders are one finite network: the kernels agree to rounding (before the fix the
    activation acted on the mean covariance: 2.3 % apart for the NNGP, 5.5 % for the NTK)."""
    body, x, x2 = {"conv": ([conv()], IMAGES, IMAGES2),
                   # an AvgPool makes the state carry every pixel pair (`full`)
                   "conv_full": ([conv(), nk.AvgPool((2, 2), strides=(1, 1))], IMAGES, IMAGES2),
                   "tokens": ([nk.Dense(8, 1.3, 0.2)], TOKENS, TOKENS2)}[first]
    head = [nk.Dense(3, 0.9, 0.1), nk.Relu(), nk.Dense(1)]
    after = nk.serial(*body, nk.Flatten(), activation, *head)
    before = nk.serial(*body, activation, nk.Flatten(), *head)
    for a, b in ((x, None), (x, x2)):
        k_after, k_before = after.kernel(a, b), before.kernel(a, b)
        torch.testing.assert_close(k_after.nngp, k_before.nngp, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(k_after.ntk, k_before.ntk, rtol=1e-12, atol=1e-14)
    # the finite networks are the same function of the same weights
    x32 = x.float()
    torch.testing.assert_close(after.module(x.shape[1:], seed=3)(x32),
                               before.module(x.shape[1:], seed=3)(x32), rtol=0, atol=0)


def test_flatten_of_vectors_is_the_identity():
    net = lambda *mid: nk.serial(nk.Dense(8), *mid, nk.Relu(), nk.Dense(1))  # noqa: E731
    x = IMAGES.flatten(1)
    torch.testing.assert_close(net(nk.Flatten()).kernel(x).ntk, net().kernel(x).ntk, rtol=0, atol=0)


def z_scores(net, x, get, n_samples=30):
    """Per-entry z of the Monte Carlo mean of `net`'s finite networks against its kernel `get`
    (upper triangle), and the Monte Carlo kernel."""
    mc = nk.monte_carlo_kernel(net, x, n_samples=n_samples, get=get, progress=False)
    rows, cols = torch.triu_indices(len(x), len(x))
    z = (getattr(mc, get) - net.kernel(x, get=get)) / getattr(mc, f"{get}_standard_error")
    return z[rows, cols], mc


def test_flatten_then_erf_matches_monte_carlo_and_the_old_kernel_does_not():
    """One hidden layer (the Conv's output is exactly Gaussian), so the Monte Carlo mean of the
    finite network is the kernel with no finite-width bias.  The NNGP is the empirical kernel of
    the 128 x 25 flattened features (low variance), the NTK that of a Dense(1) readout.  Negative
    control: the kernel before the fix (the activation's dual on the mean covariance over pixels)."""
    x = IMAGES[:, :, :4, :4]
    body = [nk.Conv(128, (3, 3), padding="SAME", W_std=1.3, b_std=0.2), nk.Flatten(), nk.Erf()]
    z_nngp, _ = z_scores(nk.serial(*body), x, "nngp")
    z_ntk, _ = z_scores(nk.serial(*body, nk.Dense(1)), x, "ntk")
    assert float(z_nngp.abs().max()) < Z_MAX, z_nngp
    assert float(z_ntk.abs().max()) < Z_MAX, z_ntk

    # the old kernel: Erf's dual of the flattened (mean over pixels) covariance (11 % apart)
    mean_cov = nk.serial(body[0], nk.Flatten()).kernel(x, get="nngp")
    var = mean_cov.diagonal()
    old = nk.Erf().dual(mean_cov, var[:, None], var[None, :], need_dot=False)[0]
    mc = nk.monte_carlo_kernel(nk.serial(*body), x, n_samples=30, get="nngp", progress=False)
    z_old = (mc.nngp - old) / mc.nngp_standard_error
    assert float(z_old.abs().max()) > 2 * Z_MAX, z_old


def test_layernorm_and_product_after_flatten_match_monte_carlo():
    """LayerNorm over the flattened features divides each position by the deviation of the whole
    vector; FanInProd multiplies the branches feature by feature (each position's pairs)."""
    x = IMAGES[:, :, :3, :3]
    c = lambda: nk.Conv(96, (3, 3), padding="SAME", W_std=1.3, b_std=0.2)  # noqa: E731
    norm = nk.serial(c(), nk.Flatten(), nk.LayerNorm(), nk.Erf())
    prod = nk.serial(nk.FanOut(2), nk.parallel(nk.serial(c(), nk.Flatten()), nk.serial(c(), nk.Flatten())),
                     nk.FanInProd())
    for net in (norm, prod):
        z, _ = z_scores(net, x, "nngp")
        assert float(z.abs().max()) < Z_MAX, (net, z)


def test_flatten_layouts_that_pair_features_across_positions_are_refused():
    """Two branches flattened from different layouts (2 x 4 x 4 and 8 x 2 x 2: both 32 features)
    sum features of different positions: refused, naming the layer."""
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    net = nk.serial(nk.Conv(2, (3, 3), padding="SAME"), nk.FanOut(2),
                    nk.parallel(nk.Flatten(), nk.serial(nk.Conv(8, (3, 3), strides=(2, 2), padding="SAME"),
                                                        nk.Flatten())),
                    nk.FanInSum(), nk.Relu(), nk.Dense(1))
    with pytest.raises(ValueError, match=r"layer 3, FanInSum\(\): the branches are flattened from "
                                         r"different layouts"):
        net.kernel(x)


def test_other_layers_after_flatten_of_images_are_refused():
    for layer, words in ((conv(), "acts on images"), (nk.GlobalAvgPool(), "gets vectors"),
                         (nk.AvgPool((2, 2)), "acts on images")):
        with pytest.raises(ValueError, match=rf"layer 2, {type(layer).__name__}.*{words}"):
            nk.serial(conv(), nk.Flatten(), layer, nk.Flatten(), nk.Dense(1)).kernel(IMAGES)


# -- FanInConcat of image branches ----------------------------------------------------------

def inception(parameterization="ntk", channels=(2, 4)):
    a, b = channels
    return nk.serial(conv(6), nk.Relu(), nk.FanOut(2),
                     nk.parallel(conv(a), nk.serial(nk.Conv(5, (1, 1), W_std=1.3, b_std=0.2), nk.Relu(), conv(b))),
                     nk.FanInConcat(), conv(3, parameterization=parameterization), nk.Relu(),
                     nk.Flatten(), nk.Dense(1))


def test_concat_of_image_branches_of_unequal_channels_builds_and_runs():
    """Before: refused ('shapes apart from channels differ: [(2, 5, 5), (4, 5, 5)]'); with equal
    channels the module concatenated along the height and the next Conv failed."""
    for channels in ((2, 4), (3, 3)):
        net = inception(channels=channels)
        module = net.module((2, 5, 5), dtype=torch.float64)
        assert module(IMAGES).shape == (3, 1)
        assert module[:5](IMAGES).shape == (3, sum(channels), 5, 5)    # after FanInConcat
        assert net.kernel(IMAGES, get="ntk").shape == (3, 3)


def test_concat_of_convolutions_is_one_wider_convolution():
    """Concatenating Conv(2) and Conv(4) of one input is, in distribution, one Conv(6): the
    kernels agree to rounding, in both parameterizations of the next layer (its fan-in is 6)."""
    for parameterization in ("ntk", "standard"):
        after = [conv(3, parameterization=parameterization), nk.Relu(), nk.Flatten(), nk.Dense(1)]
        concat = nk.serial(conv(5), nk.Relu(), nk.FanOut(2), nk.parallel(conv(2), conv(4)),
                           nk.FanInConcat(), *after)
        wide = nk.serial(conv(5), nk.Relu(), conv(6), *after)
        k, expected = concat.kernel(IMAGES, IMAGES2), wide.kernel(IMAGES, IMAGES2)
        torch.testing.assert_close(k.nngp, expected.nngp, rtol=1e-12, atol=0)
        torch.testing.assert_close(k.ntk, expected.ntk, rtol=1e-12, atol=0)


def test_concat_of_image_branches_matches_neural_tangents(reference_v2):
    """`conv/concat_unequal` (16 + 32 channels, then a standard-parameterization Conv) against
    neural-tangents 0.6.5 values (benchmarks/make_reference.py)."""
    _, z = reference_v2
    net = nk.serial(
        nk.Conv(24, (3, 3), padding="SAME", W_std=1.5, b_std=0.05), nk.Relu(), nk.FanOut(2),
        nk.parallel(nk.Conv(16, (3, 3), padding="SAME", W_std=1.5, b_std=0.05),
                    nk.serial(nk.Conv(40, (1, 1), W_std=1.5, b_std=0.05), nk.Relu(),
                              nk.Conv(32, (3, 3), padding="SAME", W_std=1.5, b_std=0.05))),
        nk.FanInConcat(), nk.Conv(8, (3, 3), padding="SAME", W_std=1.5, b_std=0.05,
                                  parameterization="standard"),
        nk.Relu(), nk.Flatten(), nk.Dense(1, W_std=1.5, b_std=0.05))
    x1, x2 = (torch.from_numpy(z[key]).permute(0, 3, 1, 2) for key in ("conv/x1", "conv/x2"))
    assert_matches_neural_tangents(net, x1, x2, lambda get, pair: z[f"conv/concat_unequal/{get}_{pair}"])


def test_concat_of_image_branches_matches_monte_carlo():
    """Two branches ending in their own Conv from the first Conv's Relu: the concatenation's
    kernel is exact for the finite network's mean (the branches' convolutions see the Relu of a
    Gaussian layer); read out by Flatten."""
    x = IMAGES[:, :, :4, :4]
    net = nk.serial(nk.Conv(96, (3, 3), padding="SAME", W_std=1.3, b_std=0.2), nk.Relu(), nk.FanOut(2),
                    nk.parallel(nk.Conv(32, (3, 3), padding="SAME", W_std=1.3),
                                nk.Conv(96, (1, 1), W_std=0.8, b_std=0.5)),
                    nk.FanInConcat(), nk.Flatten())
    z, mc = z_scores(net, x, "nngp")
    assert float(z.abs().max()) < Z_MAX, z
    # negative control: the kernel with the widths' weights swapped (96 / 128 for the first branch)
    a = nk.serial(net.layers[0], net.layers[1], net.layers[3].layers[0], nk.Flatten()).kernel(x, get="nngp")
    b = nk.serial(net.layers[0], net.layers[1], net.layers[3].layers[1], nk.Flatten()).kernel(x, get="nngp")
    swapped = (96 * a + 32 * b) / 128
    z_wrong = (mc.nngp - swapped) / mc.nngp_standard_error
    assert math.isfinite(float(z_wrong.abs().max())) and float(z_wrong.abs().max()) > 2 * Z_MAX


# -- FanInConcat of flattened branches keeps their positions ---------------------------------

def flat_conv(channels, **kw):
    return nk.serial(nk.Conv(channels, (3, 3), padding="SAME", W_std=1.3, b_std=0.2, **kw), nk.Flatten())


def duplicated(layer):
    """`layer`'s output concatenated with itself."""
    return nk.serial(layer, nk.FanOut(2), nk.parallel(nk.Identity(), nk.Identity()), nk.FanInConcat())


def test_product_with_a_concatenation_of_flattened_images_pairs_positions():
    """[Flatten(z), Flatten(z)] times Flatten(Conv(2c)) multiplies, feature by feature, the same
    positions' units as Flatten(z) times Flatten(Conv(c)): the same kernel to rounding.  Before
    the fix FanInConcat dropped the positions and the product took the concatenation as
    constant over positions (its mean over positions times the other branch's): 12 % off."""
    x = IMAGES[:, :, :4, :4]
    def net(first, second):
        return nk.serial(conv(4), nk.FanOut(2), nk.parallel(first, second), nk.FanInProd(), nk.Dense(1))
    concat = net(duplicated(nk.Flatten()), flat_conv(8))
    simple = net(nk.Flatten(), flat_conv(4))
    for a, b in ((x, None), (x, IMAGES2[:, :, :4, :4])):
        k, expected = concat.kernel(a, b), simple.kernel(a, b)
        torch.testing.assert_close(k.nngp, expected.nngp, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(k.ntk, expected.ntk, rtol=1e-12, atol=1e-14)


def test_concatenation_of_a_flattened_image_and_a_vector_matches_monte_carlo():
    """[Flatten(Conv(64)(x)), Dense(32)(Flatten(x))] times Flatten(Conv(66)(x)) on 4 x 4 images
    (scaled along a ramp over the positions): the vector's 32 features meet every position twice,
    each Flatten(Conv) feature its own position.  One affine layer per branch, so the Monte Carlo
    mean is exactly the kernel.  Negative control: the kernel before the fix, which took the
    concatenation as constant over positions (32 % off)."""
    x = IMAGES[:, :, :4, :4] * torch.linspace(0.2, 2.0, 16, dtype=torch.float64).reshape(4, 4)
    vector = nk.serial(nk.Flatten(), nk.Dense(32, 1.1, 0.3))
    mixed = nk.serial(nk.FanOut(2), nk.parallel(flat_conv(64), vector), nk.FanInConcat())
    net = nk.serial(nk.FanOut(2), nk.parallel(mixed, flat_conv(66)), nk.FanInProd())
    z, mc = z_scores(net, x, "nngp")
    assert float(z.abs().max()) < Z_MAX, z

    k_conv, k_vector = nk.serial(flat_conv(1)).kernel(x, get="nngp"), vector.kernel(x, get="nngp")
    old = (64 / 66 * k_conv + 2 / 66 * k_vector) * k_conv
    z_old = (mc.nngp - old) / mc.nngp_standard_error
    assert float(z_old.abs().max()) > 2 * Z_MAX, z_old


def tokens_concat_product(after_concat=()):
    """Tokens [N, 4, 3]: Flatten of a Dense(8) concatenated with itself, times Flatten of a Dense(16)."""
    return nk.serial(nk.Dense(8), nk.FanOut(2),
                     nk.parallel(nk.serial(duplicated(nk.Flatten()), *after_concat),
                                 nk.serial(nk.Dense(16), nk.Flatten())), nk.FanInProd())


@pytest.mark.parametrize("case", ["tokens", "vector_width", "nested"])
def test_products_with_concatenations_that_lose_the_positions_are_refused(case):
    """A concatenation whose features do not sit at the positions of a flattened layout: flattened
    token sequences (their features run token by token, so [A, B] is not the flattening of A and B
    concatenated along channels), a vector whose width is not a multiple of the image's positions,
    and a concatenation of such a concatenation: a product with a flattened branch is refused,
    naming the layer and the concatenation."""
    x = IMAGES[:, :, :4, :4]
    if case == "tokens":
        net, x, why = tokens_concat_product(), TOKENS, "flattened token sequences"
    else:
        odd = nk.serial(nk.FanOut(2), nk.parallel(flat_conv(1), nk.serial(nk.Flatten(), nk.Dense(8))),
                        nk.FanInConcat())
        if case == "nested":
            odd = nk.serial(odd, nk.FanOut(2), nk.parallel(nk.Identity(), nk.Identity()), nk.FanInConcat())
        # 24 (48) features: a Conv(6) (Conv(12)) with stride 2 flattens to as many
        net = nk.serial(nk.FanOut(2), nk.parallel(odd, flat_conv(12 if case == "nested" else 6, strides=(2, 2))),
                        nk.FanInProd())
        why = "a vector of 8 features"
    with pytest.raises(ValueError, match=rf"layer \d+, FanInProd\(\): .*FanInConcat.*{why}"):
        net.kernel(x)


def test_a_dense_layer_after_a_concatenation_of_flattened_sequences_is_accepted():
    """The Dense layer's features are all alike: the product with a flattened branch is exact, and
    [Flatten(z), Flatten(z)] then Dense has Flatten(z) then Dense's kernel (NTK parameterization)."""
    simple = nk.serial(nk.Dense(8), nk.FanOut(2),
                       nk.parallel(nk.serial(nk.Flatten(), nk.Dense(64)), nk.serial(nk.Dense(16), nk.Flatten())),
                       nk.FanInProd())
    k, expected = tokens_concat_product([nk.Dense(64)]).kernel(TOKENS), simple.kernel(TOKENS)
    torch.testing.assert_close(k.nngp, expected.nngp, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(k.ntk, expected.ntk, rtol=1e-12, atol=1e-14)
