"""Quadratic models (Roberts, Yaida & Hanin ch. 11): sample-space updates against the
parameter-space ones, and nearly-kernel predictions against trained models (error O(eps^2))."""
import pytest
import torch

from ntklab.studies import quadratic as Q


def _data():
    g = torch.Generator().manual_seed(1)
    x_train = torch.randn(8, 3, generator=g, dtype=torch.float64)
    x_test = torch.randn(5, 3, generator=g, dtype=torch.float64)
    y = torch.cat([torch.sin(x_train[:, :1]), x_train[:, 1:2] * x_train[:, 2:3]], 1)
    return x_train, x_test, y


def test_sample_space_updates_match_parameter_space_gd_step_by_step():
    x, x_test, y = _data()
    model = Q.random_model(3, 20, 0.3, seed=2)
    eta = 0.5 / float(torch.linalg.eigvalsh(model.kernel(x, x))[-1])
    W0 = 0.3 * torch.randn(2, 21, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    path = Q.train_gd(model, x, y, learning_rate=eta, steps=5, W0=W0)
    everything = torch.cat([x, x_test])
    for W, W_next in zip(path[:-1], path[1:]):
        residual = model.output(W, x) - y                                       # e on the training set
        k_e = model.effective_kernel(W, everything, x)                          # [out, N+M, N]
        mu_e = model.meta_kernel(everything, x, x, W=W)                         # exact with phi^E(t)
        predicted = (model.output(W, everything).T - eta * torch.einsum("ida,ai->id", k_e, residual)
                     + eta ** 2 / 2 * torch.einsum("idab,ai,bi->id", mu_e, residual, residual))
        torch.testing.assert_close(predicted.T, model.output(W_next, everything), rtol=1e-12, atol=1e-12)
        # k^E update: -eta (mu_d1d2a + mu_d2d1a) e_a, plus the exact second-order term
        mu_12a = model.meta_kernel(everything, everything, x, W=W)
        step = W_next - W
        _, psi = model.features(everything)
        second = model.eps ** 2 * torch.einsum("ik,nkj,il,mlj->inm", step, psi, step, psi)
        k_now, k_next = (model.effective_kernel(V, everything, everything) for V in (W, W_next))
        change = -eta * torch.einsum("inma,ai->inm", mu_12a + mu_12a.transpose(1, 2), residual)
        torch.testing.assert_close(k_next, k_now + change + second, rtol=1e-11, atol=1e-11)


def _errors(eps):
    x, x_test, y = _data()
    model = Q.random_model(3, 30, eps, seed=2)
    eta = 1.0 / float(torch.linalg.eigvalsh(model.kernel(x, x))[-1])
    W = Q.train_gd(model, x, y, learning_rate=eta, steps=15000)[-1]
    assert float((model.output(W, x) - y).abs().max()) < 1e-8   # trained to convergence
    z = model.output(W, x_test)
    gd = Q.nearly_kernel_prediction(model, x, y, x_test, algorithm="gd", learning_rate=eta)
    direct = Q.nearly_kernel_prediction(model, x, y, x_test, algorithm="direct")
    return (float((z - gd["kernel"]).abs().max()), float((z - gd["nearly_kernel"]).abs().max()),
            float((z - direct["nearly_kernel"]).abs().max()))


def test_nearly_kernel_prediction_of_gd_has_error_eps_squared():
    """Kernel prediction error O(eps) (halves with eps), nearly-kernel O(eps^2) (quarters),
    and the direct-optimization formula differs from GD at O(eps)."""
    (lin1, nk1, direct1), (lin2, nk2, _) = _errors(0.02), _errors(0.01)
    assert lin1 / lin2 == pytest.approx(2.0, rel=0.05)
    assert nk1 / nk2 == pytest.approx(4.0, rel=0.05)
    assert nk1 < 0.03 * lin1 and direct1 > 10 * nk1


def test_singular_kernel_and_bad_algorithm_are_refused():
    x, x_test, y = _data()
    model = Q.random_model(3, 4, 0.1, seed=0)  # 5 features < 8 samples: k~ singular
    with pytest.raises(ValueError, match="singular.*more features"):
        Q.nearly_kernel_prediction(model, x, y, x_test, algorithm="direct")
    with pytest.raises(ValueError, match="algorithm"):
        Q.nearly_kernel_prediction(Q.random_model(3, 30, 0.1), x, y, x_test, algorithm="adam")
    asymmetric = Q.QuadraticModel(model.phi, lambda z: torch.randn(len(z), 5, 5, dtype=z.dtype), 0.1)
    with pytest.warns(UserWarning, match="not symmetric"):
        asymmetric.features(x)


def test_quick_nearly_kernel_run_fits_the_theory_slopes(tmp_path):
    import json
    from ntklab import experiments
    experiments.run("nearly-kernel", tmp_path / "run", quick=True)
    fits = json.loads((tmp_path / "run" / "fits.json").read_text())
    assert fits["slope_kernel_error"] == pytest.approx(1.0, abs=0.15)
    assert fits["slope_nearly_kernel_error"] == pytest.approx(2.0, abs=0.15)
    assert fits["slope_gd_minus_direct"] == pytest.approx(1.0, abs=0.15)
    report = (tmp_path / "run" / "report.md").read_text()
    assert "eps* =" in report and "Warning" in report   # eps* here is outside the checked range
