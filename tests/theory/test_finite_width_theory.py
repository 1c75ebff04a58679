"""The 1/n recursions of `nk.finite_width` against closed forms and Monte Carlo over real
initializations (`monte_carlo_kernel`: autograd Jacobians of torch networks, an independent path)."""
import math

import pytest
import torch

import ntklab as nk
from ntklab.theory.finite_width import criticality, finite_width
from ntklab.lab.studies.finite_width import variance_standard_error


def unit_norm_inputs(n, d=4, seed=0):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x / x.norm(dim=1, keepdim=True) * math.sqrt(d)      # ||x||^2 = d


@pytest.mark.parametrize("depth", [1, 2, 4, 8])
@pytest.mark.parametrize("width", [32, 512])
def test_relu_at_criticality_matches_the_closed_forms(depth, width):
    """Bias-free ReLU, W_std = sqrt 2, ||x||^2 = d: Var Θ / (EΘ)² = (L/n)(11L + 7)/(3(L + 1)) (an
    independent referee's derivation), V^(ℓ) / K² = 5(ℓ - 1), no 1/n shift of either mean."""
    stats = finite_width(nk.mlp(depth, width, W_std=math.sqrt(2), b_std=0.0), unit_norm_inputs(3))
    expected = depth / width * (11 * depth + 7) / (3 * (depth + 1))
    torch.testing.assert_close(stats.ntk_relative_variance, torch.full((3,), expected, dtype=torch.float64),
                               rtol=1e-12, atol=0)
    each = torch.arange(3)
    four_point = stats.four_point[:, each, each, each, each]
    nngp, ntk = stats.nngp[:, each, each], stats.ntk[:, each, each]
    layers = torch.arange(depth + 1, dtype=torch.float64)[:, None].expand(-1, 3)
    torch.testing.assert_close(four_point / nngp ** 2, 5 * layers, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ntk[-1], torch.full((3,), 2.0 * (depth + 1), dtype=torch.float64))
    assert stats.nngp_shift[:, each, each].abs().max() < 1e-11
    assert stats.ntk_shift[:, each, each].abs().max() < 1e-10


def test_joint_statistics_restrict_to_each_input_alone_and_keep_their_symmetries():
    """The tensors over sample indices: the entries of one input equal that input's own
    (one-dimensional) statistics, V, A, B and the NTK covariance are symmetric under swapping
    the two pairs and within a pair, and D, F vanish at the first layer."""
    net = nk.mlp(3, 48, W_std=1.3, b_std=0.2, activation=nk.Tanh())
    x = unit_norm_inputs(3)
    joint = finite_width(net, x)
    for i in range(3):
        alone = finite_width(net, x[i])
        for name in ("nngp", "nngp_shift", "ntk", "ntk_shift"):
            torch.testing.assert_close(getattr(joint, name)[:, i, i], getattr(alone, name)[:, 0, 0],
                                       rtol=1e-10, atol=1e-12)
        for name in ("four_point", "ntk_A", "ntk_B", "ntk_D", "ntk_F"):
            torch.testing.assert_close(getattr(joint, name)[:, i, i, i, i],
                                       getattr(alone, name)[:, 0, 0, 0, 0], rtol=1e-10, atol=1e-12)
    for tensor in (joint.four_point, joint.ntk_A, joint.ntk_B):
        torch.testing.assert_close(tensor, tensor.permute(0, 3, 4, 1, 2), rtol=1e-12, atol=1e-14)
    for tensor in (joint.four_point, joint.ntk_A):
        torch.testing.assert_close(tensor, tensor.permute(0, 2, 1, 3, 4), rtol=1e-12, atol=1e-14)
    cov = joint.ntk_covariance
    torch.testing.assert_close(cov, cov.permute(2, 3, 0, 1), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(cov, cov.permute(1, 0, 2, 3), rtol=1e-12, atol=1e-14)
    assert (joint.ntk_D[0] == 0).all() and (joint.ntk_F[0] == 0).all()
    assert joint.ntk_B[1].abs().min() > 0        # the second layer already fluctuates


def test_more_inputs_than_the_first_layer_kernel_has_rank():
    """Five inputs in d = 3 (with a bias the first-layer kernel has rank 4): every entry involves
    at most four inputs, so the joint statistics exist and restrict to those of any four."""
    net = nk.mlp(1, 32, W_std=1.2, b_std=0.3, activation=nk.Tanh())
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    joint, four = finite_width(net, x), finite_width(net, x[[0, 2, 3, 4]])
    index = torch.tensor([0, 2, 3, 4])
    for name in ("ntk_A", "ntk_B", "four_point"):
        torch.testing.assert_close(getattr(joint, name)[:, index][:, :, index][:, :, :, index][:, :, :, :, index],
                                   getattr(four, name), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match=r"inputs \[0, 1, 2, 3\] is singular"):
        finite_width(nk.mlp(1, 8, b_std=0.0), x)          # no bias: every four are dependent in d = 3


def test_criticality_of_the_universality_classes():
    relu = criticality(nk.Relu())
    assert relu.universality == "scale-invariant" and math.isclose(relu.C_W, 2.0) and relu.C_b == 0
    assert math.isclose(criticality(nk.LeakyRelu(0.1)).C_W, 2 / 1.01)
    tanh = criticality(nk.Tanh())
    assert tanh.universality == "K*=0" and math.isclose(tanh.C_W, 1.0) and tanh.K_star == 0
    assert math.isclose(criticality(nk.Erf()).C_W, math.pi / 4)          # σ'(0) = 2/√π
    gelu = criticality(nk.Gelu())  # PDLT §5.3.4: K* = (3 + √17)/2, C_W = 1.98305826, C_b = 0.17292239
    assert gelu.universality == "K*>0"
    assert math.isclose(gelu.K_star, (3 + math.sqrt(17)) / 2, rel_tol=1e-9)
    assert math.isclose(gelu.C_W, 1.98305826, rel_tol=1e-7) and math.isclose(gelu.C_b, 0.17292239, rel_tol=1e-6)
    with pytest.raises(ValueError, match="no critical initialization"):
        criticality(nk.Sigmoid_like())


def test_bad_networks_are_refused():
    x = unit_norm_inputs(2)
    with pytest.raises(ValueError, match="MLP"):
        finite_width(nk.serial(nk.Dense(8), nk.Relu(), nk.Relu(), nk.Dense(1)), x)
    with pytest.raises(ValueError, match="NTK parameterization"):
        finite_width(nk.mlp(2, 8, parameterization="standard"), x)
    with pytest.raises(ValueError, match="Dense readout"):
        finite_width(nk.serial(nk.Dense(8), nk.Relu()), x)
    with pytest.raises(ValueError, match="singular"):   # parallel inputs, no bias
        finite_width(nk.mlp(2, 8, b_std=0.0), torch.stack([x[0], 2 * x[0]]))


def monte_carlo_ntk(net, x, samples, seed=1000):
    """Per-initialization Θ̂(x, x) and f(x)² of the network's single output."""
    thetas, squares = [], []
    nk.monte_carlo_kernel(net, x, n_samples=samples, seed=seed, progress=False,
                          each=lambda s, k: (thetas.append(float(k["ntk"][0, 0])),
                                             squares.append(float(k["nngp"][0, 0]))))
    return torch.tensor(thetas, dtype=torch.float64), torch.tensor(squares, dtype=torch.float64)


def variance_with_error(sample):
    """Sample variance and its fourth-moment standard error (Θ̂ is skewed)."""
    var, error = variance_standard_error(sample.numpy())
    return float(var), float(error)


def test_ntk_variance_of_a_tanh_network_agrees_with_monte_carlo_and_a_wrong_coefficient_does_not():
    net = nk.mlp(2, 32, W_std=1.0, b_std=0.1, activation=nk.Tanh())
    x = unit_norm_inputs(1)
    stats = finite_width(net, x)
    thetas, _ = monte_carlo_ntk(net, x, 1500)
    var, error = variance_with_error(thetas)
    assert abs(var - float(stats.ntk_variance)) < 3.5 * error
    # negative control: B counted twice (A + 4B) is rejected by the same Monte Carlo
    wrong = float((stats.ntk_A[-1] + 4 * stats.ntk_B[-1]) / stats.widths[-1])
    assert abs(var - wrong) > 5 * error


CASES = [  # (activation, W_std, b_std, depth, width, samples)
    (nk.Tanh(), 1.5, 0.0, 4, 128, 3000),
    (nk.Erf(), 1.0, 0.1, 3, 64, 3000),
    (nk.Gelu(), 1.0, 0.0, 4, 512, 2000),
]


@pytest.mark.slow
@pytest.mark.parametrize("activation, w_std, b_std, depth, width, samples", CASES,
                         ids=["tanh", "erf", "gelu"])
def test_variance_and_mean_shifts_agree_with_monte_carlo(activation, w_std, b_std, depth, width, samples):
    net = nk.mlp(depth, width, W_std=w_std, b_std=b_std, activation=activation)
    x = unit_norm_inputs(1)
    stats = finite_width(net, x)
    thetas, squares = monte_carlo_ntk(net, x, samples)
    var, error = variance_with_error(thetas)
    assert abs(var - float(stats.ntk_variance)) < 4 * error
    n = stats.widths[-1]
    for sample, infinite, shift in ((thetas, stats.ntk[-1], stats.ntk_shift[-1]),
                                    (squares, stats.nngp[-1], stats.nngp_shift[-1])):
        se = float(sample.std() / math.sqrt(samples))
        assert abs(float(sample.mean()) - float(infinite + shift / n)) < 4 * se


@pytest.mark.slow
def test_the_prediction_error_shrinks_as_one_over_n_squared():
    """GELU at W_std = 1 has large next-order terms: the leading-order variance is 25 % low at
    n = 128 and about 4x closer at n = 512 (relative error ∝ 1/n, absolute ∝ 1/n²); the mean
    shift moves E Θ̂ away from the infinite-width Θ by 4 standard errors at n = 128."""
    x = unit_norm_inputs(1)
    relative = {}
    for width, samples in ((128, 3000), (512, 2000)):
        net = nk.mlp(4, width, W_std=1.0, b_std=0.0, activation=nk.Gelu())
        stats = finite_width(net, x)
        thetas, _ = monte_carlo_ntk(net, x, samples)
        var, error = variance_with_error(thetas)
        predicted = float(stats.ntk_variance)
        relative[width] = ((var - predicted) / predicted, error / predicted)
    (gap_small, err_small), (gap_large, err_large) = relative[128], relative[512]
    assert gap_small > 5 * err_small                       # resolved at n = 128
    ratio = gap_small / gap_large
    ratio_error = ratio * math.hypot(err_small / gap_small, err_large / gap_large)
    assert abs(ratio - 4) < 3 * ratio_error and ratio > 2   # 1/n, not 1/sqrt(n) or constant


@pytest.mark.slow
@pytest.mark.parametrize("depth, width, samples", [(1, 16, 4000), (2, 64, 6000)], ids=["L1", "L2"])
def test_ntk_covariance_over_four_inputs_agrees_with_monte_carlo(depth, width, samples):
    """Cov[Θ̂(x_a, x_b), Θ̂(x_c, x_d)] over four inputs, every pattern of sample indices (one, two,
    three and four distinct inputs). One hidden layer is exact at any width (sums of n i.i.d.
    units); two test the propagation of V, A, B, D and F. Negative control: pairing B's sample
    indices as A's, (A_(ab)(cd) + B_(ab)(cd) + B_(ab)(dc)) / n, is rejected."""
    from ntklab.lab.studies.finite_width import ntk_covariance_statistics
    net = nk.mlp(depth, width, W_std=1.5, b_std=0.1, activation=nk.Tanh())
    x = unit_norm_inputs(4, d=5)
    rows = ntk_covariance_statistics(net, x, samples, first_seed=11)
    assert len(rows) == 8 and max(abs(r["z"]) for r in rows) < 4
    stats = finite_width(net, x)
    a, b = stats.ntk_A[-1], stats.ntk_B[-1]
    wrong = ((a + b + b.permute(0, 1, 3, 2)) / width).numpy()
    z_wrong = [abs(r["monte_carlo"] - wrong[r["indices"]]) / r["se"]
               for r in rows]
    assert max(z_wrong) > 10


@pytest.mark.slow
def test_the_dntk_output_correlation_and_the_ddntk_mean_are_one_over_n():
    """n E[ddĤ] of a critical tanh MLP is the same at n = 32 and 128 (within the Monte Carlo
    error), not growing like √n as an O(1/√n) quantity's would (a factor 2 here)."""
    from ntklab.lab.studies.finite_width import CRITICAL_TANH, hierarchy_moments
    x = torch.ones(1, 3, dtype=torch.float64)
    scaled = {width: {k: width * float(v[0, 0, 0, 0]) for k, v in
                      hierarchy_moments(nk.mlp(2, width, **CRITICAL_TANH), x, 300).items()}
              for width in (32, 128)}
    for name in ("dntk_output", "ddntk"):
        small, large = scaled[32], scaled[128]
        assert abs(large[name] - small[name]) < 3 * math.hypot(small[name + "_se"], large[name + "_se"]), name
    assert 0.7 < scaled[128]["ddntk"] / scaled[32]["ddntk"] < 1.4
    assert scaled[128]["ddntk"] < -10 * scaled[128]["ddntk_se"]     # resolved: not zero
