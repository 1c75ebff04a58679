"""Kernel regression, GD on alpha and ensemble predictions against independent computations."""
import numpy as np
import pytest
import scipy.linalg
import torch

import ntklab as nk
from ntklab import predict

G = torch.Generator().manual_seed(0)
X = torch.randn(12, 3, generator=G, dtype=torch.float64)
Y = torch.randn(12, 2, generator=G, dtype=torch.float64)
X_TEST = torch.randn(5, 3, generator=G, dtype=torch.float64)
NET = nk.serial(nk.Dense(256, 1.5, 0.1), nk.Relu(), nk.Dense(1, 1.5, 0.1))


def test_solve_interpolates_and_ridge_matches_numpy():
    k = nk.kernels.GaussianKernel(1.0)(X)
    alpha = predict.solve(k, Y)
    torch.testing.assert_close(k @ alpha, Y, rtol=0, atol=1e-10)
    ridge = predict.solve(k, Y, diag_reg=0.1, diag_reg_absolute_scale=True)
    expected = np.linalg.solve(k.numpy() + 0.1 * np.eye(12), Y.numpy())
    np.testing.assert_allclose(ridge.numpy(), expected, rtol=1e-10)


def test_singular_kernel_error_suggests_diag_reg_and_lu_handles_indefinite():
    k = nk.kernels.LinearKernel()(X)  # rank 3 < 12
    with pytest.raises(ValueError, match="diag_reg"):
        predict.solve(k, Y)
    ball = nk.kernels.BallKernel(1.5)(X)
    if torch.linalg.eigvalsh(ball)[0] < 0 and abs(torch.linalg.det(ball)) > 1e-8:
        alpha = predict.solve(ball, Y, assume_psd=False)
        torch.testing.assert_close(ball @ alpha, Y, rtol=0, atol=1e-9)


@pytest.mark.parametrize("space", ["alpha", "function"])
def test_gradient_descent_iterates_follow_closed_form_and_identity(space):
    k = nk.kernels.GaussianKernel(1.5)(X)
    k_test = nk.kernels.GaussianKernel(1.5)(X_TEST, X)
    path = predict.gradient_descent_alpha(k, Y, steps=50, k_test_train=k_test, space=space, record=range(51))
    rate = path.learning_rate / Y.numel()   # the step on ||K alpha - y||^2 / (2 |y|)
    step_matrix = rate * (k @ k if space == "alpha" else k)
    for t in (1, 10, 50):  # alpha_t = sum_{s<t} (I - c M)^s c [K] y, i.e. the linear recursion
        alpha_star = torch.linalg.solve(k, Y)
        expected = alpha_star + torch.linalg.matrix_power(torch.eye(12, dtype=k.dtype) - step_matrix, t) @ (-alpha_star)
        torch.testing.assert_close(path.alpha[t], expected, rtol=0, atol=1e-9)
    tangent = k_test @ k if space == "alpha" else k_test
    for t in range(10):
        change = path.f_test[t + 1] - path.f_test[t]
        torch.testing.assert_close(change, -rate * tangent @ (path.f_train[t] - Y), rtol=0, atol=1e-13)
    assert path.loss[-1] < path.loss[0]


def test_gradient_descent_converges_to_interpolant():
    k = nk.kernels.GaussianKernel(0.8)(X)
    path = predict.gradient_descent_alpha(k, Y[:, 0], steps=4000, space="function",
                                          record=[0, 1000, 2000, 3000, 4000])
    torch.testing.assert_close(path.alpha[-1], predict.solve(k, Y[:, 0]), rtol=0, atol=1e-8)
    assert path.steps.tolist() == [0, 1000, 2000, 3000, 4000]
    counted = predict.gradient_descent_alpha(k, Y[:, 0], steps=4000, space="function", record=5)
    assert counted.steps.tolist() == [0, 1, 8, 63, 503, 4000]   # a count: round(4000^(k/4)), as in train


def test_ensemble_train_set_mean_matches_matrix_exponential():
    """Train-set mean f_t = (I - exp(-lr Theta t / n)) y, via scipy.linalg.expm."""
    predictor = predict.gradient_descent_mse_ensemble(NET, X, Y, learning_rate=0.7)
    theta = NET.kernel(X).ntk.numpy()
    for t in (0.5, 20.0):
        expected = (np.eye(12) - scipy.linalg.expm(-0.7 * theta * t / Y.numel())) @ Y.numpy()
        np.testing.assert_allclose(predictor(t, None, "ntk").numpy(), expected, atol=1e-10)


def test_ensemble_limits_at_zero_and_infinite_time():
    predictor = predict.gradient_descent_mse_ensemble(NET, X, Y, diag_reg=1e-3)
    kernel = NET.kernel(X_TEST)
    mean0, cov0 = predictor(0.0, X_TEST, "ntk", compute_cov=True)
    torch.testing.assert_close(mean0, torch.zeros_like(mean0), rtol=0, atol=1e-12)
    torch.testing.assert_close(cov0, kernel.nngp, rtol=0, atol=1e-10)   # prior at initialization
    late = predictor(1e9, X_TEST, ("nngp", "ntk"), compute_cov=True)
    final = predictor(None, X_TEST, ("nngp", "ntk"), compute_cov=True)
    for g in ("nngp", "ntk"):
        torch.testing.assert_close(late[g][0], final[g][0], rtol=0, atol=1e-8)
        torch.testing.assert_close(late[g][1], final[g][1], rtol=0, atol=1e-8)
    many = predictor(np.array([[0.0, 1.0], [2.0, 3.0]]), X_TEST, "ntk")
    assert many.shape == (2, 2, 5, 2)
    torch.testing.assert_close(many[1, 0], predictor(2.0, X_TEST, "ntk"))


def test_ensemble_accepts_classical_kernel_functions():
    gaussian = nk.kernels.GaussianKernel(1.0)
    predictor = predict.gradient_descent_mse_ensemble(gaussian, X, Y[:, 0])
    mean = predictor(None, X_TEST, "ntk")
    expected = predict.kernel_regression(gaussian(X), Y[:, 0], gaussian(X_TEST, X))
    torch.testing.assert_close(mean, expected, rtol=0, atol=1e-10)
    assert mean.shape == (5,)


def test_ensemble_bad_inputs():
    with pytest.raises(ValueError, match="y_train"):
        predict.gradient_descent_mse_ensemble(NET, X, Y[:5])
    predictor = predict.gradient_descent_mse_ensemble(NET, X, Y)
    with pytest.raises(ValueError, match="x_test"):
        predictor(1.0, torch.randn(3, 4))
    with pytest.raises(ValueError, match="t must be"):
        predictor(-1.0, X_TEST)
    with pytest.raises(ValueError, match="get"):
        predictor(1.0, X_TEST, "nngpp")
