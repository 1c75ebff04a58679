"""Analytic kernels and GD predictions against neural-tangents 0.6.5 (tests/data/neural_tangents).

All off-diagonal and x1-vs-x2 entries must agree to 1e-10 (float64).  On the
diagonal of x1-vs-x1 kernels neural-tangents evaluates arccos at a correlation
rounded to 1 - O(1e-16), whose square-root singularity turns that rounding into
errors of ~1e-8 (ReLU NTK) and ~1e-4 (two Sign layers); ntklab keeps identical
inputs at correlation exactly 1, so its diagonal is checked against the exact
scalar recursion instead, and nt's diagonal only within its rounding.
"""
import numpy as np
import pytest
import torch

import ntklab as nk
from ntklab import predict

ACTIVATIONS = {"relu": (nk.Relu, torch.relu), "erf": (nk.Erf, torch.erf),
               "sign": (nk.Sign, torch.sign), "gelu": (nk.Gelu, torch.nn.functional.gelu)}
FC_CASES = [f"fc/{i}" for i in range(16)]


def fc_net(case):
    act = ACTIVATIONS[case["activation"]][0]
    def dense(width):
        return nk.Dense(width, case["W_std"], case["b_std"], case["parameterization"])
    layers = []
    for _ in range(case["hidden_layers"]):
        layers += [dense(case["width"]), act()]
    return nk.serial(*layers, dense(case["out"]))


def exact_diagonal(case, x):
    """Diagonal NNGP/NTK by the scalar recursion at correlation 1, with the 1-D
    Gaussian expectations E[phi(sqrt(q) z)^2], E[phi'(sqrt(q) z)^2] by 200-node
    Gauss-Hermite (even node count: exact for the piecewise-polynomial ReLU/sign)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(200)
    weights = torch.tensor(weights / weights.sum(), dtype=torch.float64)
    nodes = torch.tensor(nodes, dtype=torch.float64)
    phi = ACTIVATIONS[case["activation"]][1]
    w2, b2 = case["W_std"] ** 2, case["b_std"] ** 2
    standard = case["parameterization"] == "standard"
    x = torch.as_tensor(x)
    q = (x * x).sum(1) / x.shape[1]
    theta, width = torch.zeros_like(q), x.shape[1]
    for layer in range(case["hidden_layers"] + 1):
        if standard:  # Theta' = n_in q + 1 + W^2 Theta, with the input variance q
            theta = width * q + 1 + w2 * theta
        q = w2 * q + b2
        if not standard:  # Theta' = q' + W^2 Theta
            theta = q + w2 * theta
        if layer == case["hidden_layers"]:
            break
        z = torch.sqrt(q)[:, None] * nodes[None, :]
        zz = z.clone().requires_grad_(True)
        dphi = torch.autograd.grad(phi(zz).sum(), zz)[0]
        theta = theta * (weights * dphi ** 2).sum(1)
        q = (weights * phi(z) ** 2).sum(1)
        width = case["width"]
    return q, theta


@pytest.mark.parametrize("name", FC_CASES)
def test_fully_connected_kernels_match_neural_tangents(reference, name):
    cases, z = reference
    case = cases[name]
    net = fc_net(case)
    x1, x2 = z[case["x1"]], z[case["x2"]]
    k12, k11 = net.kernel(x1, x2), net.kernel(x1)
    off = ~np.eye(len(x1), dtype=bool)
    for g in ("nngp", "ntk"):
        assert getattr(k12, g).dtype == torch.float64
        np.testing.assert_allclose(getattr(k12, g).numpy(), z[f"{name}/{g}_x1x2"], rtol=0, atol=1e-10)
        np.testing.assert_allclose(getattr(k11, g).numpy()[off], z[f"{name}/{g}_x1x1"][off],
                                   rtol=0, atol=1e-10)
    q, theta = exact_diagonal(case, x1)
    np.testing.assert_allclose(k11.nngp.diagonal().numpy(), q.numpy(), rtol=1e-10, atol=0)
    np.testing.assert_allclose(k11.ntk.diagonal().numpy(), theta.numpy(), rtol=1e-10, atol=0)
    for g in ("nngp", "ntk"):  # nt's own diagonal, within its arccos rounding
        np.testing.assert_allclose(getattr(k11, g).diagonal().numpy(),
                                   np.diag(z[f"{name}/{g}_x1x1"]), rtol=2e-4, atol=0)


@pytest.mark.parametrize("t", [None, 1.0, 10.0])
@pytest.mark.parametrize("get", ["ntk", "nngp"])
def test_gradient_descent_mse_ensemble_matches_neural_tangents(reference, t, get):
    cases, z = reference
    case = cases["pred/0"]
    net = fc_net({**case, "width": 512, "out": 1})
    predictor = predict.gradient_descent_mse_ensemble(
        net, z["pred/x_train"], z["pred/y_train"], diag_reg=case["diag_reg"],
        learning_rate=case["learning_rate"])
    mean, cov = predictor(t, z["pred/x_test"], get, compute_cov=True)
    suffix = "tinf" if t is None else f"t{t}"
    np.testing.assert_allclose(mean.numpy(), z[f"pred/0/{get}_mean_{suffix}"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(cov.numpy(), z[f"pred/0/{get}_cov_{suffix}"], rtol=0, atol=1e-10)
