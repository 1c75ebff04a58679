"""Predictions on finite kernels against neural-tangents (`pred/finite` of the second
reference set), closed forms and the ODE solver's own convergence."""
import numpy as np
import pytest
import scipy.linalg
import torch

from ntklab import predict


@pytest.fixture(scope="module")
def finite(reference_v2):
    """`pred/finite` of the second set: (case, its arrays as tensors, copies)."""
    cases, z = reference_v2
    return cases["pred/finite"], {k: torch.tensor(v) for k, v in z.items() if k.startswith("pred/")}


def inputs(arrays):
    return [arrays[f"pred/{name}"] for name in ("k_train_train", "k_test_train", "y_train", "fx_train_0",
                                                 "fx_test_0")]


def cross_entropy(fx, y):
    return -(torch.log_softmax(fx, -1) * y).sum(-1).mean()


def test_gradient_descent_mse_matches_neural_tangents(finite):
    case, arrays = finite
    k, k_td, y, f0, f0_test = inputs(arrays)
    mse = predict.gradient_descent_mse(k, y, learning_rate=case["learning_rate"], diag_reg=case["diag_reg"])
    for t, key in ((1.0, "1.0"), (10.0, "10.0"), (None, "inf")):
        train, test = mse(t, f0, f0_test, k_td)
        torch.testing.assert_close(train, arrays[f"pred/finite/mse_train_t{key}"], rtol=0, atol=1e-10)
        torch.testing.assert_close(test, arrays[f"pred/finite/mse_test_t{key}"], rtol=0, atol=1e-10)
    both = mse(np.array([[1.0], [10.0]]), f0)          # any array of times, one eigendecomposition
    assert both.shape == (2, 1, 20, 3)
    torch.testing.assert_close(both[1, 0], arrays["pred/finite/mse_train_t10.0"], rtol=0, atol=1e-10)
    assert predict.max_learning_rate(k, y.numel()) == pytest.approx(
        float(arrays["pred/finite/max_learning_rate"]), rel=1e-12)


def test_gradient_descent_with_cross_entropy_matches_neural_tangents(finite):
    """neural-tangents integrates with jax's odeint at its default rtol = atol = 1.4e-8, so its
    values carry errors of that size: ours, converged to 1e-13 (next test), agree to 5e-8."""
    case, arrays = finite
    k, k_td, y, f0, f0_test = inputs(arrays)
    ode = predict.gradient_descent(cross_entropy, k, y, learning_rate=case["learning_rate"])
    train, test = ode([1.0, 10.0], f0, f0_test, k_td)
    for i, key in enumerate(("1.0", "10.0")):
        torch.testing.assert_close(train[i], arrays[f"pred/finite/ce_train_t{key}"], rtol=0, atol=5e-8)
        torch.testing.assert_close(test[i], arrays[f"pred/finite/ce_test_t{key}"], rtol=0, atol=5e-8)


def test_the_ode_converges_and_reproduces_the_mse_closed_form(finite):
    _, arrays = finite
    k, k_td, y, f0, f0_test = inputs(arrays)
    times = [0.0, 3.0, 0.5, 20.0]                           # unsorted and with t = 0
    coarse = predict.gradient_descent(cross_entropy, k, y, 0.5, rtol=1e-10, atol=1e-10)(times, f0, f0_test, k_td)
    fine = predict.gradient_descent(cross_entropy, k, y, 0.5, rtol=1e-13, atol=1e-13)(times, f0, f0_test, k_td)
    for a, b in zip(coarse, fine, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)
    torch.testing.assert_close(coarse[0][0], f0, rtol=0, atol=0)
    mse_loss = lambda fx, target: 0.5 * (fx - target).square().mean()   # noqa: E731
    closed = predict.gradient_descent_mse(k, y, 0.7)(times, f0, f0_test, k_td)
    by_ode = predict.gradient_descent(mse_loss, k, y, 0.7)(times, f0, f0_test, k_td)
    for a, b in zip(closed, by_ode, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


def test_momentum_follows_the_damped_oscillator_of_each_eigenmode():
    """MSE with momentum m: x'' = mu x' - (lambda / |Y|) x per eigenmode, x = v.(f - y), in units
    of sqrt(lr) with mu = (m - 1) / sqrt(lr); solved here by a 2x2 matrix exponential."""
    rng = np.random.default_rng(3)
    a = rng.normal(size=(6, 6))
    k = torch.from_numpy(a @ a.T + np.eye(6))
    y, f0 = torch.from_numpy(rng.normal(size=(6, 1))), torch.from_numpy(rng.normal(size=(6, 1)))
    lr, m, t = 0.3, 0.9, 4.0
    mse_loss = lambda fx, target: 0.5 * (fx - target).square().mean()   # noqa: E731
    (train,) = predict.gradient_descent(mse_loss, k, y, lr, momentum=m)([t], f0)
    evals, evecs = np.linalg.eigh(k.numpy())
    s, mu = lr ** 0.5, (m - 1) / lr ** 0.5
    x0 = evecs.T @ (f0 - y).numpy()[:, 0]
    x_t = [(scipy.linalg.expm(np.array([[0.0, 1.0], [-lam / 6, mu]]) * t * s) @ [x, 0.0])[0]
           for lam, x in zip(evals, x0, strict=True)]
    np.testing.assert_allclose(train.numpy()[:, 0], y.numpy()[:, 0] + evecs @ np.array(x_t), atol=1e-9)


def test_gp_inference_is_the_posterior():
    rng = np.random.default_rng(4)
    points = rng.normal(size=(9, 2))
    kernel = torch.from_numpy(np.exp(-((points[:, None] - points[None]) ** 2).sum(-1)))
    y = torch.from_numpy(rng.normal(size=6))
    mean, cov = predict.gp_inference(kernel[:6, :6], y, diag_reg=1e-3, diag_reg_absolute_scale=True)(
        kernel[6:, :6], kernel[6:, 6:])
    gram = kernel[:6, :6].numpy() + 1e-3 * np.eye(6)
    np.testing.assert_allclose(mean.numpy(), kernel[6:, :6].numpy() @ np.linalg.solve(gram, y.numpy()),
                               atol=1e-12)
    expected = kernel[6:, 6:].numpy() - kernel[6:, :6].numpy() @ np.linalg.solve(gram, kernel[:6, 6:].numpy())
    np.testing.assert_allclose(cov.numpy(), expected, atol=1e-12)
    # the same mean as gradient flow on the MSE run to t = infinity
    flow = predict.gradient_descent_mse(kernel[:6, :6], y, diag_reg=1e-3, diag_reg_absolute_scale=True)
    torch.testing.assert_close(flow(None, None, 0.0, kernel[6:, :6]), mean, rtol=0, atol=1e-12)


def test_bad_inputs_name_the_argument():
    k, y = torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="k_train_train must be a square"):
        predict.gradient_descent_mse(torch.ones(3, 2), y)
    with pytest.raises(ValueError, match="y_train must have shape"):
        predict.gradient_descent_mse(k, torch.zeros(4))
    mse = predict.gradient_descent_mse(k, y)
    with pytest.raises(ValueError, match="t must be finite and >= 0"):
        mse(-1.0)
    with pytest.raises(ValueError, match=r"fx_train_0 must have shape \(3, 1\)"):
        mse(1.0, torch.zeros(5))
    with pytest.raises(ValueError, match="k_test_train is not"):
        mse(1.0, 0.0, torch.zeros(2))
    with pytest.raises(ValueError, match=r"k_test_train must have shape \[N_test, 3\]"):
        mse(1.0, 0.0, torch.zeros(2), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="must return a scalar tensor"):
        predict.gradient_descent(lambda fx, target: fx - target, k, y)
    with pytest.raises(ValueError, match="t=None .* finite times"):
        predict.gradient_descent(cross_entropy, k, torch.eye(3))(None)
    exploding = lambda fx, target: torch.exp(-fx).sum() * 1e300   # noqa: E731
    with pytest.raises(RuntimeError, match="ODE solver failed at time"), np.errstate(all="ignore"):
        predict.gradient_descent(exploding, k, y, rtol=1e-12, atol=1e-300)(50.0)
