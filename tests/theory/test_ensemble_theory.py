"""`nk.ensemble_mean_flow`: the mean over initializations of a gradient-flow-trained MLP at order 1/n.

Each part against an independent computation: the NTK-fluctuation part against central finite
differences of the kernel solution by scipy's expm; the dNTK and ddNTK parts (computed by
`nearly_kernel_flow` over a cubature rule) against the Gaussian moments written out by hand
(Wick's theorem) and integrated as one explicit ODE; the whole kernel part against Monte Carlo
of real networks (slow), with the fluctuation term dropped as a negative control."""
import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from scipy.linalg import expm

import ntklab as nk
import ntklab.theory.ensemble as theory
from ntklab.lab.studies.finite_width import ensemble_samples


def random_problem(n_train=3, n_test=2, seed=0):
    rng = np.random.default_rng(seed)
    d = n_train + n_test
    features = rng.normal(size=(d, d + 2))
    ntk = features @ features.T / (d + 2) + 0.3 * np.eye(d)
    features = rng.normal(size=(n_train, n_train + 1))
    nngp = features @ features.T / (n_train + 1) + 0.2 * np.eye(n_train)
    return (rng, torch.as_tensor(ntk), torch.as_tensor(nngp), torch.as_tensor(rng.normal(size=n_train)))


def kernel_solution(ntk, y, t):
    """G_t(H) y in numpy, H [D, D] symmetric."""
    n = len(y)
    return ntk[n:, :n] @ np.linalg.solve(ntk[:n, :n], (np.eye(n) - expm(-t * ntk[:n, :n])) @ y)


def test_kernel_parts_match_finite_differences():
    """DG[shift] y and ½ D²G[Cov] y with Cov = mean_s δH_s ⊗ δH_s (symmetric perturbations) equal
    central differences of G along shift and along each δH_s."""
    rng, ntk, _, y = random_problem()
    d, n = len(ntk), len(y)
    sym = [(lambda a: (a + a.T) / 2)(rng.normal(size=(d, d))) for _ in range(6)]
    covariance = np.mean([np.einsum("ij,kl->ijkl", s, s) for s in sym], axis=0)
    shift = sym[0] * 0.7
    times = [0.4, 3.0]
    kernel, first, second = theory._kernel_parts(ntk[:, :n], torch.as_tensor(shift[:, :n]),
                                                 torch.as_tensor(covariance[:, :n, :, :n]), y, times)
    h = 1e-3
    for i, t in enumerate(times):
        g = lambda m, t=t: kernel_solution(m, y.numpy(), t)          # noqa: E731
        base = g(ntk.numpy())
        assert kernel[i].numpy() == pytest.approx(base, rel=1e-12)
        slope = (g(ntk.numpy() + h * shift) - g(ntk.numpy() - h * shift)) / (2 * h)
        curvature = np.mean([(g(ntk.numpy() + h * s) - 2 * base + g(ntk.numpy() - h * s)) / h ** 2
                             for s in sym], axis=0) / 2
        np.testing.assert_allclose(first[i].numpy(), slope, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(second[i].numpy(), curvature, rtol=1e-4, atol=1e-6)


def wick_first_order(theta, nngp, correlation, ddntk_mean, y, times):
    """E[z₁] with the Gaussian moments of v = z_A(0) - y written out: E v = -y,
    E[v_i v_j v_k] = -(K_ij y_k + K_ik y_j + K_jk y_i + y_i y_j y_k), E[dĤ v_i v_j] = -(C_i y_j + C_j y_i).
    With E_s = e^{-Θ_AA s}, A_s = ∫_0^s E, the sources of ż₁ = -Θ_δA z₁_A + S are
      dNTK:  S_δ = Σ dĤ_bδa (A_t v)_b (E_t v)_a,
      ddNTK: S_δ = Σ ddĤ_cbδa ∫_0^t (A_s v)_c (E_s v)_b ds (E_t v)_a,
    whose means need the integrals M1 = ∫ A_s K E_s, M2_cbx = ∫ (E_s y)_b (A_s K)_cx,
    M3_cbx = ∫ (A_s y)_c (E_s K)_bx, M4_cb = ∫ (E_s y)_b (A_s y)_c, integrated with z₁ as one ODE."""
    th, k, c, dd, y = (a.numpy() for a in (theta, nngp, correlation, ddntk_mean, y))
    n, d = len(y), len(th)
    taa = th[:n]
    sizes = [n * n, n * n * n, n * n * n, n * n, d]

    def rhs(t, state):
        m1, m2, m3, m4, _ = (part.reshape(shape) for part, shape in zip(
            np.split(state, np.cumsum(sizes)[:-1]), [(n, n), (n, n, n), (n, n, n), (n, n), (d,)], strict=True))
        e = expm(-taa * t)
        a = np.linalg.solve(taa, np.eye(n) - e)
        eta, ay = e @ y, a @ y
        dntk = -(np.einsum("bdae,ae,b->d", c, e, ay) + np.einsum("bdae,a,be->d", c, eta, a))
        ddntk = (np.einsum("cbda,a,cb->d", dd, eta, m1) + np.einsum("cbda,cbx,xa->d", dd, m2, e)
                 + np.einsum("cbda,cbx,xa->d", dd, m3, e) + np.einsum("cbda,cb,a->d", dd, m4, eta))
        z = state[-d:]
        return np.concatenate([(a @ k @ e).ravel(), np.einsum("b,cx->cbx", eta, a @ k).ravel(),
                               np.einsum("c,bx->cbx", ay, e @ k).ravel(), np.outer(ay, eta).ravel(),
                               -th @ z[:n] + dntk + ddntk])

    return rhs, sizes


def integrate_wick(theta, nngp, correlation, ddntk_mean, y, times):
    rhs, sizes = wick_first_order(theta, nngp, correlation, ddntk_mean, y, times)
    flow = solve_ivp(rhs, (0, times[-1]), np.zeros(sum(sizes)), method="DOP853", t_eval=times,
                     rtol=1e-11, atol=1e-13)
    return flow.y[-sizes[-1]:].T[:, len(y):]


def test_first_order_parts_match_the_wick_expansion():
    """The cubature over nearly_kernel_flow's surrogate hierarchy equals the hand-expanded Gaussian
    moments, for arbitrary tensors (the parts are linear in them)."""
    rng, ntk, nngp, y = random_problem()
    d, n = len(ntk), len(y)
    correlation = torch.as_tensor(rng.normal(size=(n, d, n, n)))
    ddntk_mean = torch.as_tensor(rng.normal(size=(n, n, d, n)))
    times = [0.5, 2.0]
    theta = ntk[:, :n]
    dntk, ddntk = theory._first_order_parts(theta, nngp, correlation, ddntk_mean, y, times)
    zero_c, zero_dd = torch.zeros_like(correlation), torch.zeros_like(ddntk_mean)
    expected_dntk = integrate_wick(theta, nngp, correlation, zero_dd, y, times)
    expected_ddntk = integrate_wick(theta, nngp, zero_c, ddntk_mean, y, times)
    np.testing.assert_allclose(dntk.numpy(), expected_dntk, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(ddntk.numpy(), expected_ddntk, rtol=1e-7, atol=1e-9)
    assert np.abs(expected_dntk).max() > 0.1 and np.abs(expected_ddntk).max() > 0.1


def test_bad_input_is_refused():
    net = nk.mlp(1, 32, activation=nk.Tanh())
    x = torch.eye(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="y_train has 1 values for 2 training points"):
        nk.ensemble_mean_flow(net, x[:2], [1.0], x[2:], [1.0])
    with pytest.raises(ValueError, match="times must be positive"):
        nk.ensemble_mean_flow(net, x[:2], [1.0, 0.0], x[2:], [2.0, 1.0])
    with pytest.raises(ValueError, match="x_test must be 2-D"):
        nk.ensemble_mean_flow(net, x[:2], [1.0, 0.0], x[2], [1.0])
    with pytest.raises(ValueError, match="smooth"):
        nk.ensemble_mean_flow(nk.mlp(1, 32, activation=nk.Relu()), x[:2], [1.0, 0.0], x[2:], [1.0])


@pytest.mark.slow
def test_kernel_part_agrees_with_monte_carlo_of_real_networks():
    """E[G_t(Ĥ)] y over 3000 initializations of a tanh MLP (L = 2, n = 64; each network's own
    empirical NTK, `studies.finite_width.ensemble_samples`, whose control variate
    DG_t(Θ)[Ĥ - Θ - Θ¹/n] y has mean O(1/n²)) against kernel + ntk_shift + ntk_fluctuation.
    Negative control: without the fluctuation term the prediction is many errors away."""
    n, seeds = 64, 3000
    net = nk.mlp(2, n, W_std=1.5, b_std=0.3, activation=nk.Tanh())
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y = torch.sin(2 * x[:3, 0])
    stats = nk.finite_width(net, x)
    theta, shift = stats.ntk[-1][:, :3], stats.ntk_shift[-1][:, :3] / n
    times = np.array([0.5, 2.0]) / np.linalg.eigvalsh(stats.ntk[-1][:3, :3].numpy()).min()
    kernel, first, second = theory._kernel_parts(theta, shift, stats.ntk_covariance[:, :3, :, :3], y, times)
    # `times` are the book's (unit rate on ½ Σ): learning_rate = N = 3 in ntklab's convention
    samples = ensemble_samples(net, x[:3], y, x[3:], times, seeds, learning_rate=3, first_order=False)
    shift_mc, error = samples["kernel"] - kernel.numpy(), samples["kernel_se"]
    z = (shift_mc - (first + second).numpy()) / error
    assert np.abs(z).max() < 4, z
    assert np.abs((shift_mc - first.numpy()) / error).max() > 8
