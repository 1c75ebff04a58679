"""`ntklab run ensemble-mean` -- Roberts, Yaida & Hanin ch. ∞: the mean over initializations of
finite-width MLPs trained by gradient flow, E z(t) = z_∞(t) + c(t)/n + O(1/n²), with z_∞ the
infinite-width prediction (`nk.gradient_descent_mse_ensemble`) and c the 1/n coefficient predicted
from the statistics of the NTK hierarchy (`nk.ensemble_mean_flow`), against Monte Carlo of trained
networks (`studies.ensemble_mean.trained_pairs`: antithetic pairs trained by RK4 on their
parameters) at widths up to 1024.

Per width n and pair p, v_p = n (z̄_p(t) - DG_t(Θ)[Ĥ_p - Θ - Θ¹/n] y - z_∞(t)) at every time and
test point: the pair's mean trained output less a control variate of mean O(1/n²) (its NTK's
deviation from `nk.finite_width`'s mean, through the frozen-kernel solution). E v = c + O(1/n).
Per time window, the factor a_n = Σ_e w_e v_e / Σ_e w_e c_e (weights w_e = c_e / Var v_e, a
weighted least-squares projection on the predicted coefficient, averaged over the pairs for its
standard error) is fitted over the widths as a_n = a + b/n: a = 1 is the predicted coefficient, b
the 1/n² term relative to it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter
import numpy as np
import torch
from tqdm.auto import tqdm

import ntklab as nk
from ...theory.finite_width import finite_width
from ..claims import Claim
from ..report import RunFolder, claims_table, markdown_table
from ..studies.ensemble_mean import kernel_derivative, trained_pairs
from . import register


@dataclass(frozen=True)
class Config:
    """Settings of this experiment (the defaults are the full run)."""

    depth: int = 1
    widths: tuple[int, ...] = (32, 64, 128, 256, 512, 1024)
    W_std: float = 1.5
    b_std: float = 0.3
    d: int = 3
    n_train: int = 3
    n_test: int = 2
    times: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)   # t λ_min, λ_min of the NTK's training block
    early: float = 1.0              # the early window is t λ_min <= early, the late one the rest
    pairs: int = 1000               # antithetic pairs (2 networks each) per width
    max_step: float = 0.2           # RK4 step in units of 1 / λ_max of the NTK's training block
    batch: int = 250                # pairs trained at once
    early_coefficient: Claim = Claim(
        "the 1/n coefficient of the trained ensemble mean for t λ_min <= 1: factor a of the fit "
        "a_n = a + b/n over the widths, with n (E z - z_∞) = a_n × prediction", 1.0, 0.2,
        "Roberts, Yaida & Hanin 2022, ch. ∞ (nk.ensemble_mean_flow)")
    late_coefficient: Claim = Claim(
        "the 1/n coefficient of the trained ensemble mean for t λ_min > 1: factor a of the same fit",
        1.0, 0.2, "Roberts, Yaida & Hanin 2022, ch. ∞ (nk.ensemble_mean_flow)")
    largest_width: Claim = Claim(
        "agreement with the infinite-width mean to the predicted O(1/n) at the largest width: "
        "n (E z - z_∞) = a_n × prediction over all times", 1.0, 0.3,
        "Jacot et al. 2018 (n → ∞); Roberts, Yaida & Hanin 2022, ch. ∞ (the 1/n term)")
    first_order_part: Claim = Claim(
        "the first-order part (dNTK and ddNTK) of the 1/n coefficient: factor a of the fit over the "
        "widths of Monte Carlo - predicted kernel part = a_n × predicted first-order part", 1.0, 0.5,
        "Roberts, Yaida & Hanin 2022, ch. 11 and ∞")

    @classmethod
    def quick(cls) -> "Config":
        """Small settings for tests and previews (seconds)."""
        return cls(widths=(32, 128), n_test=1, times=(0.5, 2.0), pairs=200, batch=200)


@register("ensemble-mean", "Roberts-Yaida-Hanin ch. ∞: the mean of trained finite-width networks at order "
          "1/n vs Monte Carlo of trained networks", config=Config)
def run(folder: RunFolder, cfg: Config, *, seed: int, device: torch.device) -> dict:
    """Per width: trained antithetic pairs against the infinite-width mean and its 1/n correction."""
    if cfg.n_train > cfg.d:
        raise ValueError(f"n_train ({cfg.n_train}) must be <= d ({cfg.d}): the training inputs are orthogonal")
    if cfg.pairs >= 10 ** 5:
        raise ValueError(f"pairs must be < 100000 (the widths' seeds are 10^5 apart), got {cfg.pairs}")
    x_train, y, x_test = _data(cfg, seed)
    arch = nk.mlp(cfg.depth, cfg.widths[0], W_std=cfg.W_std, b_std=cfg.b_std, activation=nk.Tanh())
    stats = finite_width(arch, torch.cat([x_train, x_test]))
    eigenvalues = np.linalg.eigvalsh(stats.ntk[-1][:cfg.n_train, :cfg.n_train].numpy())
    rate = cfg.n_train    # learning rate N: the flow time t is ntklab's time (ntklab.conventions)
    grid = np.geomspace(cfg.times[0], cfg.times[-1], 25)           # for the curves, with cfg.times
    fine = np.union1d(grid[np.abs(np.log(grid[:, None] / np.asarray(cfg.times))).min(1) > 1e-6], cfg.times)
    predicted = nk.ensemble_mean_flow(arch, x_train, y, x_test, (fine / eigenvalues[0]).tolist(), learning_rate=rate)
    at_times = np.searchsorted(fine, cfg.times)
    coefficient = (cfg.widths[0] * predicted.correction).numpy()                  # [T, M], width-free
    kernel_part = (cfg.widths[0] * (predicted.ntk_shift + predicted.ntk_fluctuation)).numpy()
    times = np.asarray(cfg.times) / eigenvalues[0]
    infinite = nk.predict.gradient_descent_mse_ensemble(arch, x_train, y[:, None], learning_rate=rate)(
        t=times, x_test=x_test, get="ntk").reshape(len(times), cfg.n_test).numpy()
    derivative = kernel_derivative(stats.ntk[-1][:, :cfg.n_train], y, times).numpy()   # [T, M, D, N]
    rows, widths = [], []
    for k, width in enumerate(tqdm(cfg.widths, desc="ensemble mean", unit="width")):
        wide = nk.mlp(cfg.depth, width, W_std=cfg.W_std, b_std=cfg.b_std, activation=nk.Tanh())
        mean_ntk = (stats.ntk[-1] + stats.ntk_shift[-1] / width)[:, :cfg.n_train].numpy()
        sample = trained_pairs(wide, x_train, y, x_test, times, cfg.pairs, learning_rate=rate,
                               max_step=cfg.max_step / eigenvalues[-1], first_seed=10 ** 6 * seed + 10 ** 5 * k,
                               batch=cfg.batch)
        control = np.einsum("tmdn,pdn->ptm", derivative, sample.ntk - mean_ntk)
        values = width * (sample.outputs - control - infinite)                    # [P, T, M]
        rows += _rows(cfg, width, values, infinite, coefficient[at_times], kernel_part[at_times])
        widths.append({"width": width, "pairs": cfg.pairs, "rk4_steps": sample.steps,
                       **_factors(cfg, values, coefficient[at_times], kernel_part[at_times])})
    fits = {name: _fit(widths, name) for name in ("early", "late", "all", "first_order")}
    summary = {"fits": fits, "widths": widths, "lambda_min": float(eigenvalues[0]),
               "lambda_max": float(eigenvalues[-1])}
    folder.write_csv("metrics.csv", rows)
    folder.write_json("fits.json", summary)
    figure = _figure(folder, cfg, rows, widths, fits, fine, coefficient)
    folder.claims += _claims(cfg, fits, widths[-1])
    folder.write_text("report.md", _report(cfg, rows, widths, fits, figure, folder.claims))
    return summary


def _data(cfg: Config, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training inputs orthogonal with norm √d (a well-conditioned NTK block: few RK4 steps), test
    inputs x ~ N(0, I_d), targets y = sin 2x₁."""
    generator = torch.Generator().manual_seed(seed + 3)
    basis, _ = torch.linalg.qr(torch.randn(cfg.d, cfg.d, generator=generator, dtype=torch.float64))
    x_train = math.sqrt(cfg.d) * basis[:cfg.n_train]
    x_test = torch.randn(cfg.n_test, cfg.d, generator=generator, dtype=torch.float64)
    return x_train, torch.sin(2 * x_train[:, 0]), x_test


def _windows(cfg: Config) -> dict[str, np.ndarray]:
    """The times of each window, as masks over cfg.times."""
    times = np.asarray(cfg.times)
    return {"early": times <= cfg.early, "late": times > cfg.early, "all": np.ones(len(times), bool)}


def _projection(values: np.ndarray, predicted: np.ndarray) -> tuple[float, float]:
    """Mean and standard error over the pairs of Σ_e w_e v_pe / Σ_e w_e c_e, w_e = c_e / Var v_e: the
    weighted least-squares factor of the pairs' values [P, E] on the prediction c [E]."""
    weights = predicted / values.var(0, ddof=1)
    per_pair = values @ weights / (weights @ predicted)
    return float(per_pair.mean()), float(per_pair.std(ddof=1) / math.sqrt(len(per_pair)))


def _factors(cfg: Config, values: np.ndarray, coefficient: np.ndarray, kernel_part: np.ndarray) -> dict:
    """a_n and its standard error per window, and of the first-order part over all times."""
    out = {}
    for name, mask in _windows(cfg).items():
        if mask.any():
            out[name], out[f"{name}_se"] = _projection(values[:, mask].reshape(len(values), -1),
                                                       coefficient[mask].ravel())
    out["first_order"], out["first_order_se"] = _projection(
        (values - kernel_part).reshape(len(values), -1), (coefficient - kernel_part).ravel())
    return out


def _fit(widths: list[dict], name: str) -> dict:
    """Weighted least squares of a_n = a + b/n over the widths (weights 1/se²): a, b, their standard
    errors and the fit's χ² per degree of freedom (b is left out with one width)."""
    chosen = [w for w in widths if name in w]
    if not chosen:
        return {"a": float("nan"), "a_se": float("nan"), "b": float("nan"), "b_se": float("nan"),
                "chi2_dof": float("nan")}
    n = np.array([w["width"] for w in chosen], float)
    a_n, se = np.array([w[name] for w in chosen]), np.array([w[f"{name}_se"] for w in chosen])
    design = np.stack([np.ones_like(n), 1 / n], 1)[:, :min(2, len(n))] / se[:, None]
    covariance = np.linalg.inv(design.T @ design)
    estimate = covariance @ design.T @ (a_n / se)
    dof = len(n) - len(estimate)
    chi2 = float(((design @ estimate - a_n / se) ** 2).sum())
    b, b_se = (estimate[1], math.sqrt(covariance[1, 1])) if len(estimate) == 2 else (float("nan"),) * 2
    return {"a": float(estimate[0]), "a_se": math.sqrt(covariance[0, 0]), "b": float(b), "b_se": float(b_se),
            "chi2_dof": chi2 / dof if dof else float("nan")}


def _rows(cfg: Config, width: int, values: np.ndarray, infinite: np.ndarray, coefficient: np.ndarray,
          kernel_part: np.ndarray) -> list[dict]:
    """One row per (time, test point): n (E z - z_∞) in Monte Carlo against the prediction."""
    rows = []
    mean, se = values.mean(0), values.std(0, ddof=1) / math.sqrt(len(values))
    for i, t in enumerate(cfg.times):
        for point in range(cfg.n_test):
            rows.append({"width": width, "time": t, "test_point": point, "infinite_width": infinite[i, point],
                         "mc": mean[i, point], "se": se[i, point], "predicted": coefficient[i, point],
                         "kernel_part_predicted": kernel_part[i, point],
                         "z": (mean[i, point] - coefficient[i, point]) / se[i, point]})
    return rows


def _claims(cfg: Config, fits: dict, largest: dict) -> list[dict]:
    widths = f"n = {', '.join(map(str, cfg.widths))}, {cfg.pairs} trained pairs each"
    return [cfg.early_coefficient.check(fits["early"]["a"], fits["early"]["a_se"], label=widths),
            cfg.late_coefficient.check(fits["late"]["a"], fits["late"]["a_se"], label=widths),
            cfg.largest_width.check(largest["all"], largest["all_se"], label=f"n = {largest['width']}"),
            cfg.first_order_part.check(fits["first_order"]["a"], fits["first_order"]["a_se"], label=widths)]


def _report(cfg: Config, rows: list[dict], widths: list[dict], fits: dict, figure: str,
            claims: list[dict]) -> str:
    fit_rows = [{"window": name, **values} for name, values in fits.items()]
    return "\n".join([
        "# The ensemble of trained networks at order 1/n (PDLT ch. ∞)", "",
        claims_table(claims), "",
        f"tanh MLPs with {cfg.depth} hidden layer(s) of width n (NTK parameterization, W_std {cfg.W_std}, "
        f"b_std {cfg.b_std}), each trained by the gradient flow of its parameters (RK4, steps of at most "
        f"{cfg.max_step}/λ_max in flow time) on {cfg.n_train} training points (orthogonal, norm √{cfg.d}; "
        f"y = sin 2x₁) and evaluated at {cfg.n_test} test points x ~ N(0, I_{cfg.d}); times t λ_min with the "
        "book's unit rate on ½ Σ (z - y)² (learning rate N in ntklab's convention), λ_min the smallest "
        f"eigenvalue of the infinite-width NTK's training block. {cfg.pairs} antithetic pairs per width "
        "(each network and its mirror with the readout negated: the pair's mean cancels the initial "
        "function exactly), less the control variate DG_t(Θ)[Ĥ - Θ - Θ¹/n] y of mean O(1/n²). "
        "n (E z - z_∞) is compared with the 1/n coefficient of `nk.ensemble_mean_flow` (z_∞ of "
        "`nk.gradient_descent_mse_ensemble`); a_n is the weighted least-squares factor of the Monte "
        "Carlo on the prediction in a window of times, and a, b the fit a_n = a + b/n over the widths "
        "(a = 1: the predicted coefficient; b: the 1/n² term in units of it).", "",
        "## Fits over the widths", "",
        markdown_table(fit_rows, ["window", "a", "a_se", "b", "b_se", "chi2_dof"]), "",
        markdown_table(widths, list(widths[0])), "",
        "## n (E z - z_∞) per width, time and test point", "",
        markdown_table(rows, ["width", "time", "test_point", "infinite_width", "mc", "se", "predicted",
                              "kernel_part_predicted", "z"]), "",
        f"![prediction and Monte Carlo]({figure})", ""])


def _figure(folder: RunFolder, cfg: Config, rows: list[dict], widths: list[dict], fits: dict,
            fine: np.ndarray, coefficient: np.ndarray) -> str:
    fig, axes = plt.subplots(1, cfg.n_test + 1, figsize=(5 * (cfg.n_test + 1), 4.6), squeeze=False)
    times = np.asarray(cfg.times)
    for point, ax in enumerate(axes[0][:cfg.n_test]):
        ax.plot(fine, coefficient[:, point], "k-", lw=1.5, label="predicted 1/n coefficient")
        for k, width in enumerate(cfg.widths):
            mine = [r for r in rows if r["width"] == width and r["test_point"] == point]
            ax.errorbar(times * (1 + 0.03 * (k - len(cfg.widths) / 2)), [r["mc"] for r in mine],
                        [r["se"] for r in mine], fmt="o", ms=3, color=f"C{k}", label=f"trained, n = {width}")
        ax.axhline(0, color="0.7", lw=0.8)
        ax.set(xscale="log", xlabel="training time t λ_min", ylabel="n (E z(t) - z_∞(t))",
               title=f"test point {point}")
        ax.set_xticks(times, [f"{t:g}" for t in times])
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax = axes[0][-1]
    inverse = 1 / np.array([w["width"] for w in widths], float)
    grid = np.linspace(0, inverse.max() * 1.05, 50)
    for k, name in enumerate(("early", "late")):
        if name not in widths[0]:
            continue
        ax.errorbar(inverse * (1 + 0.03 * k), [w[name] for w in widths], [w[f"{name}_se"] for w in widths],
                    fmt="o", ms=4, color=f"C{k + 6}", label=f"a_n, {name} times")
        fit = fits[name]
        if math.isfinite(fit["b"]):
            ax.plot(grid, fit["a"] + fit["b"] * grid, "-", color=f"C{k + 6}", lw=1,
                    label=f"fit a + b/n, {name}")
    ax.axhline(1, color="k", lw=0.8, ls="--", label="prediction a = 1")
    ax.set(xlabel="1 / n", ylabel="a_n (Monte Carlo / prediction)", title="fit over the widths")
    (handles, labels), (fit_handles, fit_labels) = (panel.get_legend_handles_labels() for panel in (axes[0][0], ax))
    fig.legend(handles + fit_handles, labels + fit_labels, loc="lower center", ncol=4, fontsize=8)
    fig.tight_layout(rect=(0, 0.22, 1, 1))
    return folder.save_figure("ensemble_mean", fig)
