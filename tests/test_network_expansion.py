"""`studies.network_expansion`: a network's empirical NTK and meta kernel (its dNTK) at
initialization, against `nk.empirical_ntk` and finite differences of the NTK along a training
direction, and the nearly-kernel prediction of a model that is exactly quadratic in its
parameters (error O(eps²)) from a random, nonzero starting point."""
import pytest
import torch
from torch import nn

import ntklab as nk
from ntklab.studies import quadratic as Q
from ntklab.studies.network_expansion import expansion_kernels, train_full_batch


def data(n_train=6, n_test=20, seed=0):
    x = torch.randn(n_train + n_test, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    y = (torch.sin(x[:, 0]) + 0.5 * x[:, 1] * x[:, 2])[:, None]
    return x[:n_train], y[:n_train], x[n_train:]


def test_kernels_of_a_network_match_the_empirical_ntk_and_finite_differences_of_it():
    x, _, x_test = data(n_train=3, n_test=4)
    model = nk.mlp(2, 16, W_std=1.5, b_std=0.1, activation=nk.Tanh()).module(3, seed=1, dtype=torch.float64)
    f0, ntk, meta = expansion_kernels(model, x, x_test)
    points = torch.cat([x, x_test])
    torch.testing.assert_close(f0, model(points)[:, 0].detach())
    torch.testing.assert_close(ntk, nk.empirical_ntk(model, points), rtol=1e-12, atol=1e-12)
    # dΘ_d1d2 along the tangent J(x_a) equals mu_d1,d2,a + mu_d2,d1,a (central differences)
    a, step = 1, 1e-4
    direction = torch.autograd.grad(model(x[a:a + 1]).sum(), list(model.parameters()))
    kernels = []
    for sign in (1, -1):
        with torch.no_grad():
            for p, d in zip(model.parameters(), direction):
                p.add_(sign * step * d)
        kernels.append(nk.empirical_ntk(model, points))
        with torch.no_grad():
            for p, d in zip(model.parameters(), direction):
                p.sub_(sign * step * d)
    derivative = (kernels[0] - kernels[1]) / (2 * step)
    expected = meta[:, :, a] + meta[:, :, a].T
    torch.testing.assert_close(derivative, expected, rtol=1e-6, atol=1e-7)
    assert float((derivative - 2 * meta[:, :, a]).abs().max()) > 1e-3   # mu is not symmetric in d0, d1


class QuadraticModule(nn.Module):
    """A quadratic model z = φ·W + (ε/2) W ψ W as a torch module with parameters W."""

    def __init__(self, model: Q.QuadraticModel, start: torch.Tensor):
        super().__init__()
        self.quadratic, self.W = model, nn.Parameter(start.clone())

    def forward(self, x):
        return self.quadratic._output(self.W, self.quadratic.phi(x), self.quadratic.psi(x))


def _errors(eps):
    x, y, x_test = data()
    quadratic = Q.random_model(3, 30, eps, seed=2)
    start = 0.1 * torch.randn(1, 31, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    module = QuadraticModule(quadratic, start)
    f0, ntk, meta = expansion_kernels(module, x, x_test)
    eta = 1.0 / float(torch.linalg.eigvalsh(ntk[:6, :6])[-1])
    predicted = Q.nearly_kernel_from_kernels(ntk, meta, y - f0[:6, None], algorithm="gd", learning_rate=eta)
    train_full_batch(module, x, y, learning_rate=eta)
    with torch.no_grad():
        change = module(x_test)[:, 0] - f0[6:]
    return (float((change - predicted["kernel"][:, 0]).abs().max()),
            float((change - predicted["nearly_kernel"][:, 0]).abs().max()))


def test_a_quadratic_module_from_a_random_start_is_predicted_to_second_order():
    (kernel1, nearly1), (kernel2, nearly2) = _errors(0.04), _errors(0.02)
    assert kernel1 / kernel2 == pytest.approx(2.0, rel=0.05)
    assert nearly1 / nearly2 == pytest.approx(4.0, rel=0.05)
    assert nearly1 < 0.02 * kernel1


def test_multi_output_models_and_unreachable_tolerances_are_refused():
    x, y, x_test = data(n_train=3, n_test=2)
    with pytest.raises(ValueError, match="one output"):
        expansion_kernels(nk.mlp(1, 8, out=2).module(3, dtype=torch.float64), x, x_test)
    model = nk.mlp(1, 8).module(3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="max_steps"):
        train_full_batch(model, x, y, learning_rate=1e-6, max_steps=5)
