"""The trained-ensemble Monte Carlo of `ntklab run ensemble-mean` (studies.ensemble_mean) against
independent computations: scipy's ODE solver on each network's parameters under ntklab's loss
convention, `nk.empirical_ntk`, finite differences, and closed forms for the fits."""
import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import ntklab as nk
from ntklab.conventions import mean_squared_loss
from ntklab.lab.experiments.ensemble_mean import _fit, _projection
from ntklab.lab.studies.ensemble_mean import kernel_derivative, trained_pairs
from ntklab.theory.ensemble import kernel_solution

ARCH = nk.mlp(1, 8, W_std=1.5, b_std=0.3, activation=nk.Tanh())
X = torch.tensor([[1.0, 0.2, -0.5], [-0.3, 0.9, 0.4], [0.5, -0.7, 0.8]], dtype=torch.float64)
Y = torch.tensor([0.7, -0.4], dtype=torch.float64)
TIMES = [0.5, 2.0]


def scipy_flow(model, learning_rate, times):
    """The network's test output at `times` under dθ/dt = -learning_rate ∇ ||f(X) - y||²/(2N), by
    scipy's DOP853 on the flattened parameters (ntklab.conventions), independent of RK4."""
    params = list(model.parameters())
    start = torch.nn.utils.parameters_to_vector(params).detach()

    def velocity(_, theta):
        torch.nn.utils.vector_to_parameters(torch.as_tensor(theta), params)
        loss = mean_squared_loss(model(X[:2]).reshape(-1), Y)
        return -learning_rate * torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]).numpy()
    solution = solve_ivp(velocity, (0, times[-1]), start.numpy(), method="DOP853", t_eval=times,
                         rtol=1e-10, atol=1e-12)
    outputs = []
    with torch.no_grad():
        for theta in solution.y.T:
            torch.nn.utils.vector_to_parameters(torch.as_tensor(theta), params)
            outputs.append(float(model(X[2:]).reshape(-1)))
        torch.nn.utils.vector_to_parameters(start, params)
    return np.array(outputs)


def test_trained_pairs_are_each_network_and_its_mirror_trained_by_gradient_flow():
    """RK4 on stacked parameters = scipy's solver per network, the mirror being the network with its
    readout negated (prediction: agreement to 1e-6, RK4's error ~ (h λ_max)⁵/120 per step at steps
    h <= 0.05 in flow time); the same comparison at a learning rate 10 % off differs by more than
    1e-3 (negative control)."""
    rate = 1.7
    sample = trained_pairs(ARCH, X[:2], Y, X[2:], TIMES, 3, learning_rate=rate, max_step=0.05, first_seed=5,
                           batch=2)                                    # batches of 2 pairs and 1
    expected = []
    for seed in (5, 6, 7):
        model = ARCH.module(3, seed=seed, dtype=torch.float64)
        mirror = ARCH.module(3, seed=seed, dtype=torch.float64)
        with torch.no_grad():
            for p in mirror[-1].parameters():
                p.neg_()
        assert torch.allclose(mirror(X), -model(X), atol=0, rtol=1e-15)
        expected.append(0.5 * (scipy_flow(model, rate, TIMES) + scipy_flow(mirror, rate, TIMES)))
        ntk = nk.empirical_ntk(model, X, X[:2])
        assert np.allclose(sample.ntk[seed - 5], ntk.numpy(), rtol=1e-12, atol=1e-12)
    measured = sample.outputs[:, :, 0]
    assert np.abs(measured - np.array(expected)).max() < 1e-6
    wrong = 0.5 * (scipy_flow(model, 1.1 * rate, TIMES) + scipy_flow(mirror, 1.1 * rate, TIMES))
    assert np.abs(measured[1] - wrong).max() > 1e-3
    assert sample.steps == 9 + 26       # flow times 0.425 and 1.7 in steps <= 0.05


def test_kernel_derivative_is_the_derivative_of_the_kernel_solution():
    """DG_τ(Θ)[E] against central finite differences of G_τ(Θ + εE) y (prediction: 1e-7 at ε = 1e-5);
    the derivative along another direction differs (negative control)."""
    theta = nk.finite_width(ARCH, X).ntk[-1][:, :2]
    direction = torch.tensor([[0.3, -0.1], [-0.1, 0.2], [0.5, 0.4]], dtype=torch.float64)
    derivative = kernel_derivative(theta, Y, [0.4, 3.0])
    for k, t in enumerate((0.4, 3.0)):
        step = 1e-5
        numeric = (kernel_solution(theta + step * direction, Y, t)
                   - kernel_solution(theta - step * direction, Y, t)) / (2 * step)
        analytic = torch.einsum("mdn,dn->m", derivative[k], direction)
        assert torch.allclose(analytic, numeric, atol=1e-7, rtol=0)
        other = torch.einsum("mdn,dn->m", derivative[k], direction.flip(0))
        assert not torch.allclose(other, numeric, atol=1e-3, rtol=0)


def test_the_factor_and_its_fit_over_widths_recover_known_values():
    """_projection of values 2 c + noise on c is 2 within its standard error (and its s.e. is the
    scatter of 2000 draws' estimates); _fit of exact a_n = 1 + 3/n returns a = 1, b = 3, χ² = 0."""
    rng = np.random.default_rng(0)
    predicted = np.array([0.5, -0.2, 1.0])
    draws = [_projection(2 * predicted + rng.normal(0, [0.3, 0.1, 0.5], (400, 3)), predicted) for _ in range(200)]
    factors, errors = np.array(draws).T
    assert abs(factors.mean() - 2) < 3 * factors.std() / np.sqrt(len(factors))
    assert errors.mean() == pytest.approx(factors.std(), rel=0.15)
    widths = [{"width": n, "early": 1 + 3 / n, "early_se": 0.1} for n in (32, 128, 1024)]
    fit = _fit(widths, "early")
    assert fit["a"] == pytest.approx(1, abs=1e-12) and fit["b"] == pytest.approx(3, abs=1e-9)
    assert fit["chi2_dof"] == pytest.approx(0, abs=1e-18)
    assert _fit(widths[:1], "early")["a"] == pytest.approx(1 + 3 / 32)      # one width: a alone
