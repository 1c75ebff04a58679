"""Gradient descent on a network with its tangent kernel tracked (lectures 20-22).

`train` runs full-batch GD (`batch_size=None`) or mini-batch SGD on the mean
squared loss (ntklab's one convention, neural-tangents'; see `ntklab.predict`)

    L(w) = ||f(w; X) - Y||^2 / (2 |Y|),                 w <- w - eta grad L_B(w),

with |Y| = y_train.size; for a mini-batch B, L_B is the same mean over the batch (an
unbiased estimate of L, so `learning_rate` means the same for GD and SGD).  In
function space the step is f <- f - (eta / |Y|) Theta (f - Y), exactly the
discretization of `predict.gradient_descent_mse_ensemble` at the same
`learning_rate`.  At the steps in
`record` it stores train/test loss and error, the empirical NTK
H_t(x, x') = <grad_w f(w_t; x), grad_w f(w_t; x')> on a probe set, the relative
kernel change ||H_t - H_0||_F / ||H_0||_F and the relative weight change
||w_t - w_0|| / ||w_0||.

The linearized model f_lin(x; w) = f(x; w_0) + J_0(x) (w - w_0) is trained
alongside on the same batches with the same step.  Its gradient J_0^T r is
constant in w, so its predictions evolve in function space exactly as
    f_lin(x) <- f_lin(x) - (eta / |Y_B|) Theta_0(x, X_B) (f_lin(X_B) - y_B),
with the empirical NTK Theta_0 at initialization (Lee et al. 2019, eq. 8-9);
this is what is computed (no second copy of the weights is needed).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ._validation import as_targets, positive, positive_int, record_steps
from .kernels.empirical import empirical_ntk
from .kernels.model_inputs import model_input, probe_outputs, select_parameters


@dataclass
class TrainingHistory:
    """What `train` recorded; `rows` is one dict of scalars per recorded step."""
    steps: list[int]
    rows: list[dict[str, float]]
    kernels: list[torch.Tensor]            # empirical NTK (trace mode) on the probe set
    test_predictions: list[torch.Tensor]   # f(w_t; x_test) [N_test, O]
    linear_test_predictions: list[torch.Tensor] = field(default_factory=list)

    def column(self, name: str) -> np.ndarray:
        return np.array([row[name] for row in self.rows], dtype=float)


def classification_error(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """Sign disagreement for one output, arg-max disagreement for several."""
    if prediction.shape[1] == 1:
        return float((torch.sign(prediction) != torch.sign(target)).double().mean())
    return float((prediction.argmax(1) != target.argmax(1)).double().mean())


def train(model: nn.Module, x_train, y_train, *, steps: int, learning_rate: float,
          batch_size: int | None = None, x_test=None, y_test=None, x_probe=None,
          record: int | Sequence[int] = 20, params: Sequence[str] | None = None,
          track_kernel: bool = True, linearized: bool = True, seed: int = 0,
          max_memory: int | str | None = None, progress: bool | None = None) -> TrainingHistory:
    """Train `model` in place by GD/SGD on ||f - y||^2 / (2 |y|) and record kernel drift.

    `record`: a count of geometrically spaced steps, or a list of steps (as in
    `predict.gradient_descent_alpha`).
    `x_probe` (default: up to 64 training points) is where the empirical NTK is
    tracked; `params` restricts training (and the kernel) to named parameters.
    The rows hold: step, train_loss (the loss above), train_mse, test_mse,
    train_error, test_error, kernel_change, weight_change, and with
    `linearized`, lin_test_mse and lin_distance = ||f - f_lin||/||f_lin|| on x_test."""
    steps = int(steps)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    eta = positive(learning_rate, "learning_rate")
    chosen = select_parameters(model, params)
    reference = next(iter(chosen.values()))
    x_train = model_input(x_train, "x_train", reference)
    y, _ = as_targets(y_train, len(x_train), "y_train", reference.dtype, reference.device)
    n = len(x_train)
    if x_test is not None:
        x_test = model_input(x_test, "x_test", reference)
        y_te = (None if y_test is None else
                as_targets(y_test, len(x_test), "y_test", reference.dtype, reference.device)[0])
    batch = n if batch_size is None else positive_int(batch_size, "batch_size")
    if batch > n:
        raise ValueError(f"batch_size={batch} exceeds the {n} training samples")
    x_probe = x_train[:min(n, 64)] if x_probe is None else model_input(x_probe, "x_probe", reference)
    record_at = record_steps(record, steps)
    generator = torch.Generator().manual_seed(seed)

    if x_test is not None and x_test.shape[1:] != x_train.shape[1:]:
        raise ValueError(f"x_test must have samples of shape {tuple(x_train.shape[1:])} like x_train, "
                         f"got {tuple(x_test.shape)}")
    with torch.no_grad():
        f0_train = probe_outputs(model, x_train, "x_train", deterministic=False)
        if f0_train.shape[1] != y.shape[1]:
            raise ValueError(f"the model has {f0_train.shape[1]} outputs but y_train has "
                             f"{y.shape[1]} columns")
        f0_test = None if x_test is None else model(x_test).reshape(len(x_test), -1)
    w0 = {name: p.detach().clone() for name, p in chosen.items()}
    w0_norm = math.sqrt(sum(float(p.square().sum()) for p in w0.values()))
    if linearized:
        # Theta_0 between all points and the training points, [N_all, N, O, O]
        x_all = x_train if x_test is None else torch.cat([x_train, x_test])
        theta0 = empirical_ntk(model, x_all, x_train, mode="full", params=list(chosen),
                               max_memory=max_memory, progress=False)
        lin = torch.cat([f0_train] + ([] if f0_test is None else [f0_test]))
    h0 = (empirical_ntk(model, x_probe, mode="trace", params=list(chosen), max_memory=max_memory,
                        progress=False) if track_kernel else None)
    history = TrainingHistory([], [], [], [])
    loss_fn = lambda out, target: 0.5 * (out - target).square().mean()  # noqa: E731

    def snapshot(step: int) -> None:
        with torch.no_grad():
            f_train = model(x_train).reshape(n, -1)
            row = {"step": step, "train_loss": float(loss_fn(f_train, y)),
                   "train_mse": float((f_train - y).square().mean()),
                   "train_error": classification_error(f_train, y)}
            if x_test is not None:
                f_test = model(x_test).reshape(len(x_test), -1)
                history.test_predictions.append(f_test.clone())
                if y_te is not None:
                    row["test_mse"] = float((f_test - y_te).square().mean())
                    row["test_error"] = classification_error(f_test, y_te)
            row["weight_change"] = math.sqrt(sum(float((p - w0[name]).square().sum())
                                                 for name, p in chosen.items())) / w0_norm
        if track_kernel:
            h = empirical_ntk(model, x_probe, mode="trace", params=list(chosen),
                              max_memory=max_memory, progress=False)
            history.kernels.append(h)
            row["kernel_change"] = float((h - h0).norm() / h0.norm())
        if linearized:
            row["lin_train_loss"] = float(loss_fn(lin[:n], y))
            if x_test is not None:
                lin_test = lin[n:]
                history.linear_test_predictions.append(lin_test.clone())
                row["lin_distance"] = float((f_test - lin_test).norm() / lin_test.norm().clamp_min(1e-300))
                if y_te is not None:
                    row["lin_test_mse"] = float((lin_test - y_te).square().mean())
        history.steps.append(step)
        history.rows.append(row)

    bar = tqdm(range(steps + 1), desc="train", leave=False, disable=(steps < 200) if progress is None
               else not progress)
    for step in bar:
        if step in record_at:
            snapshot(step)
            if not math.isfinite(history.rows[-1]["train_loss"]):
                raise FloatingPointError(f"training diverged at step {step} (loss is not finite); "
                                         f"lower learning_rate={eta:g}")
        if step == steps:
            break
        index = (torch.arange(n) if batch == n else
                 torch.randperm(n, generator=generator)[:batch]).to(x_train.device)
        model.zero_grad(set_to_none=True)
        out = model(x_train[index]).reshape(len(index), -1)
        loss = loss_fn(out, y[index])
        grads = torch.autograd.grad(loss, list(chosen.values()))
        with torch.no_grad():
            for p, g in zip(chosen.values(), grads):
                p.sub_(eta * g)
            if linearized:
                residual = lin[index] - y[index]                      # [B, O]
                lin -= eta / residual.numel() * torch.einsum("ijab,jb->ia", theta0[:, index], residual)
    return history
