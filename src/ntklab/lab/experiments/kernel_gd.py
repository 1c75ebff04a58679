"""`ntklab run kernel-gd` -- lecture 21: kernel regression and gradient descent on alpha.

For a 1-D and a d-dimensional regression task and three kernels (Gaussian,
ball, NTK of a 2-hidden-layer ReLU net), it
  1. interpolates, alpha* = K^-1 y, and plots the interpolants against the data;
  2. runs gradient descent on g(alpha) = ||K alpha - y||^2 (grad g = 2K(K alpha - y))
     and checks that alpha_t -> alpha*, step by step against the exact linear
     prediction alpha_t - alpha* = (I - 2 eta K^2)^t (alpha_0 - alpha*);
  3. checks the function-space identity of each step to machine precision:
       f_{t+1}(x) - f_t(x) = -2 eta sum_i (f_t - y)_i H(x, x_i),
     where H is the tangent kernel of the parametrization: H(x, x') =
     sum_j K(x, x_j) K(x_j, x') for GD on alpha, and H = K for GD in feature
     space (the lecture's form; "-eta" there absorbs the loss's factor 2).
eta is the lecture's step on g(alpha); ntklab's learning_rate (on g / (2 |y|)) is 2 |y| eta.
  4. for real networks (tanh MLPs of several widths, at initialization and after training), the
     same identity with the empirical NTK at the current weights holds up to O(eta^2): the
     remainder's log-log slope in eta (theory 2) and its size against width
     (`studies.gd_step.one_step_remainder`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from tqdm.auto import tqdm

import ntklab as nk
from ... import kernels
from ... import predict
from ..data import RegressionTask, regression_1d, regression_sphere
from ..claims import Claim, mean_se
from ..fits import power_law_slope
from ..report import RunFolder, claims_table, markdown_table, power_guides
from ..studies.gd_step import one_step_remainder
from ...training.loop import train
from . import register

TOLERANCE = 1e-8  # relative distance to K^-1 y that counts as converged
RIDGE_IF_SINGULAR = 1e-2  # relative ridge used only when K is exactly singular


@dataclass(frozen=True)
class Config:
    """Settings of this experiment (the defaults are the full run)."""

    n_train_1d: int = 12
    n_train_sphere: int = 40
    d: int = 5
    radius_1d: float = 0.6
    radius_sphere: float = 1.5
    max_steps: int = 200000
    network_widths: tuple[int, ...] = (64, 256, 1024)
    network_learning_rates: tuple[float, ...] = (0.0125, 0.025, 0.05, 0.1, 0.2)
    network_training_steps: int = 200
    alpha_dynamics: Claim = Claim(
        "GD on alpha: alpha_t - alpha* = (I - 2 eta K^2)^t (alpha_0 - alpha*); max deviation of the relative "
        "error from the prediction", 0.0, 1e-8, "lecture 21 (exact; the tolerance is float64 rounding over the steps)")
    one_step_identity: Claim = Claim(
        "one GD step = -eta sum_i (f - y)_i H(x, x_i) with the tangent kernel H (linear models); max "
        "relative deviation", 0.0, 1e-10, "lecture 21 (exact; the tolerance is float64 rounding)")
    network_remainder_order: Claim = Claim(
        "real networks: the one-step remainder's exponent of eta (mean over the networks)", 2.0, 0.15,
        "lectures 20-21 (Taylor expansion: the kernel step is exact up to O(eta^2))")

    @classmethod
    def quick(cls) -> "Config":
        """Small settings for tests and previews (seconds)."""
        return cls(n_train_1d=8, n_train_sphere=16, max_steps=3000, network_widths=(32, 128),
                   network_training_steps=20)


def network_steps(task: RegressionTask, config: Config) -> list[dict]:
    """One GD step of tanh MLPs (2 hidden layers, NTK parameterization) on the sphere task,
    at initialization and after `network_training_steps` GD steps at learning rate 0.5: the
    remainder of the kernel-regression step against eta."""
    rows = []
    y_train = task.y_train.reshape(len(task.y_train), -1)
    for width in config.network_widths:
        model = nk.mlp(2, width, W_std=1.5, b_std=0.1, activation=nk.Tanh()).module(
            task.x_train.shape[1], seed=0, dtype=torch.float64)
        for when in ("initialization", "trained"):
            if when == "trained":
                train(model, task.x_train, y_train, steps=config.network_training_steps,
                      learning_rate=0.5, record=[config.network_training_steps], track_kernel=False,
                      linearized=False, progress=False)
            result = one_step_remainder(model, task.x_train, y_train, task.x_test[:50],
                                        config.network_learning_rates)
            rows.append({"width": width, "weights": when, "slope": result["slope"],
                         **{f"relative_remainder_eta_{eta:g}": r for eta, r in
                            zip(result["learning_rates"], result["relative_remainder"], strict=True)},
                         "remainders": result["remainder"]})
    return rows


def ntk_net(b_std: float) -> nk.Serial:
    """The NTK kernel's architecture: a 2-hidden-layer ReLU MLP (width irrelevant at infinite width)."""
    return nk.mlp(2, 512, W_std=1.5, b_std=b_std)


def kernel_suite(task: RegressionTask, radius: float):
    """name -> (k(x1, x2), assume_psd)."""
    net = ntk_net(b_std=1.0)
    return {
        f"Gaussian r={radius:g}": (kernels.GaussianKernel(radius), True),
        f"ball r={radius:g}": (kernels.BallKernel(radius), False),
        "NTK 2-hidden ReLU": (lambda a, b=None: net.kernel(a, b, "ntk"), True),
    }


def log_steps(max_steps: int, count: int = 60) -> list[int]:
    """Log-spaced steps s and s + 1 (pairs for the one-step identity)."""
    base = np.unique(np.geomspace(1, max_steps - 1, count).astype(int))
    return sorted(set(base) | set(base + 1) | {0, 1})


def study(task: RegressionTask, name: str, kernel, assume_psd: bool, space: str,
          max_steps: int) -> tuple[dict, dict]:
    """One (task, kernel, space) case: interpolation, GD on alpha (or in function space) against
    its exact linear prediction, and the one-step identity; (metrics row, curves for the figures)."""
    k = kernel(task.x_train)
    k_test = kernel(task.x_test, task.x_train)
    y = task.y_train
    diag_reg = 0.0
    try:
        alpha_star = predict.solve(k, y, assume_psd=assume_psd)
    except ValueError:  # exactly singular (the ball kernel: points with equal neighbourhoods)
        diag_reg = RIDGE_IF_SINGULAR
        k = predict.add_diagonal_regularizer(k, diag_reg)
        alpha_star = predict.solve(k, y, assume_psd=assume_psd)
    evals, evecs = torch.linalg.eigh(k)
    row = {"task": task.name, "kernel": name, "space": space, "n_train": len(y),
           "diag_reg": diag_reg,
           "min_eig": float(evals[0]), "max_eig": float(evals[-1]),
           "psd": bool(evals[0] > 0),
           "interp_train_max_abs_err": float((k @ alpha_star - y).abs().max()),
           "interp_test_mse": float(((k_test @ alpha_star - task.y_test) ** 2).mean())}
    if space == "function" and evals[0] <= 0:
        row["note"] = "skipped: function-space GD needs a positive definite kernel"
        return row, {}
    # contraction factor per step in each eigendirection
    path = predict.gradient_descent_alpha(k, y, steps=max_steps, k_test_train=k_test, space=space,
                                          record=log_steps(max_steps))
    eta = path.learning_rate / (2 * y.numel())  # the lecture's step on g = ||K alpha - y||^2
    factor = 1 - 2 * eta * (evals ** 2 if space == "alpha" else evals)
    rate = float(factor.abs().max())
    steps = path.steps
    error = (path.alpha - alpha_star).norm(dim=1) / alpha_star.norm()
    coeff0 = evecs.T @ (-alpha_star)
    predicted = torch.stack([(factor.abs() ** s * coeff0.abs()).norm() for s in steps.tolist()])
    predicted = predicted / alpha_star.norm()
    # one-step identity on consecutive recorded steps
    tangent = k_test @ k if space == "alpha" else k_test
    naive = k_test
    assert path.f_test is not None and path.f_train is not None   # k_test_train given
    identity, naive_dev = [], []
    scale = float(path.f_test.abs().max())  # deviations relative to the size of f
    for a in range(len(steps) - 1):
        if steps[a + 1] != steps[a] + 1:
            continue
        change = path.f_test[a + 1] - path.f_test[a]
        residual = path.f_train[a] - y
        identity.append(float((change - (-2 * eta * tangent @ residual)).abs().max()) / scale)
        if a == 0:  # the first step, where f changes most, shows the lecture-form gap best
            naive_dev.append(float((change - (-2 * eta * naive @ residual)).abs().max()
                                   / change.abs().max()))
    needed = math.ceil(math.log(TOLERANCE) / math.log(rate)) if rate < 1 else float("inf")
    row.update({
        "eta": eta, "steps": max_steps,
        "final_rel_error": float(error[-1]),
        "converged": bool(error[-1] < TOLERANCE),
        "steps_needed_by_theory": needed,
        "max_dev_from_predicted_error": float((error - predicted).abs().max()),
        "identity_max_rel_dev": max(identity),
        "lecture_form_with_K_max_rel_dev": max(naive_dev),
    })
    curves = {"steps": steps.numpy(), "error": error.numpy(), "predicted": predicted.numpy(),
              "f_test": path.f_test, "alpha_star": alpha_star, "k_test": k_test}
    return row, curves


def plot_interpolants(task: RegressionTask, results: dict) -> plt.Figure:
    """The 1-D task's interpolants and GD iterates per kernel, beside the data."""
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.6), sharey=True)
    x = task.x_test[:, 0].numpy()
    low, high = float(task.y_test.min()) - 1.5, float(task.y_test.max()) + 1.5
    for ax, (name, curves) in zip(axes, results.items(), strict=True):
        ax.plot(x, task.y_test.numpy(), color="0.6", lw=1, label="target f*")
        ax.plot(x, (curves["k_test"] @ curves["alpha_star"]).numpy(), color="C0", lw=2,
                label="interpolant K(x, X) K^-1 y")
        steps = curves["steps"]
        for color, s in zip(("C1", "C2"), (10, 100), strict=True):
            index = int(np.searchsorted(steps, s))
            if index < len(steps):
                ax.plot(x, curves["f_test"][index].numpy(), color=color, lw=1, ls="--",
                        label=f"GD on alpha, step {steps[index]}")
        ax.scatter(task.x_train[:, 0].numpy(), task.y_train.numpy(), color="k", zorder=3, s=18,
                   label="training data")
        interpolant = curves["k_test"] @ curves["alpha_star"]
        clipped = float(interpolant.min()) < low or float(interpolant.max()) > high
        ax.set_ylim(low, high)
        ax.set_title(name)
        if clipped:
            ax.text(0.02, 0.97, f"interpolant clipped: its range is [{float(interpolant.min()):.0f}, "
                    f"{float(interpolant.max()):.0f}]", transform=ax.transAxes, va="top", fontsize=8)
        ax.set_xlabel("x")
    for ax in axes:
        ax.set_ylabel("f(x)")
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Kernel regression interpolants ({task.description})", y=1.02)
    return fig


def plot_convergence(all_curves: dict) -> plt.Figure:
    """Distance to K^-1 y against the step, measured and predicted, in alpha and function space."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, space in zip(axes, ("alpha", "function"), strict=True):
        for i, ((task, name, sp), curves) in enumerate(all_curves.items()):
            if sp != space or not curves:
                continue
            color = plt.cm.tab20(i % 20)   # one colour per curve (12 curves)
            ax.loglog(curves["steps"][1:], curves["error"][1:], color=color,
                      label=f"{task}: {name}")
            ax.loglog(curves["steps"][1:], curves["predicted"][1:], color=color, ls=":",
                      lw=2.5, alpha=0.7)
        ax.set_title(f"GD in {space} space: ||alpha_t - K^-1 y|| / ||K^-1 y||\n"
                     "(solid: measured, dotted: (I - 2 eta K^2)^t prediction)" if space == "alpha"
                     else f"GD in {space} space (dotted: (I - 2 eta K)^t prediction)")
        ax.set_xlabel("step")
        ax.set_ylabel("relative distance to K^-1 y")
        ax.set_ylim(1e-17, None)  # below float64 resolution the measured error stops falling
        ax.axhline(TOLERANCE, color="0.5", lw=0.8)
        ax.legend(fontsize=6)
    return fig


@register("kernel-gd", "Lecture 21: kernel regression, GD on alpha -> K^-1 y, "
                       "the one-step function-space identity; Gaussian, ball and NTK kernels", config=Config)
def run(folder: RunFolder, config: Config, *, seed: int, device: torch.device) -> dict:
    """Every (task, kernel, space) study, the networks' one-step remainders, the report."""
    tasks = [(regression_1d(config.n_train_1d, seed=seed), config.radius_1d),
             (regression_sphere(config.n_train_sphere, config.d, seed=seed),
              config.radius_sphere)]
    rows, all_curves, figures = [], {}, {}
    jobs = [(task, name, kernel, assume_psd, space) for task, radius in tasks
            for name, (kernel, assume_psd) in kernel_suite(task, radius).items()
            for space in ("alpha", "function")]
    for task, name, kernel, assume_psd, space in tqdm(jobs, desc="kernel-gd", unit="run"):
        row, curves = study(task, name, kernel, assume_psd, space, config.max_steps)
        rows.append(row)
        all_curves[(task.name, name, space)] = curves
    task_1d = tasks[0][0]
    figures["interpolants_1d"] = folder.save_figure("interpolants_1d", plot_interpolants(
        task_1d, {name: c for (t, name, sp), c in all_curves.items() if t == task_1d.name
                  and sp == "alpha"}))
    figures["convergence"] = folder.save_figure("convergence", plot_convergence(all_curves))
    networks = network_steps(tasks[1][0], config)
    figures["network_step"] = folder.save_figure("network_step", plot_network_steps(networks, config))
    folder.write_csv("network_steps.csv", [{k: v for k, v in r.items() if k != "remainders"}
                                           for r in networks])
    folder.config.update({"ntk": repr(ntk_net(b_std=1.0)), "tolerance": TOLERANCE})
    folder.write_csv("metrics.csv", rows)
    ran = [r for r in rows if "identity_max_rel_dev" in r]
    summary = {
        "identity_max_rel_dev": max(r["identity_max_rel_dev"] for r in ran),
        "lecture_form_alpha_space_min_rel_dev": min(r["lecture_form_with_K_max_rel_dev"]
                                                    for r in ran if r["space"] == "alpha"),
        "converged": sum(r["converged"] for r in ran), "runs": len(ran),
        "max_dev_from_predicted_error": max(r["max_dev_from_predicted_error"] for r in ran),
        "network_slopes": [round(r["slope"], 3) for r in networks],
        "network_remainder_width_slope": _width_slope(networks, config),
    }
    folder.claims += [config.alpha_dynamics.check(summary["max_dev_from_predicted_error"], 0.0),
                      config.one_step_identity.check(summary["identity_max_rel_dev"], 0.0),
                      config.network_remainder_order.check(*mean_se([r["slope"] for r in networks]))]
    folder.write_text("report.md", _report(seed, [t for t, _ in tasks], config, summary, rows,
                                           networks, figures, folder.claims))
    return summary


def _width_slope(networks: list[dict], config: Config) -> tuple[float, float]:
    """Slope (± s.e.) of the relative remainder at the largest eta against width, at initialization."""
    eta = max(config.network_learning_rates)
    chosen = [r for r in networks if r["weights"] == "initialization"]
    if len(chosen) < 3:
        return (float("nan"), float("nan"))
    return power_law_slope([r["width"] for r in chosen], [r[f"relative_remainder_eta_{eta:g}"] for r in chosen])


def plot_network_steps(networks: list[dict], config: Config) -> plt.Figure:
    """The one-step remainder of the networks against eta, with an eta^2 guide."""
    fig, ax = plt.subplots(figsize=(6, 4))
    etas = np.array(config.network_learning_rates)
    for row in networks:
        ax.loglog(etas, row["remainders"], "o-" if row["weights"] == "initialization" else "s--",
                  color=plt.cm.tab10(config.network_widths.index(row["width"])),
                  label=f"width {row['width']}, {row['weights']} (slope {row['slope']:.2f})")
    # the guide above every curve (at the smallest remainder it hid under the lowest one)
    power_guides(ax, etas, 4 * max(r["remainders"][0] for r in networks), (2,), label="eta")
    ax.set(xlabel="learning rate eta", ylabel="max |Δf - kernel-regression step| on test points",
           title="one GD step of a tanh MLP = kernel step + O(eta^2)")
    ax.minorticks_off()
    ax.set_xticks(etas, [f"{eta:g}" for eta in etas])
    ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def _report(seed: int, tasks: list, config: Config, summary: dict, rows: list[dict],
            networks: list[dict], figures: dict[str, str], claims: list[dict]) -> str:
    """report.md: what is checked, with the numbers of this run."""
    columns = ["task", "kernel", "space", "psd", "diag_reg", "eta", "final_rel_error",
               "steps_needed_by_theory", "max_dev_from_predicted_error", "identity_max_rel_dev",
               "lecture_form_with_K_max_rel_dev", "interp_test_mse"]
    return f"""# kernel-gd: kernel regression and gradient descent on alpha (lecture 21)

Seed {seed} (settings in config.json).

{claims_table(claims)}

Tasks: {'; '.join(t.description for t in tasks)}.
Kernels: Gaussian exp(-||x-y||^2/r^2), ball 1{{||x-y|| < r}}, and the analytic NTK of
{repr(ntk_net(b_std=1.0))} (infinite width; b_std = 1 so that 1-D inputs are not degenerate).

## What is checked
1. **Interpolation** alpha* = K^-1 y (Cholesky; LU for the ball kernel, which is not positive
   semi-definite: see `min_eig` in metrics.csv). The ball kernel matrix is exactly singular when
   two points have the same neighbourhood; then (column `diag_reg`) the ridge solution
   (K + {RIDGE_IF_SINGULAR:g} mean(diag K) I)^-1 y replaces K^-1 y, and GD runs on that matrix.
2. **GD on g(alpha) = ||K alpha - y||^2** with grad g = 2K(K alpha - y), at the fastest stable
   constant step eta = 1/(l_max^2 + l_min^2) (ntklab's `learning_rate`, on g / (2 |y|), is 2 |y| eta),
   for {config.max_steps} steps: the relative distance
   to K^-1 y follows the exact prediction |(I - 2 eta K^2)^t (alpha_0 - alpha*)| to
   {summary['max_dev_from_predicted_error']:.1e} (max over runs and steps);
   {summary['converged']}/{summary['runs']} runs reach {TOLERANCE:g}. Where a run does not,
   `steps_needed_by_theory` is the number of steps the slowest eigendirection needs
   (rate (1 - 2 eta l_min^2) per step): ill-conditioned kernels converge slowly on alpha.
3. **The one-step identity** f_(t+1)(x) - f_t(x) = -2 eta sum_i (f_t - y)_i H(x, x_i) holds to
   {summary['identity_max_rel_dev']:.1e} (max over runs, recorded steps and test points, relative to
   max |f_t(x)|) with H the tangent kernel of the parametrization. For GD on alpha that kernel is
   H(x, x') = sum_j K(x, x_j) K(x_j, x'), not K: with K in its place the first step's change is off
   by at least {summary['lecture_form_alpha_space_min_rel_dev']:.2g} of its size. The lecture's form with K itself
   is exact for GD in feature space (w in f = <w, Phi(x)>), i.e. alpha <- alpha - 2 eta (K alpha - y),
   the rows with space = function; its "-eta" absorbs the loss's factor 2.

## Results
{markdown_table(rows, columns)}

![interpolants]({figures['interpolants_1d']})

![convergence]({figures['convergence']})

## Real networks: one GD step is a kernel step up to O(eta^2)
For tanh MLPs with 2 hidden layers (NTK parameterization, W_std 1.5, b_std 0.1) on the sphere
task, one GD step with learning rate eta (ntklab's convention) changes the test outputs by
-(eta/|Y|) sum_i H_t(x, x_i)(f_t - y)_i + R(eta), H_t the empirical NTK at the current weights.
Measured max |R| on 50 test points against eta = {', '.join(f'{e:g}' for e in config.network_learning_rates)}
(at initialization and after {config.network_training_steps} GD steps at eta = 0.5): fitted slopes
{', '.join(f'{r["slope"]:.2f}' for r in networks)} (theory 2, in the order of the table).

{markdown_table(networks, [k for k in networks[0] if k != "remainders"])}

The remainder relative to the kernel step at the largest eta falls with width with slope
{summary['network_remainder_width_slope'][0]:.2f} ± {summary['network_remainder_width_slope'][1]:.2f}
(at initialization; needs three widths). The remainder is the
curvature term (eta^2/2) g^T Hess f g, whose size relative to the kernel step is set by how fast
the tangent kernel moves (the dNTK): it vanishes as the width grows, so one step of a wide network
is kernel regression with its current tangent kernel.

![network step]({figures['network_step']})
"""
