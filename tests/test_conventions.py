"""One convention for time and learning rate (ntklab.conventions): the theory flows agree with
`nk.predict` and `nk.train` at the same t and learning_rate (issue 28: ensemble_mean_flow and
gradient_descent_mse_ensemble differed in time units by |Y|)."""
import pytest
import torch

import ntklab as nk
from ntklab.conventions import flow_times, mean_squared_loss

G = torch.Generator().manual_seed(0)
X = torch.randn(5, 3, generator=G, dtype=torch.float64)
Y = torch.sin(2 * X[:3, 0])


def test_the_ensemble_mean_flow_at_infinite_width_is_the_ntk_ensemble_prediction():
    # Erf: both sides' NTK in closed form (Tanh's default 256-node quadrature is 1.5e-6 off)
    net = nk.mlp(1, 64, W_std=1.5, b_std=0.3, activation=nk.Erf())
    times, rate = [0.5, 4.0], 0.7
    ensemble = nk.ensemble_mean_flow(net, X[:2], Y[:2], X[2:3], times, learning_rate=rate)
    predict = nk.predict.gradient_descent_mse_ensemble(net, X[:2], Y[:2, None], learning_rate=rate)
    mean = predict(t=times, x_test=X[2:3], get="ntk")        # compute_cov=False: the mean
    torch.testing.assert_close(ensemble.kernel, mean.reshape(ensemble.kernel.shape), rtol=1e-9, atol=1e-12)
    assert torch.equal(ensemble.times, torch.tensor(times, dtype=torch.float64))
    # negative control: the book's time (unit rate on 1/2 sum) is another prediction
    book = predict(t=[2 * t for t in times], x_test=X[2:3], get="ntk")   # |Y| = 2
    assert (ensemble.kernel - book.reshape(ensemble.kernel.shape)).abs().max() > 1e-3


def test_the_nearly_kernel_flow_frozen_kernel_part_is_gradient_descent_mse():
    model = nk.mlp(2, 32, activation=nk.Tanh()).module(3, seed=1, dtype=torch.float64)
    h = nk.ntk_hierarchy(model, X[:3], X[3:])
    times, rate = [0.3, 2.0, 9.0], 1.7
    kernel = nk.nearly_kernel_flow(h, Y, times, learning_rate=rate)["kernel"]
    train, test = nk.predict.gradient_descent_mse(h.ntk[:3], Y, learning_rate=rate)(
        times, h.output[:3], h.output[3:], h.ntk[3:])
    torch.testing.assert_close(kernel, test, rtol=1e-9, atol=1e-11)


def test_train_gradient_flow_is_the_limit_of_nk_train_at_the_same_time():
    """GD for t = 400 steps of 0.005 (learning_rate 0.005) against the flow at t = 400 with
    that learning rate: Euler's global error O(learning_rate) ~ 1e-3 relative; the other units
    (t / |Y| or t |Y|) are off by O(1)."""
    model = nk.mlp(1, 32, activation=nk.Tanh()).module(3, seed=2, dtype=torch.float64)
    flow = nk.train_gradient_flow(model, X[:3], Y, [400.0], X[3:], learning_rate=0.005)[0]
    start = model(X[3:])[:, 0].detach()
    nk.train(model, X[:3], Y[:, None], steps=400, learning_rate=0.005, progress=False, track_kernel=False)
    stepped = model(X[3:])[:, 0].detach()
    assert (stepped - flow).abs().max() < 2e-2 * (flow - start).abs().max()


def test_flow_times_and_the_loss():
    assert flow_times([1.0, 3.0], 2.0, 4).tolist() == [0.5, 1.5]
    f, y = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.zeros(2, 2)
    assert float(mean_squared_loss(f, y)) == pytest.approx(30 / 8)
    for bad in ([0.0, 1.0], [2.0, 1.0], [float("inf")], []):
        with pytest.raises(ValueError, match="times|t must be finite"):
            flow_times(bad, 1.0, 3)
    with pytest.raises(ValueError, match="t must be finite"):
        nk.predict.gradient_descent_mse_ensemble(nk.mlp(1, 8), X[:3], Y[:, None])(t=float("inf"), x_test=X[3:])
