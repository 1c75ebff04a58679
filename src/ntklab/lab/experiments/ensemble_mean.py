"""`ntklab run ensemble-mean` -- Roberts, Yaida & Hanin ch. ∞: the mean over initializations of a
finite-width MLP trained by gradient flow, predicted at order 1/n from the statistics of its NTK
hierarchy (`nk.ensemble_mean_flow`), against Monte Carlo over real networks
(`studies.finite_width.ensemble_samples`):

  * the kernel part (each network's own NTK frozen), whose 1/n shift is the NTK's mean shift and
    its fluctuations, ½ D²G:Cov -- at several widths, with the fluctuation term dropped as a
    negative control;
  * the first-order part z₁ (each network's dNTK and ddNTK, `nk.nearly_kernel_flow`) at one width.

Everything is shown as n x (E z(t) - z_∞(t)), the width-independent coefficient of 1/n.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import matplotlib.pyplot as plt
import numpy as np
import torch
from tqdm.auto import tqdm

import ntklab as nk
from ...theory.ensemble import EnsembleMean, ensemble_mean_flow
from ...theory.finite_width import finite_width
from ..claims import Claim, scale_factor
from ..report import RunFolder, claims_table, markdown_table
from ..studies.finite_width import ensemble_samples
from . import register


@dataclass(frozen=True)
class Config:
    """Settings of this experiment (the defaults are the full run)."""

    depth: int = 2
    widths: tuple[int, ...] = (32, 64, 128)
    W_std: float = 1.5
    b_std: float = 0.3
    d: int = 3
    n_train: int = 3
    n_test: int = 2
    times: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)    # in units of 1/λ_min of the NTK's training block
    kernel_networks: int = 2000
    first_order_width: int = 128
    first_order_networks: int = 500
    kernel_part: Claim = Claim(
        "the kernel part of the ensemble mean at order 1/n, DG[Θ¹]y/n + ½D²G:Cov y: factor a in Monte Carlo "
        "= a × prediction (each network's frozen-kernel flow averaged; no network is trained)", 1.0, 0.1,
        "Roberts, Yaida & Hanin 2022, ch. ∞ (gradient flow, MSE)")
    fluctuation_term: Claim = Claim(
        "the NTK fluctuation's term ½D²G:Cov y: its coefficient b in Monte Carlo - shift term = b × "
        "fluctuation term", 1.0, 0.2, "Roberts, Yaida & Hanin 2022, ch. ∞ (b = 0 if only the mean shift mattered)")
    first_order_part: Claim = Claim(
        "the first-order part E[z₁] (dNTK-output correlation and ddNTK mean through the kernel dynamics): factor "
        "a in Monte Carlo = a × prediction (each network's own first-order flow averaged)", 1.0, 0.25,
        "Roberts, Yaida & Hanin 2022, ch. 11 and ∞")

    @classmethod
    def quick(cls) -> "Config":
        """Small settings for tests and previews (seconds)."""
        return cls(widths=(16, 32), n_train=2, n_test=1, times=(0.5, 2.0), kernel_networks=100,
                   first_order_width=32, first_order_networks=10)


PARTS = ("ntk_shift", "ntk_fluctuation", "dntk", "ddntk")


@register("ensemble-mean", "Roberts-Yaida-Hanin ch. ∞: the mean of trained finite-width networks at order "
          "1/n vs Monte Carlo", config=Config)
def run(folder: RunFolder, cfg: Config, *, seed: int, device: torch.device) -> dict:
    """Per width: the predicted 1/n parts of the ensemble mean against Monte Carlo over networks."""
    x = torch.randn(cfg.n_train + cfg.n_test, cfg.d, generator=torch.Generator().manual_seed(seed + 3),
                    dtype=torch.float64)
    x_train, x_test = x[:cfg.n_train], x[cfg.n_train:]
    y = torch.sin(2 * x_train[:, 0])
    rows, curves = [], {}
    for width in tqdm(cfg.widths, desc="ensemble mean", unit="width"):
        arch = nk.mlp(cfg.depth, width, W_std=cfg.W_std, b_std=cfg.b_std, activation=nk.Tanh())
        smallest = float(np.linalg.eigvalsh(finite_width(arch, x).ntk[-1][:cfg.n_train, :cfg.n_train].numpy())[0])
        fine = np.union1d(np.geomspace(cfg.times[0], cfg.times[-1], 41), cfg.times)   # for the curves
        # cfg.times are t lambda_min with the book's unit rate on ½ Σ: learning_rate = N in
        # ntklab's convention (L = ||z - y||² / (2N)), which makes the flow time t itself
        rate = len(y)
        predicted = ensemble_mean_flow(arch, x_train, y, x_test, (fine / smallest).tolist(), learning_rate=rate)
        times = np.asarray(cfg.times) / smallest
        first_seed = 10 ** 6 * seed
        kernel = ensemble_samples(arch, x_train, y, x_test, times, cfg.kernel_networks,
                                  learning_rate=rate, first_seed=first_seed, first_order=False)
        first = (ensemble_samples(arch, x_train, y, x_test, times, cfg.first_order_networks,
                                  learning_rate=rate, first_seed=first_seed + cfg.kernel_networks)
                 if width == cfg.first_order_width else None)
        curves[width] = {"times": fine, **{part: width * getattr(predicted, part).numpy() for part in PARTS}}
        at_times = np.searchsorted(fine, cfg.times)
        rows += _rows(cfg, width, _select(predicted, at_times), kernel, first)
    summary = _summary(rows)
    folder.write_csv("metrics.csv", rows)
    folder.write_json("fits.json", summary)
    figure = _figure(folder, cfg, rows, curves)
    folder.claims += _claims(cfg, rows)
    folder.write_text("report.md", _report(cfg, rows, summary, figure, folder.claims))
    return summary


def _select(predicted: EnsembleMean, index: np.ndarray) -> EnsembleMean:
    """The prediction at the times `index` of its time axis."""
    return replace(predicted, **{f.name: getattr(predicted, f.name)[index] for f in fields(EnsembleMean)
                                 if f.name != "width"})


def _rows(cfg: Config, width: int, predicted, kernel: dict, first: dict | None) -> list[dict]:
    """One row per (time, test point): n x (Monte Carlo - infinite width) against n x prediction."""
    rows = []
    for i, t in enumerate(cfg.times):
        for point in range(cfg.n_test):
            def at(tensor, i=i, point=point):
                return float(width * np.asarray(tensor)[i, point])
            row = {"width": width, "time": t, "test_point": point,
                   "infinite_width": float(predicted.kernel[i, point]),
                   "kernel_mc": at(kernel["kernel"] - predicted.kernel.numpy()), "kernel_se": at(kernel["kernel_se"]),
                   "kernel_predicted": at(predicted.ntk_shift + predicted.ntk_fluctuation),
                   "shift_only_predicted": at(predicted.ntk_shift)}
            row["kernel_z"] = (row["kernel_mc"] - row["kernel_predicted"]) / row["kernel_se"]
            row["shift_only_z"] = (row["kernel_mc"] - row["shift_only_predicted"]) / row["kernel_se"]
            if first is not None:
                row.update({"first_order_mc": at(first["first_order"]), "first_order_se": at(first["first_order_se"]),
                            "first_order_predicted": at(predicted.dntk + predicted.ddntk)})
                row["first_order_z"] = (row["first_order_mc"] - row["first_order_predicted"]) / row["first_order_se"]
            rows.append(row)
    return rows


def _summary(rows: list[dict]) -> dict:
    first = [r for r in rows if "first_order_z" in r]
    summary = {"kernel_max_abs_z": max(abs(r["kernel_z"]) for r in rows),
               "kernel_mean_z2": float(np.mean([r["kernel_z"] ** 2 for r in rows])),
               "shift_only_min_max_abs_z": min(max(abs(r["shift_only_z"]) for r in rows if r["width"] == w)
                                               for w in {r["width"] for r in rows}),
               "first_order_max_abs_z": max(abs(r["first_order_z"]) for r in first),
               "first_order_mean_z2": float(np.mean([r["first_order_z"] ** 2 for r in first])),
               "first_order_median_se": float(np.median([r["first_order_se"] for r in first])),
               "first_order_max_abs_predicted": max(abs(r["first_order_predicted"]) for r in first)}
    return summary


def _claims(cfg: Config, rows: list[dict]) -> list[dict]:
    """The weighted least-squares factors (`scale_factor`) of the Monte Carlo against each
    prediction, over every (width, time, test point), with their standard errors."""
    def column(key, chosen):
        return np.array([r[key] for r in chosen])
    first = [r for r in rows if "first_order_z" in r]
    kernel = scale_factor(column("kernel_mc", rows), column("kernel_se", rows), column("kernel_predicted", rows))
    fluctuation = scale_factor(column("kernel_mc", rows) - column("shift_only_predicted", rows),
                               column("kernel_se", rows),
                               column("kernel_predicted", rows) - column("shift_only_predicted", rows))
    first_order = scale_factor(column("first_order_mc", first), column("first_order_se", first),
                               column("first_order_predicted", first))
    widths = ", ".join(map(str, cfg.widths))
    return [cfg.kernel_part.check(*kernel, label=f"n = {widths}, {cfg.kernel_networks} networks each"),
            cfg.fluctuation_term.check(*fluctuation, label=f"n = {widths}"),
            cfg.first_order_part.check(*first_order, label=f"n = {cfg.first_order_width}, "
                                                          f"{cfg.first_order_networks} networks")]


def _report(cfg: Config, rows: list[dict], summary: dict, figure: str, claims: list[dict]) -> str:
    first = [r for r in rows if "first_order_z" in r]
    return "\n".join([
        "# The ensemble of trained networks at order 1/n (PDLT ch. ∞)", "",
        "The claims compare the Monte Carlo with each prediction through one factor a (weighted least "
        "squares over every width, time and test point, weights 1/s.e.²: a = 1 is the prediction); the "
        f"entries' z-scores are in the tables below (mean z² of the kernel part {summary['kernel_mean_z2']:.2f}, "
        f"of the first-order part {summary['first_order_mean_z2']:.2f}). The Monte Carlo averages each "
        "network's frozen-kernel (and first-order) flow from its own kernels at initialization: it tests "
        "the averaging over initializations, not networks trained by gradient descent.", "",
        claims_table(claims), "",
        f"tanh MLPs with {cfg.depth} hidden layers of width n (NTK parameterization, W_std {cfg.W_std}, "
        f"b_std {cfg.b_std}), trained by gradient flow on ½ Σ (z - y)² with {cfg.n_train} training points "
        f"(x ~ N(0, I_{cfg.d}), y = sin 2x₁) and predicted at {cfg.n_test} test points; times in units of "
        "1/λ_min of the infinite-width NTK's training block. `nk.ensemble_mean_flow` gives E z(t) = z_∞(t) "
        "+ (ntk_shift + ntk_fluctuation + dntk + ddntk), each of order 1/n; everything below is n x "
        "(E z(t) - z_∞(t)). Monte Carlo: the kernel part from each network's own NTK (its part odd in "
        "z(0) removed, mean exactly zero, and the control variate DG[Ĥ - Θ - Θ¹/n]y, mean O(1/n²)); "
        "the first-order part z₁ of `nk.nearly_kernel_flow` from each network's own dNTK and ddNTK (its "
        "dNTK part with z(0) = 0 removed: mean exactly zero). A longer Monte Carlo of the first-order "
        "part, with more networks per width, is on the theory page (docs/theory/finite_width.md), "
        "with the gap it resolves later in training: the NTK's fluctuation inside the first-order "
        "flow, an O(1/n²) term with a large coefficient.", "",
        "## Kernel part", "",
        markdown_table(rows, ["width", "time", "test_point", "infinite_width", "kernel_mc", "kernel_se",
                              "kernel_predicted", "kernel_z", "shift_only_predicted", "shift_only_z"]), "",
        f"## First-order part (n = {cfg.first_order_width})", "",
        markdown_table(first, ["time", "test_point", "first_order_mc", "first_order_se",
                               "first_order_predicted", "first_order_z"]), "",
        f"![prediction and Monte Carlo]({figure})", ""])


def _figure(folder: RunFolder, cfg: Config, rows: list[dict], curves: dict) -> str:
    fig, axes = plt.subplots(1, cfg.n_test, figsize=(5.5 * cfg.n_test, 5.4), squeeze=False)
    times = np.asarray(cfg.times)
    prediction = curves[cfg.widths[-1]]
    fine = prediction["times"]
    for point, ax in enumerate(axes[0]):
        for part, style in zip(PARTS, ("C0:", "C0--", "C3:", "C3--"), strict=True):
            ax.plot(fine, prediction[part][:, point], style, lw=1, label=part)
        ax.plot(fine, (prediction["ntk_shift"] + prediction["ntk_fluctuation"])[:, point], "C0-",
                label="kernel part, predicted")
        ax.plot(fine, (prediction["dntk"] + prediction["ddntk"])[:, point], "C3-", label="z₁, predicted")
        ax.plot(fine, sum(prediction[p] for p in PARTS)[:, point], "k-", lw=2, label="total, predicted")
        for k, width in enumerate(cfg.widths):
            mine = [r for r in rows if r["width"] == width and r["test_point"] == point]
            ax.errorbar(times * (1 + 0.04 * k), [r["kernel_mc"] for r in mine], [r["kernel_se"] for r in mine],
                        fmt="o", ms=4, color=f"C{k + 4}", label=f"kernel part, Monte Carlo n = {width}")
            if "first_order_mc" in mine[0]:
                ax.errorbar(times * (1 - 0.04 * (k + 1)), [r["first_order_mc"] for r in mine],
                            [r["first_order_se"] for r in mine], fmt="s", ms=4, mfc="none", color="C3",
                            label=f"z₁, Monte Carlo n = {width}")
        ax.axhline(0, color="0.7", lw=0.8)
        ax.set(xscale="log", xlabel="training time t λ_min", ylabel="n (E z(t) - z_∞(t))",
               title=f"test point {point}")
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="lower center", ncol=4, fontsize=8)
    fig.tight_layout(rect=(0, 0.2, 1, 1))
    return folder.save_figure("ensemble_mean", fig)
