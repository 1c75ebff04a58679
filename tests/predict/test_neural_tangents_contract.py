"""neural-tangents code ports line by line (issue 29): the predictions return what
neural-tangents 0.6.5's `predict` returns (read from its predict.py and checked by running it):

* `gradient_descent_mse_ensemble`'s predict: `get=("nngp", "ntk")` (or None) gives a named tuple
  "Gaussians" with fields in `get`'s order, `compute_cov=True` gives `Gaussian(mean, covariance)`;
* `gradient_descent_mse` / `gradient_descent`'s predict: `fx_train_t` alone without `fx_test_0`,
  `fx_test_t` alone with `fx_train_0=None`, the pair when both are asked for;
* `gp_inference`'s predict: the mean alone, `Gaussian` with `k_test_test`, the training set
  (y_train, covariance 0) without `k_test_train`.

Values against neural-tangents' stored predictions (tests/data/neural_tangents) and closed forms."""
import numpy as np
import pytest
import scipy.linalg
import torch

import ntklab as nk
from ntklab import predict


def fc_net(case):
    """The ReLU network of the `pred/0` reference case."""
    dense = lambda width: nk.Dense(width, case["W_std"], case["b_std"], case["parameterization"])  # noqa: E731
    return nk.serial(*[layer for _ in range(case["hidden_layers"]) for layer in (dense(512), nk.Relu())],
                     dense(1))


@pytest.fixture(scope="module")
def ensemble(reference):
    cases, z = reference
    case = cases["pred/0"]
    assert case["activation"] == "relu", case   # what fc_net builds
    predictor = predict.gradient_descent_mse_ensemble(
        fc_net(case), z["pred/x_train"], z["pred/y_train"], diag_reg=case["diag_reg"],
        learning_rate=case["learning_rate"])
    return predictor, z


def test_ensemble_get_tuple_is_a_named_tuple_of_gaussians(ensemble):
    predictor, z = ensemble
    result = predictor(1.0, z["pred/x_test"], ("ntk", "nngp"), compute_cov=True)
    assert type(result).__name__ == "Gaussians" and result._fields == ("ntk", "nngp")   # get's order
    for g in ("ntk", "nngp"):
        gaussian = getattr(result, g)
        assert isinstance(gaussian, predict.Gaussian) and gaussian._fields == ("mean", "covariance")
        np.testing.assert_allclose(gaussian.mean.numpy(), z[f"pred/0/{g}_mean_t1.0"], rtol=0, atol=1e-10)
        np.testing.assert_allclose(gaussian.covariance.numpy(), z[f"pred/0/{g}_cov_t1.0"], rtol=0, atol=1e-10)
        assert result[g] is gaussian                        # today's result["ntk"] still reads
    mean, cov = result.nngp                                 # and a Gaussian unpacks
    assert mean is result.nngp.mean and cov is result.nngp.covariance
    ntk, nngp = result                                      # the named tuple unpacks in get's order
    assert ntk is result.ntk and nngp is result.nngp
    with pytest.raises(KeyError, match=r"'NTK': this prediction holds \('ntk', 'nngp'\)"):
        result["NTK"]


def test_ensemble_get_none_and_means(ensemble):
    predictor, z = ensemble
    means = predictor(None, z["pred/x_test"])               # get=None: both, as neural-tangents
    assert means._fields == ("nngp", "ntk")
    for g in ("nngp", "ntk"):
        np.testing.assert_allclose(getattr(means, g).numpy(), z[f"pred/0/{g}_mean_tinf"], rtol=0, atol=1e-10)
    single = predictor(10.0, z["pred/x_test"], "ntk", compute_cov=True)
    assert isinstance(single, predict.Gaussian)
    np.testing.assert_allclose(single.covariance.numpy(), z["pred/0/ntk_cov_t10.0"], rtol=0, atol=1e-10)
    one = predictor(10.0, z["pred/x_test"], ["nngp"])       # a list of one name: still a named tuple
    assert one._fields == ("nngp",)
    np.testing.assert_allclose(one.nngp.numpy(), z["pred/0/nngp_mean_t10.0"], rtol=0, atol=1e-10)


@pytest.fixture(scope="module")
def finite(reference_v2):
    cases, z = reference_v2
    arrays = {k: torch.tensor(v) for k, v in z.items() if k.startswith("pred/")}
    return cases["pred/finite"], arrays


def inputs(arrays):
    return [arrays[f"pred/{name}"] for name in ("k_train_train", "k_test_train", "y_train", "fx_train_0",
                                                 "fx_test_0")]


def cross_entropy(fx, y):
    return -(torch.log_softmax(fx, -1) * y).sum(-1).mean()


def test_gradient_descent_mse_without_test_set_returns_the_train_outputs(finite):
    case, arrays = finite
    k, k_td, y, f0, f0_test = inputs(arrays)
    mse = predict.gradient_descent_mse(k, y, learning_rate=case["learning_rate"], diag_reg=case["diag_reg"])
    for t, key in ((1.0, "1.0"), (None, "inf")):
        train = mse(t, f0)
        assert isinstance(train, torch.Tensor) and train.shape == y.shape
        torch.testing.assert_close(train, arrays[f"pred/finite/mse_train_t{key}"], rtol=0, atol=1e-10)
    # fx_train_0=None: the test outputs alone, with f_train(0) = 0 (neural-tangents' rhs = -y):
    # f_test(t) = f_test(0) + K_td G^-1 (I - e^{-c G t}) y, c = lr / |Y|, G = K + diag_reg mean(diag K) I
    test = mse(1.0, None, f0_test, k_td)
    assert isinstance(test, torch.Tensor)
    g = k.numpy() + case["diag_reg"] * np.trace(k.numpy()) / len(k) * np.eye(len(k))
    decay = scipy.linalg.expm(-case["learning_rate"] / y.numel() * g)
    expected = f0_test.numpy() + k_td.numpy() @ np.linalg.solve(g, (np.eye(len(k)) - decay) @ y.numpy())
    np.testing.assert_allclose(test.numpy(), expected, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="fx_train_0 and fx_test_0 are both None"):
        mse(1.0, None)


def test_gradient_descent_returns_what_neural_tangents_returns(finite):
    case, arrays = finite
    k, k_td, y, f0, f0_test = inputs(arrays)
    ode = predict.gradient_descent(cross_entropy, k, y, learning_rate=case["learning_rate"])
    train = ode([1.0, 10.0], f0)
    assert isinstance(train, torch.Tensor) and train.shape == (2,) + tuple(y.shape)
    for i, key in enumerate(("1.0", "10.0")):   # neural-tangents' odeint at its rtol = atol = 1.4e-8
        torch.testing.assert_close(train[i], arrays[f"pred/finite/ce_train_t{key}"], rtol=0, atol=5e-8)
    test = ode(1.0, None, f0_test, k_td)
    _, with_zero_train = ode(1.0, torch.zeros_like(y), f0_test, k_td)
    assert isinstance(test, torch.Tensor)
    torch.testing.assert_close(test, with_zero_train, rtol=0, atol=1e-12)


def test_gp_inference_returns_the_mean_or_a_gaussian():
    rng = np.random.default_rng(5)
    points = rng.normal(size=(9, 2))
    kernel = torch.from_numpy(np.exp(-((points[:, None] - points[None]) ** 2).sum(-1)))
    y = torch.from_numpy(rng.normal(size=(6, 2)))
    gp = predict.gp_inference(kernel[:6, :6], y, diag_reg=1e-3, diag_reg_absolute_scale=True)
    gram = kernel[:6, :6].numpy() + 1e-3 * np.eye(6)
    mean = gp(kernel[6:, :6])
    assert isinstance(mean, torch.Tensor)
    np.testing.assert_allclose(mean.numpy(), kernel[6:, :6].numpy() @ np.linalg.solve(gram, y.numpy()),
                               rtol=0, atol=1e-12)
    posterior = gp(kernel[6:, :6], kernel[6:, 6:])
    assert isinstance(posterior, predict.Gaussian)
    expected = kernel[6:, 6:].numpy() - kernel[6:, :6].numpy() @ np.linalg.solve(gram, kernel[:6, 6:].numpy())
    np.testing.assert_allclose(posterior.covariance.numpy(), expected, rtol=0, atol=1e-12)
    # no k_test_train: the training set, unregularized (neural-tangents: N(y_train, 0))
    torch.testing.assert_close(gp(), y, rtol=0, atol=0)
    train = gp(None, True)
    assert isinstance(train, predict.Gaussian)
    torch.testing.assert_close(train.mean, y, rtol=0, atol=0)
    torch.testing.assert_close(train.covariance, torch.zeros(6, 6, dtype=torch.float64), rtol=0, atol=0)
    for ported in (lambda: gp("nngp", kernel[6:, :6], kernel[6:, 6:]),   # neural-tangents' (get, k_td, k_tt)
                   lambda: gp(get="nngp", k_test_train=kernel[6:, :6])):
        with pytest.raises(ValueError, match=r"get='nngp': .* is predict\(k_test_train, k_test_test\) here"):
            ported()


def test_a_tensor_valued_kernel_fn_serves_one_kernel_and_the_ntk_covariance_is_refused():
    """kernel_fn returning one tensor: the mean uses it as the NTK (= the architecture's NTK mean); the NTK
    covariance, which needs the NNGP too, was computed with the same tensor as the NNGP (0.58 off): refused."""
    import ntklab as nk
    net = nk.mlp(2, 16, W_std=1.5, b_std=0.1)
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.sin(x[:, :1])
    predict = nk.predict.gradient_descent_mse_ensemble(lambda a, b: net.kernel(a, b, get="ntk"), x[:6], y[:6])
    exact = nk.predict.gradient_descent_mse_ensemble(net, x[:6], y[:6])
    torch.testing.assert_close(predict(t=2.0, x_test=x[6:], get="ntk"), exact(t=2.0, x_test=x[6:], get="ntk"))
    with pytest.raises(ValueError, match="needs the NNGP and the NTK, but kernel_fn returns one tensor"):
        predict(t=2.0, x_test=x[6:], get="ntk", compute_cov=True)
