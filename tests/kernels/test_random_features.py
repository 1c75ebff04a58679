"""Random features of the NNGP and NTK of ReLU networks (`nk.kernels.RandomFeatures`) and ridge
regression on them (`nk.predict.feature_regression`).  Oracles: the exact kernels (`net.kernel`), the
Monte Carlo standard error of the mean over independent draws, the 1/m variance of a mean of m i.i.d.
terms, and exact kernel ridge regression (`nk.predict.solve`) on the exact and on the features' kernel."""
import numpy as np
import pytest
import torch

import ntklab as nk
from ntklab.kernels import RandomFeatures
from ntklab.predict import feature_regression

X = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def draws(net, get, features, count):
    """phi . phi' for `count` independent draws (seeds 0 .. count-1), [count, 5, 5]."""
    return torch.stack([(lambda phi: phi @ phi.T)(RandomFeatures(net, 3, features=features, get=get, seed=seed)(X))
                        for seed in range(count)])


def largest_z(net, get, features, count):
    """max over pairs of |mean over draws - exact kernel| / (standard error of the mean)."""
    k = draws(net, get, features, count)
    return float(((k.mean(0) - net.kernel(X, get=get)) / (k.std(0) / count ** 0.5)).abs().max())


@pytest.mark.parametrize("get", ["nngp", "ntk"])
def test_one_relu_layer_features_are_unbiased(get):
    """With one ReLU layer E[phi . phi'] is the kernel exactly: the mean of 1000 draws of 16 features is
    within 4 standard errors of it at all 15 pairs (4 s.e.: a false alarm among 15 pairs ~ 1e-3)."""
    assert largest_z(nk.mlp(1, 512, W_std=1.4, b_std=0.1), get, 16, 1000) < 4


def test_the_same_check_detects_the_finite_width_bias_of_deeper_features():
    """Negative control, and the bias the docstring states: with 3 ReLU layers each layer's arc-cosine is
    taken of a random kernel estimate, so E[phi . phi'] is off by O(1/m); at m = 8 the same 1000 draws put
    the mean more than 4 standard errors from the NNGP."""
    assert largest_z(nk.mlp(3, 512, W_std=1.4, b_std=0.1), "nngp", 8, 1000) > 4


def relative_rms(net, get, features, count, kernel=None):
    """Root mean square over draws of ||phi phi^T - K||_F / ||K||_F."""
    kernel = net.kernel(X, get=get) if kernel is None else kernel
    return float(((draws(net, get, features, count) - kernel).flatten(1).norm(dim=1) / kernel.norm())
                 .square().mean().sqrt())


@pytest.mark.parametrize("get", ["nngp", "ntk"])
def test_one_draws_error_falls_like_one_over_sqrt_features(get):
    """One ReLU layer: phi . phi' is a mean of m i.i.d. terms, so its RMS error is c / sqrt(m) exactly;
    16 x the features divide it by 4 (+-20 %: the RMS of 200 draws has ~5 % sampling error).  Negative
    control: against a kernel 10 % off, the error stops falling."""
    shallow = nk.mlp(1, 512, W_std=1.4, b_std=0.1)
    assert 3.2 < relative_rms(shallow, get, 64, 200) / relative_rms(shallow, get, 1024, 200) < 4.8
    wrong = 1.1 * shallow.kernel(X, get=get)
    assert relative_rms(shallow, get, 64, 200, wrong) / relative_rms(shallow, get, 1024, 200, wrong) < 3.2


@pytest.mark.parametrize("get", ["nngp", "ntk"])
def test_deep_features_error_falls_like_one_over_sqrt_features(get):
    """Three ReLU layers: the O(1/m) bias is small next to the O(1/sqrt(m)) spread, so 4 x the features
    halve the RMS error (+-25 %, 60 draws)."""
    deep = nk.mlp(3, 512, W_std=1.4, b_std=0.1)
    assert 1.5 < relative_rms(deep, get, 64, 60) / relative_rms(deep, get, 256, 60) < 2.5


def test_dense_layers_without_bias_or_training_and_stacked_are_exact_on_features():
    """Dense layers are linear in the kernels: with no ReLU the features' kernel equals the exact one to
    rounding, including consecutive Dense layers, no bias and an untrained layer (NTK term left out)."""
    net = nk.serial(nk.Dense(8, W_std=1.3, b_std=0.2), nk.Dense(8, W_std=0.7, trainable=False),
                    nk.Dense(1, W_std=1.1, b_std=0.5))
    for get in ("nngp", "ntk"):
        phi = RandomFeatures(net, 3, features=4, get=get)(X)
        np.testing.assert_allclose(phi @ phi.T, net.kernel(X, get=get), rtol=1e-13, atol=1e-15)
    untrained_first = nk.serial(nk.Dense(8, W_std=1.3, trainable=False), nk.Relu(), nk.Dense(1, W_std=1.1))
    assert largest_z(untrained_first, "ntk", 16, 400) < 4


@pytest.mark.parametrize("net, match", [
    (nk.serial(nk.Dense(8), nk.Erf(), nk.Dense(1)), "layer 1 is Erf"),
    (nk.serial(nk.Dense(8), nk.LeakyRelu(0.1), nk.Dense(1)), "layer 1 is LeakyRelu"),
    (nk.serial(nk.Relu(), nk.Dense(1)), "layer 0 \\(Relu\\) must follow a Dense"),
    (nk.serial(nk.Dense(8), nk.Relu(), nk.Relu(), nk.Dense(1)), "layer 2 \\(Relu\\) must follow a Dense"),
    (nk.mlp(2, 8, parameterization="standard"), "layer 0 .*'standard' parameterization"),
    (nk.serial(nk.Conv(4, (3, 3)), nk.Relu(), nk.Flatten(), nk.Dense(1)), "layer 0 is Conv"),
])
def test_architectures_other_than_dense_relu_chains_are_refused_naming_the_layer(net, match):
    with pytest.raises(ValueError, match=match):
        RandomFeatures(net, 3)


@pytest.mark.parametrize("features", [0, -3, 2.5, True, None])
def test_a_bad_number_of_features_is_refused(features):
    with pytest.raises(ValueError, match="features"):
        RandomFeatures(nk.mlp(1, 8), 3, features=features)


def test_inputs_of_another_dimension_are_refused():
    phi = RandomFeatures(nk.mlp(1, 8), 3, features=8)
    with pytest.raises(ValueError, match="in_features=3"):
        phi(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="get"):
        RandomFeatures(nk.mlp(1, 8), 3, get="both")


@pytest.fixture(scope="module")
def task():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(150, 4, generator=generator, dtype=torch.float64)
    y = torch.stack([torch.sin(x[:, 0]), x[:, 1] * x[:, 2]], 1)
    return x, y


def test_feature_regression_is_kernel_ridge_regression_on_the_features_kernel(task):
    """Push-through identity: phi(x)^T (Phi^T W Phi + lambda I)^-1 Phi^T W y = K_x (K + lambda W^-1)^-1 y with
    K = Phi Phi^T, lambda relative to its (weighted) mean diagonal; the dense weighted solve is the oracle."""
    x, y = task
    phi = RandomFeatures(nk.mlp(2, 8, b_std=0.1), 4, features=64, get="ntk", seed=3)
    weights = torch.linspace(0.5, 2.0, len(x), dtype=torch.float64)
    model = feature_regression(phi, x, y, diag_reg=1e-2, sample_weight=weights, block_size=40)
    k = phi(x) @ phi(x).T
    shift = 1e-2 * float((weights * k.diagonal()).sum() / weights.sum())
    expected = k @ torch.linalg.solve(k + shift * torch.diag(1 / weights), y)
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-8, atol=1e-10)
    assert model.relative_residual.max() < 1e-12
    assert feature_regression(phi, x, y[:, 0], diag_reg=1e-2).predict(x[:3]).shape == (3,)
    unweighted = feature_regression(phi, x, y, diag_reg=1e-2).predict(x)
    assert float((unweighted - expected).norm() / expected.norm()) > 1e-3   # the weights matter


def test_feature_regression_approaches_exact_kernel_regression_as_features_grow(task):
    """Held-out predictions of ridge on the random NTK features -> exact NTK ridge regression: the error is
    first order in the kernel's, ~ m^-1/2, so the log-log slope of the relative error (mean of 3 draws) over
    m = 32, 128, 512 is -1/2 +- 1/4 (measured -0.41; 0.14 at m = 512).  Negative control: measured against
    the regression with 10 x the ridge the error does not fall (slope > -1/4)."""
    x, y = task
    x_test = torch.randn(50, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    net = nk.mlp(2, 8, b_std=0.1)
    k, k_test = net.kernel(x, get="ntk"), net.kernel(x_test, x, get="ntk")
    models = {m: [feature_regression(RandomFeatures(net, 4, features=m, seed=seed), x, y, diag_reg=1.0)
                  for seed in range(3)] for m in (32, 128, 512)}

    def slope(diag_reg):
        exact = k_test @ nk.predict.solve(k, y, diag_reg=diag_reg)
        errors = [np.mean([float((model.predict(x_test) - exact).norm() / exact.norm()) for model in draws])
                  for draws in models.values()]
        return np.polyfit(np.log(list(models)), np.log(errors), 1)[0]

    assert -0.75 < slope(1.0) < -0.25
    assert slope(10.0) > -0.25


def test_feature_regression_refuses_bad_inputs_before_computing_features(task):
    x, y = task
    calls = []

    def phi(batch):
        calls.append(len(batch))
        return batch

    with pytest.raises(ValueError, match="diag_reg"):
        feature_regression(phi, x, y, diag_reg=-1)
    with pytest.raises(ValueError, match="sample_weight"):
        feature_regression(phi, x, y, sample_weight=torch.zeros(len(x)))
    with pytest.raises(ValueError, match="y_train"):
        feature_regression(phi, x, y[:10])
    assert calls == []
    with pytest.raises(ValueError, match="feature_map"):
        feature_regression("phi", x, y)
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        feature_regression(lambda batch: batch[:, 0], x, y)
    with pytest.raises(ValueError, match="singular.*diag_reg > 0"):   # 10 identical features, diag_reg 0
        feature_regression(lambda batch: batch[:, :1].repeat(1, 10), x, y, diag_reg=0.0)
