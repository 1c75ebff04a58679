"""One gradient-descent step of a real network is kernel regression with its tangent kernel,
up to O(η²) (lectures 20-21; Jacot et al. 2018):

    f(w_{t+1}, x) - f(w_t, x) = -(η/|Y|) Σ_i Σ_b (f_b(w_t, x_i) - y_ib) H_t(x, x_i)_{ab} + R(η),

for the loss L = ||f(X) - Y||² / (2|Y|) (ntklab's one learning-rate convention), with
H_t = J_t J_t^T the empirical NTK at the current weights (`empirical_ntk(mode="full")`).  The
remainder is R(η) = (η²/2) g^T ∇²f(w_t, x) g + O(η³) with g = ∇L: `one_step_remainder` measures
|R| against η (slope 2 on a log-log plot) without modifying the model.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

import ntklab as nk
from ..fits import power_law


def one_step_remainder(model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor,
                       x_test: torch.Tensor, learning_rates) -> dict:
    """For each learning rate η: the largest |R(η)| over the test outputs, relative to the largest
    |first-order change| (the kernel-regression step), and the fitted log-log slope of |R| in η.
    `model` maps [N, ...] to [N, O]; it is copied, never trained."""
    rates = np.asarray(learning_rates, dtype=float)
    if rates.ndim != 1 or len(rates) < 2 or (rates <= 0).any():
        raise ValueError(f"learning_rates must be at least two positive numbers, got {learning_rates!r}")
    with torch.no_grad():
        f_train, f_test = model(x_train), model(x_test)
    if f_train.shape != y_train.shape:
        raise ValueError(f"y_train has shape {tuple(y_train.shape)}; the model's outputs on x_train "
                         f"have shape {tuple(f_train.shape)}")
    kernel = nk.empirical_ntk(model, x_test, x_train, mode="full", progress=False)  # [Nt, N, O, O]
    residual = f_train - y_train
    direction = -torch.einsum("tiab,ib->ta", kernel, residual) / y_train.numel()   # per unit of η
    remainders, relative = [], []
    for rate in rates:
        stepped = copy.deepcopy(model)
        trained = [p for p in stepped.parameters() if p.requires_grad]
        loss = nk.conventions.mean_squared_loss(stepped(x_train), y_train)
        with torch.no_grad():
            for p, g in zip(trained, torch.autograd.grad(loss, trained), strict=True):
                p.sub_(rate * g)
            change = stepped(x_test) - f_test
        remainder = (change - rate * direction).abs().max().item()
        remainders.append(remainder)
        relative.append(remainder / (rate * direction.abs().max().item()))
    slope, _ = power_law(rates, np.array(remainders))
    return {"learning_rates": rates.tolist(), "remainder": remainders, "relative_remainder": relative,
            "slope": slope}
