"""A trained network against its own expansion around initialization (Roberts, Yaida & Hanin
2022, ch. 11: a network is a quadratic model in its parameters up to the cubic and higher terms,
with features J = ∂f/∂θ -- the empirical NTK Θ = J Jᵀ -- and meta kernel given by the dNTK):

    f(x; θ₀ + Δ) = f₀(x) + J(x)·Δ + ½ Δᵀ H(x) Δ + O(Δ³),
    mu_d0,d1,d2 = J(x_d1)ᵀ H(x_d0) J(x_d2)      (the quadratic model's mu with φ = J, εψ = H).

The kernel (linearized-network) and nearly-kernel predictions of training with labels y - f₀ are
`studies.quadratic.nearly_kernel_from_kernels` of (Θ, mu): exact to second order for a model that
is quadratic in its parameters (tested), but a network's cubic term -- the ddNTK -- and the
second-order dNTK terms enter its trained output at the same order 1/n as the first-order dNTK
term (PDLT ch. 11), so for networks this expansion is a measurement of how much of the 1/n
correction the dNTK alone explains, not the book's full 1/n prediction.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, jvp, vmap

from .._validation import positive_int


def expansion_kernels(model: nn.Module, x_train: torch.Tensor, x_test: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(f₀ [D], Θ [D, D], mu [D, D, N]) of a single-output `model` at its current parameters, over
    the D = N + M points (x_train first): Jacobians by `jacrev`, H(x_d0) J(x_a) by forward-over-
    reverse (`jvp` of `grad`), one pass per point d0, vectorized over the training points."""
    params = {name: p.detach() for name, p in model.named_parameters()}
    points = torch.cat([x_train, x_test])

    def output(p, x):
        return functional_call(model, p, (x[None],)).reshape(-1)[0]

    with torch.no_grad():
        f0 = model(points).reshape(len(points), -1)
    if f0.shape[1] != 1:
        raise ValueError(f"model must have one output, got {f0.shape[1]}")
    jac = vmap(jacrev(output), (None, 0))(params, points)
    flat = torch.cat([j.reshape(len(points), -1) for j in jac.values()], 1)            # [D, P]
    train_tangents = {name: j[:len(x_train)] for name, j in jac.items()}

    def hessian_times(x, tangent):
        return jvp(lambda p: grad(output)(p, x), (params,), (tangent,))[1]

    meta = torch.empty(len(points), len(points), len(x_train), dtype=flat.dtype)
    for d0, x in enumerate(points):
        products = vmap(hessian_times, (None, 0))(x, train_tangents)                   # [N, ...]
        meta[d0] = flat @ torch.cat([h.reshape(len(x_train), -1) for h in products.values()], 1).T
    return f0[:, 0], flat @ flat.T, meta


def train_full_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, learning_rate: float,
                     max_steps: int = 100_000, tolerance: float = 1e-10) -> int:
    """Full-batch GD θ ← θ - η ∇ ½ Σ (f(x_a) - y_a)² in place, until max |f - y| < tolerance ×
    max |y| (or `max_steps`, then RuntimeError). Returns the number of steps."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    scale = float(y.abs().max())
    for step in range(positive_int(max_steps, "max_steps")):
        residual = model(x).reshape(y.shape) - y
        if float(residual.detach().abs().max()) < tolerance * scale:
            return step
        gradients = torch.autograd.grad(0.5 * residual.square().sum(), parameters)
        with torch.no_grad():
            for p, g in zip(parameters, gradients):
                p.sub_(learning_rate * g)
    raise RuntimeError(f"GD did not reach max |f - y| < {tolerance} x max|y| in {max_steps} steps; "
                       f"raise max_steps or the learning rate")
