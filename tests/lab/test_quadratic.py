"""Quadratic models (Roberts, Yaida & Hanin ch. 11): sample-space updates against the
parameter-space ones, and nearly-kernel predictions against trained models (error O(eps^2))."""
import numpy as np
import pytest
import torch

from ntklab.lab.studies import quadratic as Q


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
    for W, W_next in zip(path[:-1], path[1:], strict=True):
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
    """Each prediction against the solution it describes (GD, gradient flow, the two
    interpolants) has slope 2, the kernel and the cross comparisons slope 1; eps* finds the
    known optimum of the teacher task."""
    import csv
    import json
    from ntklab.lab import experiments
    from ntklab.lab.experiments.nearly_kernel import COMPARISONS
    experiments.run("nearly-kernel", tmp_path / "run", quick=True)
    fits = json.loads((tmp_path / "run" / "fits.json").read_text())
    for name, _, _, expected in COMPARISONS:
        assert fits[f"slope_{name}"] == pytest.approx(expected, abs=0.1), name
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert max(float(r["train_residual"]) for r in rows) < 1e-9
    for key in ("eps_star_first_order", "eps_star_polynomial", "eps_star_grid"):
        assert fits[key] == pytest.approx(fits["eps_teacher"], rel=0.05), key
    report = (tmp_path / "run" / "report.md").read_text()
    assert "eps* (first-order" in report and "Warning" not in report


def test_optimal_eps_minimizes_the_loss_expansion():
    """The first-order formula is the root of dL/deps truncated at O(eps) (the slides' version
    drops a factor 2): for a residual r = O(1) the two differ, and the quartic's minimizer is
    close to the first-order root when eps* is small."""
    from ntklab.lab.experiments.nearly_kernel import optimal_eps
    g = torch.Generator().manual_seed(0)
    first, second = torch.randn(50, generator=g).numpy(), torch.randn(50, generator=g).numpy()
    residual = -0.01 * first + 0.3 * torch.randn(50, generator=g).numpy()
    stars = optimal_eps(residual, first, second)
    r, a, b = residual, first, second
    assert stars["first_order"] == pytest.approx(-(r * a).sum() / ((a * a).sum() + 2 * (r * b).sum()))
    assert abs(stars["polynomial"] - stars["first_order"]) < 0.1 * abs(stars["first_order"])
    grid = np.linspace(-1, 1, 200001)
    loss = [0.5 * ((r + e * a + e * e * b) ** 2).sum() for e in grid[::100]]
    assert stars["polynomial"] == pytest.approx(grid[::100][int(np.argmin(loss))], abs=2e-3)
