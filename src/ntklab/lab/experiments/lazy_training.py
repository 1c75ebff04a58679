"""`ntklab run lazy-training` -- lectures 21-22: wide networks train lazily.

Gradient descent on a network is kernel regression with a time-varying tangent
kernel H_t; as the width n grows, H_t stays at H_0 and training follows the
infinite-width NTK prediction (Jacot et al. 2018; Lee et al. 2019).  For a
one-hidden-layer ReLU net in the NTK parameterization,
    f(x) = W2 relu(W1 x / sqrt(d) + 0.1 b1) / sqrt(n) + 0.1 b2,
made zero at initialization by the mirrored construction (`symmetric=True`),
trained by full-batch GD on ||f - y||^2 / (2 |y|) with function-space step
eta = learning_rate / |y| = 1 / lambda_max(Theta)
on (1) digits parity and (2) a smooth target on the sphere, for widths n and
several seeds, it measures against n:

  (a) the training loss at the end (-> ~0);
  (b) the relative kernel change ||H_T - H_0||_F / ||H_0||_F   (theory n^-1/2);
  (c) the distance ||f_t(x_test) - mu_t(x_test)|| / ||mu_t|| between the trained
      net and the infinite-width NTK prediction at the same time t, both of
      gradient flow (`gradient_descent_mse_ensemble`, t = step) and of the same
      discrete GD run on the infinite-width model (f <- f - eta Theta (f - y)),
      at every recorded step                                       (n^-1/2);
  (d) the relative weight change ||w_T - w_0|| / ||w_0||          (n^-1/2);
  (e) at initialization, the Monte Carlo mean of the empirical NTK over seeds
      against the analytic NTK: relative Frobenius error       (n^-1/2 at a fixed
      number of seeds: the standard deviation of each entry is O(n^-1/2), the
      bias O(n^-1)).
Slopes are least-squares fits of log(quantity) on log(n).
"""
from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import digits_parity, regression_sphere
from ..claims import Claim
from ..fits import power_law_slope
from ..report import RunFolder, claims_table, markdown_table, power_guides
from ..studies import lazy_training as S
from . import register


@dataclass(frozen=True)
class Config:
    """Settings of this experiment (the defaults are the full run)."""

    widths: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048, 4096)
    seeds: int = 3
    mc_seeds: int = 8
    n_train: int = 128
    n_test: int = 256
    max_steps: int = 4000
    record: int = 16
    probe: int = 64
    smoothness_widths: tuple[int, ...] = (64, 256, 1024, 4096)
    smoothness_seeds: int = 2
    weight_change: Claim = Claim("relative weight change ||w_T-w_0||/||w_0||: exponent of n", -0.5, 0.1,
                                 "Lee et al. 2019, Theorem 2.1 (O(n^-1/2))")
    kernel_change: Claim = Claim(
        "kernel change ||H_T-H_0||/||H_0||: exponent of n", -0.75, 0.25,
        "the window [-1, -1/2] between Lee et al. 2019's bound n^-1/2 and the effective theory's "
        "training-induced O(1/n) (Roberts, Yaida & Hanin 2022, ch. 11)")
    ntk_gd_distance: Claim = Claim("distance to the infinite-width GD prediction: exponent of n", -0.5, 0.15,
                                   "Lee et al. 2019, Theorem 2.1 (O(n^-1/2))")
    mc_mean_error: Claim = Claim(
        "Monte Carlo mean of empirical NTKs vs the analytic NTK at fixed seeds: exponent of n", -0.5, 0.15,
        "Jacot et al. 2018 (entry standard deviation O(n^-1/2); the O(1/n) bias is below it)")
    gelu_linearization: Claim = Claim("GELU: ||f - f_lin|| / ||f_lin||, exponent of n", -1.0, 0.2,
                                      "Roberts, Yaida & Hanin 2022, ch. 11 (O(1/n) for a smooth activation)")
    relu_linearization: Claim = Claim(
        "ReLU: ||f - f_lin|| / ||f_lin||, exponent of n", -0.625, 0.125,
        "the kink count of this report: between n^-3/4 (random signs) and n^-1/2 (coherent signs)")

    @classmethod
    def quick(cls) -> "Config":
        """Small settings for tests and previews (seconds)."""
        return cls(widths=(64, 256, 1024), seeds=1, mc_seeds=4, n_train=48, n_test=64,
                   max_steps=300, record=8, probe=32, smoothness_widths=(64, 256, 1024),
                   smoothness_seeds=1)


LABELS = {"train_loss_fraction": "(a) train loss / initial train loss",
          "kernel_change": "(b) kernel change ||H_T-H_0||/||H_0||",
          "weight_change": "(d) weight change ||w_T-w_0||/||w_0||",
          "ntk_flow_distance": "(c) distance to NTK gradient flow at T",
          "ntk_gd_distance": "(c') distance to infinite-width discrete GD at T",
          "lin_distance": "distance to linearized net f_lin at T",
          "mc_mean_error": "(e) MC mean of empirical NTK vs analytic"}


def plot_scaling(summary: list[dict], fits: dict) -> plt.Figure:
    """Every quantity against width per task (means and sample standard deviations over seeds)."""
    tasks = list(fits)
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 4.6), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        rows = [r for r in summary if r["task"] == task]
        widths = np.array([r["width"] for r in rows], float)
        for i, q in enumerate(fits[task]):
            label = LABELS[q]
            values = np.array([r[q] for r in rows])
            err = np.array([r.get(q + "_std", 0.0) for r in rows])
            ax.errorbar(widths, values, yerr=err, marker="o", ms=4, capsize=2, color=f"C{i}",
                        label=f"{label}: slope {fits[task][q]:+.2f}")
        power_guides(ax, widths, rows[0]["kernel_change"], (-0.5, -1), label="n")
        ax.set(xscale="log", yscale="log", xlabel="width n", title=task,
               ylabel="relative change or distance (see legend)")
        ax.set_xticks(widths, [str(int(w)) for w in widths])
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle("Lazy training: what moves, and how far from the NTK, against width")
    return fig


def plot_dynamics(step_rows: list[dict], tasks: list[str]) -> plt.Figure:
    """Training loss and distance to the NTK predictions along training, seed 0, per width."""
    fig, axes = plt.subplots(2, len(tasks), figsize=(6.5 * len(tasks), 8.5), squeeze=False,
                             constrained_layout=True)
    for col, task in enumerate(tasks):
        rows = [r for r in step_rows if r["task"] == task and r["seed"] == 0]
        widths = sorted({r["width"] for r in rows})
        colors = plt.cm.viridis(np.linspace(0, 0.9, len(widths)))
        for color, width in zip(colors, widths, strict=True):
            mine = [r for r in rows if r["width"] == width]
            steps = np.array([r["step"] for r in mine])
            axes[0, col].plot(np.maximum(steps, 0.5), [r["train_loss"] for r in mine], color=color,
                              marker=".", label=f"n={width}")
            later = steps > 0
            axes[1, col].plot(steps[later], np.array([r["ntk_flow_distance"] for r in mine])[later],
                              color=color, marker=".", label=f"n={width}")
            axes[1, col].plot(steps[later], np.array([r["ntk_gd_distance"] for r in mine])[later],
                              color=color, ls="--", lw=1)
        axes[0, col].set(xscale="log", yscale="log", xlabel="GD step", ylabel="(a) train loss ||f-y||^2 / (2|y|)",
                         title=f"{task}: training loss (seed 0)")
        axes[1, col].set(xscale="log", yscale="log", xlabel="GD step t",
                         ylabel="||f_t - mu_t|| / ||mu_t|| on test",
                         title=f"{task}: (c) distance to NTK prediction at the same t\n"
                               "solid: gradient flow (nt ensemble), dashed: discrete GD")
        axes[0, col].legend(fontsize=7)
    return fig


@register("lazy-training", "wide nets train lazily: kernel drift ~ n^-1/2 and convergence to the "
                           "NTK prediction (lectures 21-22)", config=Config)
def run(folder: RunFolder, cfg: Config, *, seed: int, device: torch.device) -> dict:
    """The width sweeps on both tasks, the Monte Carlo NTK, the ReLU/GELU linearization distances."""
    tasks = [digits_parity(cfg.n_train, n_test=cfg.n_test, seed=seed),
             regression_sphere(cfg.n_train, 8, n_test=cfg.n_test, seed=seed)]
    step_rows, run_rows, mc_rows, infos = [], [], [], {}
    with tqdm(total=len(tasks) * len(cfg.widths) * (cfg.seeds + 1), desc="lazy-training", unit="run") as bar:
        for task in tasks:
            rows, runs, infos[task.name] = S.width_sweep(task, cfg.widths, cfg.seeds, max_steps=cfg.max_steps,
                                                         record=cfg.record, probe=cfg.probe, seed=seed, bar=bar)
            step_rows += rows
            run_rows += runs
            mc_rows += S.monte_carlo_ntk(task, cfg.widths, cfg.mc_seeds, probe=cfg.probe, seed=seed, bar=bar)
    smoothness = S.linearization_distances(tasks[1], cfg.smoothness_widths, cfg.smoothness_seeds,
                                           max_steps=cfg.max_steps, seed=seed)
    smoothness_fits = {name: power_law_slope([r["width"] for r in smoothness if r["activation"] == name],
                                             [r["lin_distance"] for r in smoothness if r["activation"] == name])
                       for name in S.SMOOTHNESS}
    local = {name: S.local_slopes([r for r in smoothness if r["activation"] == name], "lin_distance")
             for name in S.SMOOTHNESS}
    names = [t.name for t in tasks]
    summary, fits = S.summarize(run_rows, mc_rows, names)
    errors = {task: S.slopes_with_errors(run_rows, mc_rows, task) for task in names}
    folder.claims += _claims(cfg, errors, smoothness_fits)
    figures = {"scaling": folder.save_figure("scaling", plot_scaling(summary, fits)),
               "smoothness": folder.save_figure("smoothness", plot_smoothness(smoothness, smoothness_fits)),
               "dynamics": folder.save_figure("dynamics", plot_dynamics(step_rows, names))}
    folder.config.update({"architecture": repr(S.architecture(cfg.widths[0])).replace(str(cfg.widths[0]), "n", 1),
                          "tasks": {t.name: t.description for t in tasks}, "schedules": infos})
    folder.write_csv("metrics.csv", step_rows)
    folder.write_csv("summary.csv", summary)
    folder.write_csv("monte_carlo_ntk.csv", mc_rows)
    folder.write_csv("linearization_distance.csv", smoothness)
    folder.write_json("fits.json", {**fits, "lin_distance_by_activation": smoothness_fits,
                                    "lin_distance_local_slopes": local})
    folder.write_text("report.md", _report(cfg, infos, summary, fits, smoothness, (smoothness_fits, local), figures,
                                           folder.claims))
    return {"fits": fits, "lin_distance_by_activation": smoothness_fits, "lin_distance_local_slopes": local}


def plot_smoothness(rows: list[dict], fits: dict) -> plt.Figure:
    """||f - f_lin|| / ||f_lin|| against width for ReLU and GELU, with n^-1/2, n^-3/4, n^-1 guides."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for i, name in enumerate(S.SMOOTHNESS):
        chosen = [r for r in rows if r["activation"] == name]
        ax.loglog([r["width"] for r in chosen], [r["lin_distance"] for r in chosen], "os"[i], color=f"C{i}",
                  label=f"{name}: slope {fits[name][0]:.2f} ± {fits[name][1]:.2f}")
    widths = np.array(sorted({r["width"] for r in rows}), float)
    power_guides(ax, widths, np.mean([r["lin_distance"] for r in rows if r["width"] == widths[0]]),
                 (-0.5, -0.75, -1), label="n", styles=(":", "-.", "--"))
    ax.set(xlabel="width n", ylabel="||f - f_lin|| / ||f_lin|| on test, end of training",
           title="distance to the linearized network: the kink matters")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


TASK_CLAIMS = ("weight_change", "kernel_change", "ntk_gd_distance", "mc_mean_error")
"""The claims checked on each task: Config fields named after the quantity whose slope they predict."""


def _claims(cfg: Config, errors: dict, smoothness_fits: dict) -> list[dict]:
    """The claims table: the width laws per task (slopes ± s.e. fitted to every seed's run), and
    f - f_lin for GELU and ReLU."""
    claims = [getattr(cfg, q).check(*errors[task][q], label=task) for task in errors for q in TASK_CLAIMS]
    return claims + [cfg.gelu_linearization.check(*smoothness_fits["GELU"]),
                     cfg.relu_linearization.check(*smoothness_fits["ReLU"])]


def _smoothness_text(cfg: Config, smoothness: list[dict], smoothness_fits: dict, local: dict) -> str:
    """The section on f - f_lin, ReLU against GELU, with this run's slopes (fitted and between
    consecutive widths)."""
    fitted = ", ".join(f"{k} {v[0]:.2f} ± {v[1]:.2f}" for k, v in smoothness_fits.items())
    steps = "; ".join(f"{k}: {', '.join(f'{v:+.2f}' for v in slopes)}" for k, slopes in local.items())
    return f"""## Distance to the linearized network: smooth activations vs ReLU
The same protocol on the sphere task for ReLU and GELU networks (widths {cfg.smoothness_widths},
{cfg.smoothness_seeds} seed(s)), each trained for the steps its own infinite-width model needs:
fitted slopes of ||f - f_lin|| / ||f_lin|| against width: {fitted}; slopes between consecutive
widths (geometric means over seeds): {steps}.
The effective theory's O(1/n) is the smooth case (a second-order Taylor term whose sum over the
n units has random signs). ReLU's kink breaks it: the units whose preactivation crosses zero
during training, a fraction ~ n^-1/2 of them since each preactivation moves by ~ n^-1/2, each
miss their linearization by ~ n^-1/2, and their n^1/2 contributions of size n^-1/2 · n^-1/2 add
up to between n^-3/4 (random signs) and n^-1/2 (coherent signs). A ReLU slope in that range that
stays the same between consecutive widths is the kink's law, not a pre-asymptotic effect; a
GELU slope approaching -1 as n grows is the effective theory's.

{markdown_table(smoothness, ["activation", "width", "seed", "steps", "lin_distance"])}"""


def _report(cfg: Config, infos: dict, summary: list[dict], fits: dict, smoothness: list[dict],
            smoothness_slopes: tuple[dict, dict], figures: dict[str, str], claims: list[dict]) -> str:
    """report.md: the claims, the fitted slopes, the per-width tables and how to read them."""
    smoothness_fits, local = smoothness_slopes
    columns = ["width", "runs", "train_loss_fraction", "kernel_change", "weight_change", "ntk_flow_distance",
               "ntk_gd_distance", "lin_distance", "mc_mean_error"]
    tables = "\n\n".join(f"### {task}\n{infos[task]['steps']} GD steps with eta = 1/lambda_max = "
                          f"{infos[task]['eta']:.4g} (infinite-width train loss left: "
                          f"{infos[task]['flow_final_train_loss_fraction']:.1e} of the initial loss)\n\n"
                          + markdown_table([r for r in summary if r["task"] == task], columns)
                          for task in fits)
    slope_rows = [{"task": task, **{q: f"{v:+.3f}" for q, v in slopes.items()}} for task, slopes in fits.items()]
    return f"""# lazy-training: wide networks train lazily (lectures 21-22)

{claims_table(claims)}

One-hidden-layer ReLU nets, NTK parameterization, f(x; w0) = 0 by mirrored copies,
full-batch GD on ||f - y||^2 / (2 |y|) with learning rate |y| / lambda_max(Theta) (function-space
step eta = 1/lambda_max); widths {cfg.widths},
{cfg.seeds} seed(s) each; Monte Carlo over {cfg.mc_seeds} seeds for (e).
Values are means over seeds at the last step (sample standard deviations in summary.csv).

![scaling]({figures['scaling']})

## Fitted log-log slopes against width
Lee et al. (2019) bound kernel change, weight change and the distances by O(n^-1/2);
the effective theory (Dyer & Gur-Ari 2019; Roberts, Yaida & Hanin 2022, ch. 11) says the
*training-induced* kernel change (and f - f_lin) is smaller, O(1/n), while the relative weight
change, the fluctuation of the kernel at init (e) and therefore the distance (c) to the
infinite-width prediction are O(n^-1/2). For f - f_lin the O(1/n) needs a smooth activation: see
"Distance to the linearized network" below (ReLU's fitted slope there: {smoothness_fits['ReLU'][0]:+.2f}).

{markdown_table(slope_rows, list(slope_rows[0]))}

{_smoothness_text(cfg, smoothness, smoothness_fits, local)}

![smoothness]({figures['smoothness']})

## Per width
{tables}

![dynamics]({figures['dynamics']})

## How to read this
- (a) `train_loss_fraction` is the last step's training loss over its initial value; the
  step count is chosen so the infinite-width model reaches {S.LOSS_FRACTION:g} of its initial loss.
- (b) `kernel_change`: expect a slope between -1/2 (the bound) and -1 (the effective theory).
- (c) `ntk_flow_distance` compares with `gradient_descent_mse_ensemble` (gradient flow) at
  t = step; at early steps it contains a width-independent part from discrete vs continuous
  time, which `ntk_gd_distance` (the same discrete GD on the infinite-width model) removes
  (dashed curves); at the last step the two agree.
  `lin_distance` is the distance to the linearized net trained alongside.
- (e) the error of a mean over a fixed number of seeds falls like n^-1/2 (entry standard
  deviation O(n^-1/2)); the O(1/n) bias is hidden below it at these widths.

Computed on {torch.get_num_threads()} thread(s).
"""
