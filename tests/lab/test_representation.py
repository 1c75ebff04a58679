"""Representation learning (Damian, Lee & Soltanolkotabi 2022): targets, Algorithm 1's
pieces against autograd and closed forms, and the qualitative theory on a quick setting."""
import math

import numpy as np
import pytest
import torch

from ntklab.lab.studies import representation as R


def test_hermite_polynomials_are_orthogonal_with_norm_k_factorial():
    nodes, weights = np.polynomial.hermite_e.hermegauss(40)
    z, w = torch.tensor(nodes), torch.tensor(weights / weights.sum())
    gram = torch.stack([torch.stack([(w * R.hermite(j, z) * R.hermite(k, z)).sum() for k in range(7)])
                        for j in range(7)])
    expected = torch.diag(torch.tensor([float(math.factorial(k)) for k in range(7)], dtype=torch.float64))
    torch.testing.assert_close(gram, expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("p", [3, 4, 6])
def test_targets_have_unit_second_moment(p):
    """f*(x) = g(u . x) with u . x ~ N(0, 1): E[g^2] = 1 by 60-node Gauss-Hermite (exact here)."""
    target = R.paper_target(8, p, seed=0)
    nodes, weights = np.polynomial.hermite_e.hermegauss(60)
    z, w = torch.tensor(nodes)[:, None], torch.tensor(weights / weights.sum())
    assert float((w * target.g(z) ** 2).sum()) == pytest.approx(1.0, rel=1e-12)
    transfer = R.transfer_target(target.U, p)
    assert float((w * transfer.g(z) ** 2).sum()) == pytest.approx(1.0, rel=1e-12)
    torch.testing.assert_close(target.U @ target.U.T, torch.eye(1, dtype=torch.float64))
    x, y = R.sample(target, 1000, seed=1)
    torch.testing.assert_close(y, target.g(x @ target.U.T))
    _, noisy = R.sample(target, 1000, noise=0.3, seed=1)
    torch.testing.assert_close((noisy - y).abs(), torch.full((1000,), 0.3, dtype=torch.float64))


def test_first_step_is_the_scaled_autograd_gradient_at_the_symmetric_init():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 6, generator=g, dtype=torch.float64), torch.randn(50, generator=g, dtype=torch.float64)
    a, W, b, _ = R.symmetric_init(20, 6, seed=3)
    f0 = torch.relu(x @ W.T + b) @ a
    assert float(f0.abs().max()) < 1e-13  # f(theta_0) = 0 by the mirrored units
    Wg = W.clone().requires_grad_(True)
    loss = ((torch.relu(x @ Wg.T + b) @ a - y) ** 2).mean()
    (grad,) = torch.autograd.grad(loss, Wg)
    step = R.first_step(x, y, a, W, b)
    eta = 1.0 / grad.square().sum(1).mean().sqrt()
    torch.testing.assert_close(step, W - eta * (grad + W / eta), rtol=1e-12, atol=1e-12)
    assert float(step.square().sum(1).mean()) == pytest.approx(1.0)


def test_head_by_gradient_descent_converges_to_the_ridge_solution():
    g = torch.Generator().manual_seed(1)
    features = torch.randn(40, 15, generator=g, dtype=torch.float64)
    y = torch.randn(40, generator=g, dtype=torch.float64)
    exact = R.fit_head(features, y, 0.1)
    gradient = (2 / 40) * features.T @ (features @ exact - y) + 0.1 * exact
    assert float(gradient.abs().max()) < 1e-12
    torch.testing.assert_close(R.fit_head(features, y, 0.1, steps=3000), exact, rtol=1e-8, atol=1e-10)


def test_algorithm1_beats_both_kernel_baselines_between_d2_and_dp():
    """d = 10, p = 4, n = 2000 (d^2 < n < d^p): the kernels only learn the He_2 half
    (test loss ~ 1/2), Algorithm 1 finds u and goes well below."""
    target = R.paper_target(10, 4, seed=0)
    x, y = R.sample(target, 2000, seed=1)
    alg = R.algorithm1(x, y, m=800, seed=2)
    losses = {name: R.test_loss(f, target, 4000, seed=9) for name, f in
              (("alg1", alg), ("rf", R.random_features_ridge(x, y, m=800, seed=2)),
               ("ntk", R.ntk_regression(x, y)))}
    assert losses["alg1"] < 0.25 and losses["alg1"] < 0.4 * min(losses["rf"], losses["ntk"]), losses
    assert 0.4 < losses["ntk"] < 0.9, losses
    assert R.subspace_alignment(alg.W, target.U)["fraction_in_span"] > 0.8


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="r=3 relevant directions do not fit in d=2"):
        R.random_directions(2, 3, seed=0)
    with pytest.raises(ValueError, match="p must be >= 2"):
        R.paper_target(5, 1, seed=0)
    with pytest.raises(ValueError, match="noise"):
        R.sample(R.paper_target(5, 3, seed=0), 10, noise=-0.1, seed=0)
    with pytest.raises(ValueError, match="m must be even"):
        R.symmetric_init(7, 3, seed=0)
    x, y = R.sample(R.paper_target(5, 3, seed=0), 6, seed=0)
    with pytest.raises(ValueError, match="too few for training.*d \\+ 1 = 6"):
        R.algorithm1(x, y, m=10)


def test_quick_sample_complexity_run_writes_the_curves(tmp_path):
    import csv
    from ntklab.lab import experiments
    experiments.run("sample-complexity", tmp_path / "run", quick=True)
    with open(tmp_path / "run" / "summary.csv") as handle:
        summary = list(csv.DictReader(handle))
    assert {row["method"] for row in summary} == {"Algorithm 1", "Algorithm 1, b ~ N(0, 1) in step 1",
                                                  "random features", "NTK regression"}
    at_800 = {row["method"]: float(row["mean_loss"]) for row in summary if row["n"] == "800"}
    assert at_800["Algorithm 1"] < at_800["NTK regression"] < 1.0
    report = (tmp_path / "run" / "report.md").read_text()
    # the kernels' threshold in mode counts (issue 30): 715 modes of degree 4 at d = 10, 1001 up to degree 4;
    # n = 800 is past it, n = 200 between d^2 and it
    assert "C(d+p-1, p) = 715" in report and "1001 of degree <= 4" in report
    assert "- n = 200: Algorithm 1" in report and "- n = 800:" not in report and "d^p = 10000)" not in report
    assert "on a grid edge" in report
    assert (tmp_path / "run" / "figures" / "loss_vs_n.png").stat().st_size > 10_000


def test_leave_one_out_ridge_matches_explicit_refits():
    g = torch.Generator().manual_seed(4)
    features = torch.randn(12, 30, generator=g, dtype=torch.float64)
    y = torch.randn(12, generator=g, dtype=torch.float64)
    gram = features @ features.T
    coefficients, ridge = R.loo_ridge(gram, y, ridges=(1e-3, 1e-1, 10.0))
    scale = float(gram.diagonal().mean())

    def loo_error(r):
        errors = []
        for i in range(12):
            keep = torch.arange(12) != i
            c = torch.linalg.solve(gram[keep][:, keep] + r * scale * torch.eye(11, dtype=torch.float64), y[keep])
            errors.append(float(gram[i, keep] @ c - y[i]) ** 2)
        return np.mean(errors)
    assert ridge == min((1e-3, 1e-1, 10.0), key=loo_error)
    identity = torch.eye(12, dtype=torch.float64)
    torch.testing.assert_close(coefficients, torch.linalg.solve(gram + ridge * scale * identity, y))


def test_quick_transfer_pretraining_on_d2_samples_helps(tmp_path):
    import csv
    from ntklab.lab import experiments
    experiments.run("transfer", tmp_path / "run", quick=True)
    with open(tmp_path / "run" / "summary.csv") as handle:
        summary = {(row["method"], row["N"]): float(row["mean_loss"]) for row in csv.DictReader(handle)}
    assert summary[("pretrained on n = 1000", "128")] < 0.5
    assert summary[("pretrained on n = 1", "128")] > 0.8 and summary[("NTK on the N target samples", "128")] > 0.8


def test_multi_index_hermite_targets_are_normalised_exactly():
    """He_2(z1) He_1(z2) + 2 He_3(z2) on two directions: E[g^2] = 1 by a tensor
    Gauss-Hermite rule, and a repeated degree tuple is refused."""
    U = R.random_directions(7, 2, seed=0)
    target = R.hermite_target(U, [(1.0, (2, 1)), (2.0, (0, 3))])
    nodes, weights = np.polynomial.hermite_e.hermegauss(20)
    z1, z2 = np.meshgrid(nodes, nodes, indexing="ij")
    w = np.outer(weights, weights) / weights.sum() ** 2
    z = torch.tensor(np.stack([z1.ravel(), z2.ravel()], 1))
    assert float((torch.tensor(w.ravel()) * target.g(z) ** 2).sum()) == pytest.approx(1.0, rel=1e-12)
    with pytest.raises(ValueError, match="distinct"):
        R.hermite_target(U, [(1.0, (2, 1)), (1.0, (2, 1))])


def test_hermite_fractions_read_each_degree_of_the_paper_target():
    """The target itself has learned fraction 1 in both degrees, its He_2 half (1, 0), its negative
    He_4 half (0, -1), the zero predictor (0, 0): exact (1e-10) for predictors of u . x alone, which
    the Gauss-Hermite quadrature integrates exactly; adding a function of an orthogonal direction,
    He_2(v . x), changes nothing in expectation (Monte Carlo over the orthogonal part: within 0.05)."""
    target = R.paper_target(6, 4, seed=0)
    u, coefficients = target.U[0], R.paper_coefficients(4)
    v = torch.linalg.qr(torch.stack([u, torch.ones_like(u)], 1)).Q[:, 1]

    def half(k):
        return lambda x: R.hermite(k, x @ u) / math.sqrt(2 * math.factorial(k))
    cases = {"target": (target, (1, 1)), "He_2 half": (half(2), (1, 0)),
             "minus He_4 half": (lambda x: -half(4)(x), (0, -1)), "zero": (lambda x: 0 * x[:, 0], (0, 0))}
    for name, (predictor, expected) in cases.items():
        fractions = R.hermite_fractions(predictor, u, coefficients, 4000, seed=1)
        assert fractions[2] == pytest.approx(expected[0], abs=1e-10), name
        assert fractions[4] == pytest.approx(expected[1], abs=1e-10), name
    fractions = R.hermite_fractions(lambda x: target(x) + R.hermite(2, x @ v), u, coefficients, 4000, seed=1)
    assert abs(fractions[2] - 1) < 0.05 and abs(fractions[4] - 1) < 0.05
    # negative control: plain Monte Carlo (one node is the mean of f at z = 0) reads nothing of He_4
    assert abs(R.hermite_fractions(target, u, coefficients, 4000, seed=1, nodes=1)[4] - 1) > 0.5
