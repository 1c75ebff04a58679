"""Lazy training (lectures 21-22; Jacot et al. 2018; Lee et al. 2019): as the width n of a
network grows, gradient descent leaves its tangent kernel where it started and the trained
network follows the infinite-width NTK prediction.

The networks are one-hidden-layer MLPs in the NTK parameterization,
    f(x) = W2 relu(W1 x / sqrt(d) + 0.1 b1) / sqrt(n) + 0.1 b2,
made zero at initialization by the mirrored construction (`symmetric=True`), trained by
full-batch GD in ntklab's convention (`ntklab.conventions`: L = ||f - y||^2 / (2 |Y|)) at the
learning rate |Y| / lambda_max(Theta), i.e. the function-space step
f <- f - (1 / lambda_max) Theta (f - y) of the infinite-width model.  Per width and seed,
`width_sweep` measures the training loss, the relative kernel and weight changes, and the
distances of the test outputs to the infinite-width predictions (gradient flow, and the same
discrete GD on the infinite-width model); `monte_carlo_ntk` the Monte Carlo mean of the
empirical NTK at initialization against the analytic one; `linearization_distances` the
distance to the linearized network of a ReLU and a smooth (GELU) network.
"""
from __future__ import annotations

import math

import numpy as np
import torch

import ntklab as nk
from ..data import RegressionTask
from ..fits import power_law, power_law_slope
from ..report import mean_std

LOSS_FRACTION = 1e-3
"""Train until the infinite-width model's loss is this fraction of its initial value."""

SMOOTHNESS = {"ReLU": nk.Relu(), "GELU": nk.Gelu()}
"""Activations compared for the distance to the linearized network (the kink matters)."""

QUANTITIES = ("train_loss_fraction", "kernel_change", "weight_change", "ntk_flow_distance",
              "ntk_gd_distance", "lin_distance")
"""What `summarize` averages per task and width (all but the first are fitted against width)."""


def architecture(width: int, activation: nk.Layer | None = None) -> nk.Serial:
    """The one-hidden-layer MLP of the module docstring (ReLU unless `activation`)."""
    return nk.mlp(1, width, W_std=math.sqrt(2), b_std=0.1, readout_W_std=1.0, activation=activation)


def remaining_loss_fraction(evals: torch.Tensor, evecs: torch.Tensor, y: torch.Tensor, eta: float,
                            steps: int) -> float:
    """Training loss of the infinite-width model after `steps` GD steps over its initial value:
    sum_i (1 - eta lambda_i)^{2s} (v_i . y)^2 / ||y||^2 (eta the function-space step)."""
    weights = (evecs.T @ y).square()
    return float(((1 - eta * evals).abs() ** (2 * steps) * weights).sum() / weights.sum())


def steps_to_fit(evals: torch.Tensor, evecs: torch.Tensor, y: torch.Tensor, eta: float,
                 max_steps: int) -> int:
    """Fewest GD steps (on a log grid up to `max_steps`) leaving LOSS_FRACTION of the initial loss."""
    for s in np.unique(np.geomspace(1, max_steps, 200).astype(int)):
        if remaining_loss_fraction(evals, evecs, y, eta, int(s)) <= LOSS_FRACTION:
            return int(s)
    return max_steps


def schedule(x: torch.Tensor, y: torch.Tensor, max_steps: int, activation: nk.Layer | None = None) -> dict:
    """The infinite-width NTK on the training set, its eigen-decomposition, the function-space
    step eta = 1 / lambda_max and the steps that bring its loss to LOSS_FRACTION."""
    analytic = architecture(1, activation)   # the infinite-width kernels do not depend on the width
    theta = analytic.kernel(x, get="ntk")
    evals, evecs = torch.linalg.eigh(theta)
    eta = 1.0 / float(evals[-1])
    steps = steps_to_fit(evals, evecs, y, eta, max_steps)
    return {"analytic": analytic, "theta": theta, "evals": evals, "evecs": evecs, "eta": eta,
            "steps": steps, "learning_rate": eta * y.numel()}   # L = ||f - y||^2 / (2 |Y|)


def _infinite_width_predictions(task: RegressionTask, plan: dict, record: list[int]):
    """Test outputs of the infinite-width model at the recorded steps: gradient flow
    (`gradient_descent_mse_ensemble`, t = step) and the same discrete GD (f <- f - eta Theta (f - y))."""
    times = torch.tensor(record, dtype=torch.float64)
    flow = nk.predict.gradient_descent_mse_ensemble(plan["analytic"], task.x_train, task.y_train,
                                                    learning_rate=plan["learning_rate"])
    flow_test = flow(t=times, x_test=task.x_test, get="ntk")                 # [T, N_test]
    theta_test = plan["analytic"].kernel(task.x_test, task.x_train, get="ntk")
    discrete = nk.predict.gradient_descent_alpha(plan["theta"], task.y_train, steps=plan["steps"],
                                                 learning_rate=plan["learning_rate"], k_test_train=theta_test,
                                                 space="function", record=record)
    return flow_test, discrete.f_test


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def train_one(task: RegressionTask, plan: dict, record: list[int], width: int, seed: tuple[int, int],
              probe: int, targets: tuple) -> list[dict]:
    """Rows per recorded step of one trained network (`seed`: its index in the run and the
    model's seed): `nk.train`'s records and the distances of its test outputs to the
    infinite-width `targets` (flow, discrete GD) at the same step."""
    index, model_seed = seed
    model = architecture(width).module(in_shape=(task.x_train.shape[1],), seed=model_seed, symmetric=True,
                                       dtype=torch.float64)
    history = nk.train(model, task.x_train, task.y_train, steps=plan["steps"],
                       learning_rate=plan["learning_rate"], x_test=task.x_test, y_test=task.y_test,
                       x_probe=task.x_train[:probe], record=record, progress=False)
    rows = []
    for i, row in enumerate(history.rows):
        f_test = history.test_predictions[i][:, 0]
        distances = {name: _relative(f_test, target[i]) if i else 0.0
                     for name, target in zip(("ntk_flow_distance", "ntk_gd_distance"), targets, strict=True)}
        rows.append({"task": task.name, "width": width, "seed": index, **row, **distances})
    return rows


def width_sweep(task: RegressionTask, widths, seeds: int, *, max_steps: int, record: int, probe: int,
                seed: int, bar=None) -> tuple[list[dict], list[dict], dict]:
    """Train every width and seed on one task: (rows per recorded step, the last row of each
    run with its loss fraction, and the schedule: eta, steps, lambda_max, lambda_min and the
    infinite-width model's remaining loss fraction)."""
    x, y = task.x_train, task.y_train
    plan = schedule(x, y, max_steps)
    steps = plan["steps"]
    recorded = sorted({0, steps, *np.unique(np.geomspace(1, steps, record).astype(int)).tolist()})
    targets = _infinite_width_predictions(task, plan, recorded)
    step_rows, run_rows = [], []
    for width in widths:
        for s in range(seeds):
            rows = train_one(task, plan, recorded, width, (s, seed * 1000 + s), probe, targets)
            step_rows += rows
            run_rows.append({**rows[-1], "eta": plan["eta"], "steps": steps,
                             "train_loss_fraction": rows[-1]["train_loss"] / rows[0]["train_loss"]})
            if bar is not None:
                bar.update()
    evals = plan["evals"]
    info = {"eta": plan["eta"], "steps": steps, "lambda_max": float(evals[-1]), "lambda_min": float(evals[0]),
            "flow_final_train_loss_fraction": remaining_loss_fraction(evals, plan["evecs"], y, plan["eta"], steps)}
    return step_rows, run_rows, info


def monte_carlo_ntk(task: RegressionTask, widths, samples: int, *, probe: int, seed: int, bar=None) -> list[dict]:
    """Per width: the relative Frobenius error of the mean of `samples` empirical NTKs at
    initialization against the analytic NTK, and the mean error of a single one."""
    x = task.x_train[:probe]
    analytic = architecture(1).kernel(x, get="ntk")
    rows = []
    for width in widths:
        singles: list[float] = []

        def each(_, kernels, singles=singles):
            singles.append(_relative(kernels["ntk"], analytic))
        mc = nk.monte_carlo_kernel(architecture(width), x, n_samples=samples, get="ntk",
                                   seed=10 ** 6 + seed * 1000, dtype=torch.float64, progress=False, each=each)
        assert mc.ntk is not None   # get="ntk"
        rows.append({"task": task.name, "width": width, "mc_seeds": samples,
                     "mc_mean_error": _relative(mc.ntk, analytic), "single_seed_error": float(np.mean(singles))})
        if bar is not None:
            bar.update()
    return rows


def linearization_distances(task: RegressionTask, widths, seeds: int, *, max_steps: int, seed: int) -> list[dict]:
    """||f_T - f_lin,T|| / ||f_lin,T|| on the test set against width, for a ReLU and a smooth
    (GELU) network each trained to the same fraction of its own infinite-width loss: the smooth
    network's distance falls as 1/n (the effective theory), ReLU's between n^-3/4 and n^-1/2
    (the units whose preactivation crosses the kink during training, a fraction ~ n^-1/2 of them,
    each off by ~ n^-1/2, add up with random (n^-3/4) to coherent (n^-1/2) signs)."""
    rows = []
    for name, activation in SMOOTHNESS.items():
        plan = schedule(task.x_train, task.y_train, max_steps, activation)
        for width in widths:
            for s in range(seeds):
                model = architecture(width, activation).module(
                    in_shape=(task.x_train.shape[1],), seed=seed * 1000 + s, symmetric=True, dtype=torch.float64)
                history = nk.train(model, task.x_train, task.y_train, steps=plan["steps"],
                                   learning_rate=plan["learning_rate"], x_test=task.x_test,
                                   record=[plan["steps"]], track_kernel=False, progress=False)
                rows.append({"activation": name, "width": width, "seed": s, "steps": plan["steps"],
                             "lin_distance": history.rows[-1]["lin_distance"]})
    return rows


def slopes_with_errors(run_rows: list[dict], mc_rows: list[dict], task: str) -> dict[str, tuple[float, float]]:
    """Per quantity (QUANTITIES but the first, and the Monte Carlo error): the log-log slope
    against width fitted to every run (all seeds), with its standard error (`power_law_slope`;
    nan without three positive points)."""
    out = {}
    for q, rows in [*((q, run_rows) for q in QUANTITIES[1:]), ("mc_mean_error", mc_rows)]:
        mine = [r for r in rows if r["task"] == task]
        try:
            out[q] = power_law_slope([r["width"] for r in mine], [r[q] for r in mine])
        except ValueError:
            out[q] = (float("nan"), float("nan"))
    return out


def local_slopes(rows: list[dict], key: str) -> list[float]:
    """Log-log slopes of the geometric mean of `key` over seeds between consecutive widths."""
    widths = sorted({r["width"] for r in rows})
    means = [math.exp(float(np.mean([math.log(r[key]) for r in rows if r["width"] == w]))) for w in widths]
    return [math.log(means[i + 1] / means[i]) / math.log(widths[i + 1] / widths[i]) for i in range(len(widths) - 1)]


def summarize(run_rows: list[dict], mc_rows: list[dict], tasks: list[str]) -> tuple[list[dict], dict]:
    """Per task and width, the mean and sample standard deviation (`mean_std`, ddof = 1) over
    seeds of QUANTITIES and the Monte Carlo error; per task the log-log slopes against width."""
    summary, fits = [], {}
    for task in tasks:
        widths = sorted({r["width"] for r in run_rows if r["task"] == task})
        rows = []
        for width in widths:
            runs = [r for r in run_rows if r["task"] == task and r["width"] == width]
            row = {"task": task, "width": width, "runs": len(runs)}
            for q in QUANTITIES:
                row[q], row[q + "_std"] = mean_std([r[q] for r in runs])
            mc = next(r for r in mc_rows if r["task"] == task and r["width"] == width)
            row["mc_mean_error"] = mc["mc_mean_error"]
            rows.append(row)
        summary += rows
        fits[task] = {q: power_law(widths, [r[q] for r in rows])[0] for q in (*QUANTITIES[1:], "mc_mean_error")}
    return summary, fits
