"""Over-parameterization, implicit bias and double descent (lecture 20; Belkin et al. 2019;
Jacot et al. 2018; Lee et al. 2019).

* Implicit bias: GD on the squared loss from the symmetric initialization (f(x; θ₀) = 0)
  interpolates the training data, and as the width grows the interpolant approaches the
  minimum-RKHS-norm interpolant of the infinite-width NTK, f*(x) = Θ(x, X) Θ(X, X)⁻¹ y:
  `implicit_bias_distance` trains a real network and measures the distance.
* Double descent: least-squares regression on m random ReLU features
  φ_j(x) = relu(σ_w w_j·x/√d + σ_b b_j)/√m (the hidden layer of `nk.mlp(1, m)`), with the
  minimum-norm solution when m ≥ N (the ridgeless limit of ridge regression): the test error
  peaks at the interpolation threshold m = N and falls again as m grows, towards ridgeless
  kernel regression with the NNGP kernel of the same layer (m → ∞).
"""
from __future__ import annotations

import math

import torch
from torch import nn

import ntklab as nk
from ..._core.validation import positive_int
from ..spectrum import inverse_largest_eigenvalue


def train_full_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, learning_rate: float,
                     max_steps: int = 100_000, tolerance: float = 1e-10) -> int:
    """Full-batch GD θ ← θ - learning_rate ∇L in place on ntklab's loss L = ||f - y||² / (2|Y|)
    (`nk.conventions.mean_squared_loss`), until max |f - y| < tolerance × max |y| (or
    `max_steps`, then RuntimeError). Returns the number of steps."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    scale = float(y.abs().max())
    for step in range(positive_int(max_steps, "max_steps")):
        prediction = model(x).reshape(y.shape)
        if float((prediction.detach() - y).abs().max()) < tolerance * scale:
            return step
        gradients = torch.autograd.grad(nk.conventions.mean_squared_loss(prediction, y), parameters)
        with torch.no_grad():
            for p, g in zip(parameters, gradients, strict=True):
                p.sub_(learning_rate * g)
    raise RuntimeError(f"GD did not reach max |f - y| < {tolerance} x max|y| in {max_steps} steps; "
                       f"raise max_steps or the learning rate")


def random_relu_features(x: torch.Tensor, m: int, *, W_std: float, b_std: float, seed: int) -> torch.Tensor:
    """The feature map φ(x) [N, m]: relu(W_std w_j·x/√d + b_std b_j)/√m, w_j ~ N(0, I),
    b_j ~ N(0, 1); Σ_j φ_j(x)φ_j(x') → the NNGP of `nk.serial(nk.Dense(m, W_std, b_std),
    nk.Relu(), nk.Dense(1))`.  (`studies.representation.random_features_ridge` is the
    random-features baseline of Algorithm 1: a fitted predictor, not a feature map.)"""
    m = positive_int(m, "m")
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(x.shape[1], m, generator=g, dtype=x.dtype)
    b = torch.randn(m, generator=g, dtype=x.dtype)
    return torch.relu(W_std * x @ w / math.sqrt(x.shape[1]) + b_std * b) / math.sqrt(m)


def random_features_regression(x_train, y_train, x_test, m: int, *, W_std: float = math.sqrt(2),
                               b_std: float = 0.5, seed: int = 0) -> torch.Tensor:
    """Test predictions of the least-squares fit on m random features: the minimum-norm
    solution (pseudo-inverse) below and above the interpolation threshold m = N."""
    features = random_relu_features(torch.cat([x_train, x_test]), m, W_std=W_std, b_std=b_std, seed=seed)
    train, test = features[:len(x_train)], features[len(x_train):]
    coefficients = torch.linalg.pinv(train, rtol=1e-12) @ y_train
    return test @ coefficients


def ridgeless_kernel_prediction(x_train, y_train, x_test, *, W_std: float = math.sqrt(2),
                                b_std: float = 0.5) -> torch.Tensor:
    """The m → ∞ limit: K(x, X) K(X, X)⁻¹ y with the features' NNGP kernel."""
    net = nk.serial(nk.Dense(1, W_std=W_std, b_std=b_std), nk.Relu(), nk.Dense(1, b_std=0.0))
    return net.kernel(x_test, x_train, get="nngp") @ torch.linalg.solve(net.kernel(x_train, get="nngp"), y_train)


def implicit_bias_distance(net: nk.Serial, x_train, y_train, x_test, *, seed: int = 0,
                           tolerance: float = 1e-6, max_steps: int = 200_000) -> dict:
    """Train `net`'s finite network from the symmetric initialization (f₀ = 0) by full-batch GD
    (learning rate |Y|/λ_max, λ_max of its empirical NTK on the training set: the function-space
    step 1/λ_max) until max |f - y| < tolerance max |y|;
    returns the relative distance of its test predictions to the ridgeless infinite-width NTK
    interpolant, the steps taken and the training residual."""
    model = net.module(x_train.shape[1], seed=seed, symmetric=True, dtype=x_train.dtype)
    y = y_train.reshape(len(y_train), -1)
    learning_rate = y.numel() * inverse_largest_eigenvalue(nk.empirical_ntk(model, x_train, progress=False))
    steps = train_full_batch(model, x_train, y, learning_rate=learning_rate, max_steps=max_steps,
                             tolerance=tolerance)
    ntk = net.kernel(x_train, get="ntk")
    target = net.kernel(x_test, x_train, get="ntk") @ torch.linalg.solve(ntk, y)
    with torch.no_grad():
        trained, residual = model(x_test), float((model(x_train) - y).abs().max())
    return {"distance": float((trained - target).norm() / target.norm()), "steps": steps,
            "train_residual": residual}
