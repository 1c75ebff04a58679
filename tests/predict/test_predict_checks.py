"""The predictions' checks of the train-train kernel (symmetry, definiteness, the opt-in for
indefinite kernels) and the stiff gradient-descent ODE, against matrix exponentials
(`torch.linalg.matrix_exp`), the closed form and a second ODE method."""
import math
import re
import signal
from contextlib import contextmanager

import numpy as np
import pytest
import torch

import ntklab as nk
from ntklab import predict
from ntklab.predict import finite
from ntklab.predict.linalg import DEFINITENESS_TOLERANCE

G = torch.Generator().manual_seed(0)
A = torch.randn(8, 8, generator=G, dtype=torch.float64)
INDEFINITE = A + A.T                                   # eigenvalues -7.96 ... 6.76
PSD = A @ A.T / 8 + 0.1 * torch.eye(8, dtype=torch.float64)
Y = torch.randn(8, 2, generator=G, dtype=torch.float64)
K_TEST = torch.randn(3, 8, generator=G, dtype=torch.float64)
F0, F0_TEST = torch.randn(8, 2, generator=G, dtype=torch.float64), torch.randn(3, 2, generator=G,
                                                                              dtype=torch.float64)


def mse_loss(fx, target):
    return 0.5 * (fx - target).square().mean()


def cross_entropy(fx, target):
    return -(torch.log_softmax(fx, -1) * target).sum(-1).mean()


@contextmanager
def hang_guard(seconds: int):
    """Turn a hang (the stiff ODE used to run for hours) into a failure; not a timing test."""
    def fail(*_):
        raise AssertionError(f"still running after {seconds} s")
    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def flow_by_matrix_exp(k, lr, t, f0=F0, f0_test=F0_TEST, k_test=K_TEST, y=Y):
    """Gradient flow of the loss ||f - y||^2 / (2 |Y|) on [train; test] outputs: with
    u = f_train - y and w = f_test, d/dt [u; w] = -(lr / |Y|) [[K, 0], [K_test, 0]] [u; w],
    solved by one matrix exponential of the joint (N + N_test) system."""
    n, m = k.shape[0], k_test.shape[0]
    joint = torch.zeros(n + m, n + m, dtype=k.dtype)
    joint[:n, :n], joint[n:, :n] = k, k_test
    state = torch.linalg.matrix_exp(-lr / y.numel() * t * joint) @ torch.cat([f0 - y, f0_test])
    return state[:n] + y, state[n:]


def relative_error(a, b):
    return float((a - b).abs().max() / b.abs().max())


# -- definiteness ----------------------------------------------------------------------------

def test_indefinite_kernel_is_refused_by_every_prediction_with_its_eigenvalue_and_the_fixes():
    gd_mse = lambda: predict.gradient_descent_mse(INDEFINITE, Y)(1.0, F0)        # noqa: E731
    gd_ode = lambda: predict.gradient_descent(mse_loss, INDEFINITE, Y)(1.0, F0)  # noqa: E731
    gp = lambda: predict.gp_inference(INDEFINITE, Y)(K_TEST)                     # noqa: E731
    lr_max = lambda: predict.max_learning_rate(INDEFINITE)                       # noqa: E731
    evals = torch.linalg.eigvalsh(INDEFINITE)
    shift = "8"             # -lambda_min = 7.96 rounded up to two digits (mean diagonal < 0: absolute)
    assert float(shift) >= float(-evals[0]) > 7.9
    for call in (gd_mse, gd_ode, gp, lr_max):
        with pytest.raises(ValueError, match="k_train_train is indefinite") as error:
            call()
        message = str(error.value)
        assert (f"most negative eigenvalue is {float(evals[0]):.3g} = "
                f"{float(evals[0] / evals[-1]):.3g} x the largest ({float(evals[-1]):.3g})") in message
        assert ("allow_indefinite=True" in message) == (call in (gd_mse, gd_ode))
        if call in (gd_mse, gp):                     # these take diag_reg
            assert f"pass diag_reg >= {shift} with diag_reg_absolute_scale=True" in message
        else:
            assert (f"nk.predict.add_diagonal_regularizer(k_train_train, {shift}, absolute_scale=True)"
                    in message)
    # the ensemble's train kernel goes through the same check
    x = torch.randn(6, 3, generator=G, dtype=torch.float64)
    negative_linear = lambda x1, x2: -(x1 @ (x1 if x2 is None else x2).T)   # noqa: E731
    with pytest.raises(ValueError, match="k_train_train \\(ntk\\) is indefinite"):
        predict.gradient_descent_mse_ensemble(negative_linear, x, Y[:6])(1.0, x, "ntk")


@pytest.mark.parametrize("absolute", [False, True])
def test_the_suggested_diag_reg_is_the_one_that_makes_the_kernel_definite(absolute):
    kernel = PSD - 0.5 * torch.eye(8, dtype=torch.float64)    # lambda_min = 0.1 - 0.5 + rounding
    with pytest.raises(ValueError, match="diag_reg >= ") as error:
        predict.gradient_descent_mse(kernel, Y, diag_reg_absolute_scale=absolute)
    suggested = float(re.search(r"diag_reg >= ([0-9.e+-]+)", str(error.value)).group(1))
    scale = 1.0 if absolute else float(kernel.diagonal().mean())
    exact = (0.5 - float(torch.linalg.eigvalsh(PSD)[0])) / scale
    assert exact <= suggested < 1.1 * exact                    # rounded up to two digits
    f_train = predict.gradient_descent_mse(kernel, Y, diag_reg=suggested,
                                           diag_reg_absolute_scale=absolute)(1.0, F0)
    assert bool(torch.isfinite(f_train).all())
    with pytest.raises(ValueError, match="indefinite"):
        predict.gradient_descent_mse(kernel, Y, diag_reg=exact * 0.98, diag_reg_absolute_scale=absolute)
    if not absolute:   # the ODE has no diag_reg: its message names the call that regularizes
        with pytest.raises(ValueError, match=r"add_diagonal_regularizer\(k_train_train, ") as error:
            predict.gradient_descent(mse_loss, kernel, Y)
        suggested = float(re.search(r"k_train_train, ([0-9.e+-]+)\)", str(error.value)).group(1))
        assert exact <= suggested < 1.1 * exact
        predict.gradient_descent(mse_loss, predict.add_diagonal_regularizer(kernel, suggested), Y)


def test_rounding_below_the_documented_tolerance_passes_and_beyond_it_is_refused():
    """A singular PSD kernel shifted along its null vector by -0.5 tau passes (and is treated
    as PSD: its mode is constant, as in the closed form with eigenvalue 0); -3 tau is refused."""
    x = torch.randn(8, 3, generator=G, dtype=torch.float64)
    linear = x @ x.T                                          # rank 3
    evals, evecs = torch.linalg.eigh(linear)
    null = evecs[:, :1]
    tau = DEFINITENESS_TOLERANCE * torch.finfo(torch.float64).eps * 8 * float(linear.abs().sum(1).max())
    below = linear - 0.5 * tau * null @ null.T
    f_train = predict.gradient_descent_mse(below, Y)(1e6, F0)
    expected, _ = flow_by_matrix_exp(linear, 1.0, 1e6)
    torch.testing.assert_close(f_train, expected, rtol=0, atol=1e-8)
    with pytest.raises(ValueError, match="indefinite"):
        predict.gradient_descent_mse(linear - 3 * tau * null @ null.T, Y)


def test_duplicate_inputs_of_an_arc_cosine_kernel_are_not_refused():
    """k(x, x) with x2 given of a ReLU network on duplicated 1000-dimensional inputs is
    asymmetric at ~1e-8 (arccos at coincident points) and singular: rounding, not an error."""
    x = torch.randn(10, 1000, generator=G, dtype=torch.float64)
    x = torch.cat([x, x])
    net = nk.serial(nk.Dense(512, 1.5, 0.1), nk.Relu(), nk.Dense(1, 1.5, 0.1))
    theta = net.kernel(x, x, get="ntk")
    assert 0 < float((theta - theta.T).abs().max()) / float(theta.abs().max()) < 1e-6
    y = torch.randn(20, 1, generator=G, dtype=torch.float64)
    f_train = predict.gradient_descent_mse(theta, y, learning_rate=3.0)(2.0, 0.0)
    symmetric = (theta + theta.T) / 2
    expected = y - torch.linalg.matrix_exp(-3.0 / 20 * 2.0 * symmetric) @ y
    torch.testing.assert_close(f_train, expected, rtol=0, atol=1e-10)
    predict.gp_inference(theta, y, diag_reg=1e-3)(theta)
    assert predict.max_learning_rate(theta) > 0


# -- allow_indefinite: exact dynamics ---------------------------------------------------------

def test_allow_indefinite_follows_the_matrix_exponential_and_the_ode():
    lr, diag_reg = 0.5, 0.1
    regularized = INDEFINITE + diag_reg * float(INDEFINITE.diagonal().mean()) * torch.eye(8, dtype=torch.float64)
    closed = predict.gradient_descent_mse(INDEFINITE, Y, lr, diag_reg, allow_indefinite=True)
    times = [1.0, 10.0, 100.0]                  # the outputs grow to ~1e10
    f_train, f_test = closed(times, F0, F0_TEST, K_TEST)
    for i, t in enumerate(times):
        train, test = flow_by_matrix_exp(regularized, lr, t)
        assert relative_error(f_train[i], train) < 1e-9
        assert relative_error(f_test[i], test) < 1e-9
    assert float(f_train[-1].abs().max()) > 1e9              # it diverges, nothing is clamped
    # the ODE (no diag_reg there) on the regularized kernel
    by_ode = predict.gradient_descent(mse_loss, regularized, Y, lr, allow_indefinite=True)(
        times[:2], F0, F0_TEST, K_TEST)
    for a, b in zip(by_ode, (f_train[:2], f_test[:2]), strict=True):
        assert relative_error(a, b) < 1e-8
    with pytest.raises(ValueError, match="t=None .* indefinite"):
        closed(None, F0)
    with pytest.raises(ValueError, match="diverges beyond torch.float64's range"):
        closed(1e4, F0)                                         # e^2500: no float64 holds it


@pytest.mark.slow
def test_the_ode_on_an_indefinite_kernel_diverges_where_the_closed_form_does():
    """Both overflow float64 near t = 709 / (lr |lambda_min| / |Y|) = 2.8e3 (2-5 s of ODE)."""
    regularized = INDEFINITE + 0.1 * float(INDEFINITE.diagonal().mean()) * torch.eye(8, dtype=torch.float64)
    closed = predict.gradient_descent_mse(regularized, Y, 0.5, allow_indefinite=True)
    assert bool(torch.isfinite(closed(2.7e3, F0)).all())
    with pytest.raises(ValueError, match="diverges"):
        closed(2.9e3, F0)
    with pytest.raises(RuntimeError, match="ODE solver failed at time 28"), np.errstate(all="ignore"):
        predict.gradient_descent(mse_loss, regularized, Y, 0.5, allow_indefinite=True)(1e4, F0)


# -- symmetry --------------------------------------------------------------------------------

def test_asymmetric_kernel_is_refused_with_its_asymmetry():
    asymmetric = PSD + 1e-3 * torch.triu(torch.ones(8, 8, dtype=torch.float64), 1)
    calls = [lambda: predict.gradient_descent_mse(asymmetric, Y)(1.0, F0),
             lambda: predict.gp_inference(asymmetric, Y)(K_TEST),
             lambda: predict.gradient_descent(mse_loss, asymmetric, Y)(1.0, F0),
             lambda: predict.max_learning_rate(asymmetric),
             lambda: predict.solve(asymmetric, Y)]
    for call in calls:
        with pytest.raises(ValueError, match=r"k_train_train is not symmetric: max \|K - K\^T\| = 0\.001"):
            call()
    # LU solves the asymmetric system as given
    torch.testing.assert_close(asymmetric @ predict.solve(asymmetric, Y, assume_psd=False), Y)


def test_asymmetry_at_rounding_is_averaged_out():
    noisy = PSD + 1e-12 * torch.triu(torch.ones(8, 8, dtype=torch.float64), 1)
    symmetric = (noisy + noisy.T) / 2
    for t in (1.0, None):
        got = predict.gradient_descent_mse(noisy, Y)(t, F0, F0_TEST, K_TEST)
        expected = predict.gradient_descent_mse(symmetric, Y)(t, F0, F0_TEST, K_TEST)
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


# -- max_learning_rate -----------------------------------------------------------------------

def test_max_learning_rate_refuses_indefinite_and_zero_kernels():
    assert predict.max_learning_rate(PSD, 16, momentum=0.5) == pytest.approx(
        2 * 1.5 * 16 / float(np.linalg.eigvalsh(PSD.numpy())[-1]), rel=1e-10)
    with pytest.raises(ValueError, match="indefinite"):
        predict.max_learning_rate(INDEFINITE)
    with pytest.raises(ValueError, match="k_train_train is zero"):
        predict.max_learning_rate(torch.zeros(3, 3))


# -- the stiff ODE ---------------------------------------------------------------------------

def test_stiff_ode_finishes_and_matches_the_closed_form():
    """lr = 1e6, t up to 1e6 (lr lambda_max t / |Y| ~ 1e11): used to run for hours with DOP853."""
    times = [1e-7, 1e-5, 1e-3, 1e6]
    with hang_guard(60):
        by_ode = predict.gradient_descent(mse_loss, PSD, Y, 1e6)(times, F0, F0_TEST, K_TEST)
    closed = predict.gradient_descent_mse(PSD, Y, 1e6)(times, F0, F0_TEST, K_TEST)
    for a, b in zip(by_ode, closed, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-8)


def test_stiff_momentum_ode_matches_each_damped_eigenmode():
    """Heavy ball with momentum 0 and lr = 1e-6: friction -1/sqrt(lr) = -1000, an overdamped,
    stiff flow (T rho ~ 1e7); each eigenmode solves x'' = mu x' - (lambda / |Y|) x exactly
    (a 2x2 matrix exponential), as in test_predict_finite."""
    lr, m, t = 1e-6, 0.0, 1e7
    with hang_guard(60):
        (train,) = predict.gradient_descent(mse_loss, PSD, Y, lr, momentum=m)([t], F0)
    evals, evecs = torch.linalg.eigh(PSD)
    s, mu = math.sqrt(lr), (m - 1) / math.sqrt(lr)
    x0 = evecs.T @ (F0 - Y)
    x_t = torch.stack([
        (torch.linalg.matrix_exp(torch.tensor([[0.0, 1.0], [-float(lam) / Y.numel(), mu]],
                                              dtype=torch.float64) * t * s)[0, 0]) * x0[i]
        for i, lam in enumerate(evals)])
    assert float(x_t.abs().max()) > 1e-3 * float(x0.abs().max())      # the slowest modes move
    torch.testing.assert_close(train, Y + evecs @ x_t, rtol=0, atol=1e-8)


def test_stiff_cross_entropy_agrees_with_the_explicit_method(monkeypatch):
    """The stiff method (LSODA, chosen automatically) against DOP853 forced on the same,
    moderately stiff, flow."""
    labels = torch.nn.functional.one_hot(torch.arange(8) % 3).double()
    methods = []

    def recording(*args, **kwargs):
        methods.append(kwargs["method"])
        return solve_ivp(*args, **kwargs)
    solve_ivp = finite.solve_ivp
    monkeypatch.setattr(finite, "solve_ivp", recording)
    times = [0.01, 1.0, 30.0]
    stiff = predict.gradient_descent(cross_entropy, PSD, labels, 1e3)(times, 0.0, 0.0, K_TEST)
    monkeypatch.setattr(finite, "STIFF", math.inf)
    explicit = predict.gradient_descent(cross_entropy, PSD, labels, 1e3)(times, 0.0, 0.0, K_TEST)
    assert methods == ["LSODA", "DOP853"]
    for a, b in zip(stiff, explicit, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


def test_long_solves_show_progress(capsys):
    predict.gradient_descent(mse_loss, PSD, Y, progress=True)(1.0, F0)
    assert "gradient descent ODE (DOP853)" in capsys.readouterr().err


# -- float32 (review of issue 27) --------------------------------------------------------------

def test_a_float32_kernel_with_a_negative_eigenvalue_far_beyond_rounding_is_refused():
    """eigenvalues 400.5, 0.5 (x 398), -0.1: -0.1 is 2.5e-4 of lambda_max, 340 x the largest
    rounding measured (0.015 eps N lambda_max = 2.9e-4); the earlier tolerance (10 eps N ||G||)
    let it through and clamped it."""
    n = 400
    v = torch.zeros(n)
    v[0], v[1] = 1.0, -1.0
    v = v / v.norm()
    k = torch.ones(n, n) + 0.5 * torch.eye(n) - 0.6 * torch.outer(v, v)
    y = torch.zeros(n, 1)
    y[0] = 1.0
    for call in (lambda: predict.gradient_descent_mse(k, y)(1e4, torch.zeros(n, 1)),
                 lambda: predict.max_learning_rate(k)):
        with pytest.raises(ValueError, match=r"indefinite: its most negative eigenvalue is -0\.1"):
            call()
    torch.testing.assert_close(predict.gradient_descent_mse(k + 0.6 * torch.outer(v, v), y)(1.0, 0.0),
                               predict.gradient_descent_mse((k + 0.6 * torch.outer(v, v)).double(),
                                                            y.double())(1.0, 0.0).float(),
                               rtol=1e-4, atol=1e-5)   # the same kernel made PSD passes


def test_float32_asymmetry_of_a_percent_is_refused():
    k = torch.tensor([[1.0, 0.5], [0.53, 1.0]])
    with pytest.raises(ValueError, match="not symmetric"):
        predict.gp_inference(k, torch.tensor([[1.0], [-1.0]]))


@pytest.mark.parametrize("allow_indefinite", [False, True])
def test_infinite_time_on_a_singular_kernel_is_refused_as_singular(allow_indefinite):
    """Gradient flow never moves a singular kernel's null space: the training outputs at t = inf
    are not y (they were returned as y), and the kernel is singular, not indefinite."""
    x = torch.randn(12, 3, generator=G, dtype=torch.float64)
    k = x @ x.T                               # rank 3: eigenvalues down to about -1e-15
    with pytest.raises(ValueError, match="singular") as err:
        predict.gradient_descent_mse(k, torch.randn(12, 1, generator=G, dtype=torch.float64),
                                     allow_indefinite=allow_indefinite)(None, 0.0)
    assert "indefinite" not in str(err.value)
