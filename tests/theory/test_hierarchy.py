"""`nk.ntk_hierarchy`: a network's NTK, dNTK and ddNTK at initialization against
`nk.empirical_ntk` and central finite differences along the training gradients; the first-order
(1/n) nearly-kernel prediction of gradient flow against the trained network: at short times each
left-out term shows as the order of the error in t, and across widths the error falls as 1/n²
while the frozen kernel's falls as 1/n (slow)."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

import ntklab as nk
from ntklab.lab.fits import power_law_slope
from ntklab.lab.studies import quadratic as Q
from ntklab import nearly_kernel_flow, ntk_hierarchy, train_gradient_flow
from ntklab.lab.studies.overparameterization import train_full_batch


def data(n_train=4, n_test=6, seed=0):
    x = torch.randn(n_train + n_test, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    y = torch.sin(x[:, 0]) + 0.5 * x[:, 1] * x[:, 2]
    return x[:n_train], y[:n_train], x[n_train:]


def tanh_mlp(depth, width, seed=1):
    return nk.mlp(depth, width, W_std=1.5, b_std=0.1, activation=nk.Tanh()).module(3, seed=seed, dtype=torch.float64)


def displaced(model, x_a, step):
    """A copy of `model` moved by `step` along the gradient of its output at x_a."""
    moved = copy.deepcopy(model)
    direction = torch.autograd.grad(model(x_a[None]).sum(), list(model.parameters()))
    with torch.no_grad():
        for p, d in zip(moved.parameters(), direction, strict=True):
            p.add_(step * d)
    return moved


def derivative(model, x, x_test, a, name, step=1e-3):
    """d/ds of the hierarchy's `name` at θ + s ∂z(x_a)/∂θ, s = 0: central differences at steps h
    and h/2, Richardson-extrapolated (error O(h⁴))."""
    def central(h):
        plus, minus = (getattr(ntk_hierarchy(displaced(model, x[a], s), x, x_test), name) for s in (h, -h))
        return (plus - minus) / (2 * h)
    return (4 * central(step / 2) - central(step)) / 3


def test_the_hierarchy_is_the_ntk_and_its_derivatives_along_the_training_gradients():
    x, _, x_test = data(n_train=3, n_test=2)
    model = tanh_mlp(2, 12)
    h = ntk_hierarchy(model, x, x_test)
    points = torch.cat([x, x_test])
    torch.testing.assert_close(h.output, model(points)[:, 0].detach())
    torch.testing.assert_close(h.ntk, nk.empirical_ntk(model, points)[:, :3], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(derivative(model, x, x_test, 1, "ntk"), h.dntk[1], rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(derivative(model, x, x_test, 2, "dntk"), h.ddntk[2], rtol=1e-8, atol=1e-10)
    assert float(h.dntk.abs().max()) > 1e-2 and float(h.ddntk.abs().max()) > 1e-2


@pytest.mark.parametrize("terms, order", [((), 2), (("ddntk",), 2), (("dntk",), 3), (("dntk", "ddntk"), 4)])
def test_at_short_times_the_error_has_the_order_of_the_first_left_out_term(terms, order):
    """ż = -Hε; z̈ brings in dH; z⃛ brings in ddH; z⁗ the second-order (dH², dddH) terms."""
    x, y, x_test = data()
    model = tanh_mlp(2, 8)
    h = ntk_hierarchy(model, x, x_test)
    times = 0.05 / float(torch.linalg.eigvalsh(h.ntk[:4])[-1]) * np.array([0.5, 1.0])
    trained = train_gradient_flow(model, x, y, times, x_test)
    predicted = nearly_kernel_flow(h, y, times, terms=terms)["nearly_kernel" if terms else "kernel"]
    error = (trained - predicted).abs().max(1).values
    assert float(error[1] / error[0]) == pytest.approx(2.0 ** order, rel=0.06)   # next order: O(t)


class QuadraticModule(nn.Module):
    """A quadratic model z = φ·W + (ε/2) W ψ W as a torch module with parameters W."""

    def __init__(self, model: Q.QuadraticModel, start: torch.Tensor):
        super().__init__()
        self.quadratic, self.W = model, nn.Parameter(start.clone())

    def forward(self, x):
        return self.quadratic._output(self.W, self.quadratic.phi(x), self.quadratic.psi(x))


def _quadratic_errors(eps):
    x, y, x_test = data(n_train=6, n_test=20)
    start = 0.1 * torch.randn(1, 31, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    module = QuadraticModule(Q.random_model(3, 30, eps, seed=2), start)
    h = ntk_hierarchy(module, x, x_test)
    times = [10.0 / float(torch.linalg.eigvalsh(h.ntk[:6])[0])]
    trained = train_gradient_flow(module, x, y, times, x_test)
    predicted = nearly_kernel_flow(h, y, times)
    return [float((trained - predicted[key]).abs().max()) for key in ("kernel", "nearly_kernel")]


def test_a_quadratic_module_trained_to_convergence_is_predicted_to_second_order_in_eps():
    """dH = O(ε), ddH = O(ε²): the kernel misses O(ε), the first-order prediction O(ε²)."""
    (kernel1, nearly1), (kernel2, nearly2) = _quadratic_errors(0.04), _quadratic_errors(0.02)
    assert kernel1 / kernel2 == pytest.approx(2.0, rel=0.05)
    assert nearly1 / nearly2 == pytest.approx(4.0, rel=0.1)
    assert nearly1 < 0.05 * kernel1


@pytest.mark.slow
def test_across_widths_the_first_order_prediction_errs_as_one_over_n_squared():
    """One hidden layer (cheap to 8192): kernel error ∝ 1/n, first-order prediction ∝ 1/n²."""
    x, y, x_test = data(n_test=20)
    widths, errors = [], {"kernel": [], "nearly_kernel": []}
    for width in (512, 2048, 8192):
        for seed in range(3):
            model = tanh_mlp(1, width, seed=seed)
            h = ntk_hierarchy(model, x, x_test)
            times = [10.0 / float(torch.linalg.eigvalsh(h.ntk[:4])[0])]
            change = train_gradient_flow(model, x, y, times, x_test)[0] - h.output[4:]
            predicted = nearly_kernel_flow(h, y, times)
            widths.append(width)
            for key in errors:
                error = (change - (predicted[key][0] - h.output[4:])).abs().max() / change.abs().max()
                errors[key].append(float(error))
    kernel, kernel_se = power_law_slope(widths, errors["kernel"])
    nearly, nearly_se = power_law_slope(widths, errors["nearly_kernel"])
    assert abs(kernel + 1) < max(3 * kernel_se, 0.25), (kernel, kernel_se)
    assert abs(nearly + 2) < max(3 * nearly_se, 0.35), (nearly, nearly_se)


def test_multi_output_models_bad_times_and_unreachable_tolerances_are_refused():
    x, y, x_test = data(n_train=3, n_test=2)
    with pytest.raises(ValueError, match="one output"):
        ntk_hierarchy(nk.mlp(1, 8, out=2).module(3, dtype=torch.float64), x, x_test)
    model = nk.mlp(1, 8).module(3, dtype=torch.float64)
    h = ntk_hierarchy(model, x, x_test)
    with pytest.raises(ValueError, match="times must be positive and increasing"):
        nearly_kernel_flow(h, y, [1.0, 0.5])
    with pytest.raises(ValueError, match="terms must be a subset"):
        nearly_kernel_flow(h, y, [1.0], terms=("dntk", "dddntk"))
    with pytest.raises(ValueError, match="y_train has 2 values"):
        nearly_kernel_flow(h, y[:2], [1.0])
    with pytest.raises(RuntimeError, match="max_steps"):
        train_full_batch(model, x, y[:, None], learning_rate=1e-6, max_steps=5)


def test_an_empty_test_set_gives_the_training_block():
    model = nk.mlp(1, 16, activation=nk.Tanh()).module(2, seed=0, dtype=torch.float64)
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    alone, with_test = nk.ntk_hierarchy(model, x[:2], x[:0]), nk.ntk_hierarchy(model, x[:2], x[2:])
    torch.testing.assert_close(alone.ntk, with_test.ntk[:2])
    torch.testing.assert_close(alone.dntk, with_test.dntk[:, :2])
    torch.testing.assert_close(alone.ddntk, with_test.ddntk[:, :, :2])
    assert nk.nearly_kernel_flow(alone, torch.ones(2), [1.0])["nearly_kernel"].shape == (1, 0)
