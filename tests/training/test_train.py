"""Trainer: GD steps, the linearized model, kernel/weight drift and wide-net laziness."""
import copy
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

import ntklab as nk


def small_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(12, 3, generator=g, dtype=torch.float64)
    y = torch.sin(x[:, :2])                                  # two outputs
    x_test = torch.randn(5, 3, generator=g, dtype=torch.float64)
    return x, y, x_test, torch.sin(x_test[:, :2])


def test_gd_step_and_linearized_model_against_parameter_space():
    """Two full-batch steps of w <- w - eta J^T (f - y) done by hand, for the net and
    for f_lin(w) = f(w0) + J0 (w - w0) with explicit Jacobians."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    x, y, x_test, y_test = small_problem()
    w0 = {k: v.detach().clone() for k, v in model.named_parameters()}
    eta, steps = 0.01, 2

    def f(params, inputs):
        return functional_call(model, params, (inputs,))

    def jac(inputs):   # [N, O, P] at w0
        j = vmap(jacrev(lambda p, xi: f(p, xi[None])[0]), in_dims=(None, 0))(w0, inputs)
        return torch.cat([v.flatten(2) for v in j.values()], 2)
    flat0 = torch.cat([v.flatten() for v in w0.values()])
    j_train, j_test = jac(x), jac(x_test)
    w, w_lin = {k: v.clone() for k, v in w0.items()}, flat0.clone()
    for _ in range(steps):
        grads = torch.func.grad(lambda p: 0.5 * (f(p, x) - y).square().sum())(w)
        w = {k: w[k] - eta * grads[k] for k in w}
        f_lin_train = f(w0, x) + j_train @ (w_lin - flat0)
        w_lin = w_lin - eta * torch.einsum("iap,ia->p", j_train, f_lin_train - y)
    expected_test = f(w, x_test)
    expected_lin = f(w0, x_test) + j_test @ (w_lin - flat0)

    # ntklab's loss is ||f - y||^2 / (2 |y|): learning rate |y| eta is the step eta on 1/2 sum
    history = nk.train(model, x, y, steps=steps, learning_rate=eta * y.numel(), x_test=x_test,
                       y_test=y_test, record=[0, steps])
    assert torch.allclose(history.test_predictions[-1], expected_test, rtol=0, atol=1e-12)
    assert torch.allclose(history.linear_test_predictions[-1], expected_lin, rtol=0, atol=1e-12)
    row0, row = history.rows
    assert row0["kernel_change"] == 0 and row0["weight_change"] == 0 and row0["lin_distance"] == 0
    w_now = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert math.isclose(row["weight_change"], float((w_now - flat0).norm() / flat0.norm()), rel_tol=1e-12)


def test_sgd_uses_rescaled_minibatch_loss():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x, y, _, _ = small_problem(1)
    history = nk.train(model, x, y, steps=300, learning_rate=0.01 * y.numel(), batch_size=4, record=3,
                       track_kernel=False, linearized=False, seed=1)
    loss = history.column("train_loss")
    assert history.steps[0] == 0 and history.steps[-1] == 300 and loss[-1] < 0.5 * loss[0]


def test_wider_networks_move_their_kernel_less():
    """Relative kernel and weight change after the same training shrink with width
    (lazy training; theory n^-1/2): the 16x wider net changes at least 2.5x less."""
    x, y, _, _ = small_problem(2)
    def net(n):
        return nk.serial(nk.Dense(n, W_std=1.5, b_std=0.1), nk.Relu(), nk.Dense(2, W_std=1.5))
    changes = {}
    for width in (64, 1024):
        model = net(width).module(in_shape=(3,), seed=0, symmetric=True, dtype=torch.float64)
        history = nk.train(model, x, y, steps=200, learning_rate=0.02 * y.numel(), record=[0, 200],
                           linearized=False)
        changes[width] = history.rows[-1]
    assert changes[64]["kernel_change"] > 2.5 * changes[1024]["kernel_change"]
    assert changes[64]["weight_change"] > 2.5 * changes[1024]["weight_change"]
    assert changes[1024]["train_loss"] < 1e-2 * 0.5 * float(y.square().mean())


def test_bad_input():
    model = nn.Linear(3, 2).double()
    x, y, _, _ = small_problem()
    with pytest.raises(ValueError, match="y_train must have shape"):
        nk.train(model, x, y[:5], steps=1, learning_rate=0.1)
    with pytest.raises(ValueError, match="model has 2 outputs"):
        nk.train(model, x, y[:, 0], steps=1, learning_rate=0.1)
    with pytest.raises(ValueError, match="batch_size=20 exceeds"):
        nk.train(model, x, y, steps=1, learning_rate=0.1, batch_size=20)
    with pytest.raises(ValueError, match="learning_rate"):
        nk.train(model, x, y, steps=1, learning_rate=-1)
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        nk.train(model, x * 1e3, y, steps=50, learning_rate=10.0 * y.numel(), record=50)


def test_any_optimizer_loss_and_data_loader():
    """Adam on cross-entropy over a DataLoader: the network and its linearization follow the
    same steps as an explicit loop with torch's optimizers."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    x = torch.randn(12, 3, dtype=torch.float64)
    y = nn.functional.one_hot(torch.arange(12) % 3).double()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)

    def cross_entropy(f, target):
        return -(torch.log_softmax(f, -1) * target).sum(-1).mean()
    adam = lambda p: torch.optim.Adam(p, lr=0.01)   # noqa: E731
    reference, reference_lin = copy.deepcopy(model), nk.linearize(model)
    history = nk.train(model, x, y, steps=9, optimizer=adam, loss=cross_entropy, batches=loader,
                       x_test=x[:5], record=[0, 9])
    optimizers = [adam(list(reference.parameters())), adam(list(reference_lin.parameters()))]
    batches = [b for _ in range(3) for b in loader]
    for xb, yb in batches[:9]:
        for net, opt in zip((reference, reference_lin), optimizers, strict=True):
            opt.zero_grad()
            cross_entropy(net(xb), yb).backward()
            opt.step()
    torch.testing.assert_close(history.test_predictions[-1], reference(x[:5]).detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(history.linear_test_predictions[-1], reference_lin(x[:5]).detach(),
                               rtol=0, atol=1e-12)
    assert history.rows[-1]["train_loss"] < history.rows[0]["train_loss"]
    assert history.rows[-1]["kernel_change"] > 0 and history.rows[-1]["lin_distance"] > 0
    with pytest.raises(ValueError, match="optimizer must be a function parameters"):
        nk.train(model, x, y, steps=1, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="give learning_rate"):
        nk.train(model, x, y, steps=1)


def test_the_two_linearizations_agree_for_gradient_descent_on_the_mse():
    """Default (function-space recursion with Theta_0) and an explicit SGD factory (an
    nk.linearize module trained alongside) give the same linearized predictions."""
    x, y, x_test, _ = small_problem(4)
    outputs = []
    for optimizer in (None, lambda p: torch.optim.SGD(p, lr=0.3)):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 2)).double()
        history = nk.train(model, x, y, steps=25, learning_rate=0.3, optimizer=optimizer,
                           x_test=x_test, record=[0, 25], batch_size=4, seed=2)
        outputs.append((history.test_predictions[-1], history.linear_test_predictions[-1]))
    for a, b in zip(*outputs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


class _Bag(torch.nn.Module):
    """Token ids -> embeddings -> mean -> linear: integer inputs."""

    def __init__(self):
        super().__init__()
        self.embedding = torch.nn.Embedding(7, 5, dtype=torch.float64)
        self.readout = torch.nn.Linear(5, 1, dtype=torch.float64)

    def forward(self, tokens):
        return self.readout(self.embedding(tokens).mean(1))


def test_embedding_models_take_integer_inputs_in_train_nngp_and_spectrum():
    """Integer token ids reach the Embedding unchanged (issue 27): train equals plain SGD on
    ||f - y||^2 / (2|y|) written out, empirical_nngp the outputs' Gram matrix, and the power
    iteration's lambda_max the top eigenvalue of the explicit empirical NTK."""
    torch.manual_seed(0)
    tokens = torch.randint(0, 7, (6, 3))
    y = torch.randn(6, 1, dtype=torch.float64)
    model = _Bag()
    by_hand = copy.deepcopy(model)
    nk.train(model, tokens, y, steps=3, learning_rate=0.3, progress=False, track_kernel=False)
    optimizer = torch.optim.SGD(by_hand.parameters(), lr=0.3)
    for _ in range(3):
        optimizer.zero_grad()
        (0.5 * (by_hand(tokens) - y).square().mean()).backward()
        optimizer.step()
    for trained, expected in zip(model.parameters(), by_hand.parameters(), strict=True):
        torch.testing.assert_close(trained, expected, rtol=1e-12, atol=1e-14)
    outputs = model(tokens).detach()
    torch.testing.assert_close(nk.empirical_nngp(model, tokens.numpy()), outputs @ outputs.T, rtol=1e-12, atol=0)
    top = torch.linalg.eigvalsh(nk.empirical_ntk(model, tokens))[-1].item()
    from ntklab.lab.spectrum import largest_ntk_eigenvalue
    assert abs(largest_ntk_eigenvalue(model, tokens, rtol=1e-10, iterations=500) - top) < 1e-6 * top
