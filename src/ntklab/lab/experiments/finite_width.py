"""`ntklab run finite-width` -- Roberts, Yaida & Hanin: finite-width effects are set by the
depth-to-width ratio L/n, and computed by the book's 1/n recursions (`nk.finite_width`).  For
ReLU and tanh MLPs at criticality (NTK parameterization) of depth L and width n, over many
initializations: the relative variance of the NTK's diagonal and the shift of its mean from the
infinite-width NTK (`studies.finite_width`), beside the predicted values, with the residuals in
units of the Monte Carlo standard error."""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from tqdm.auto import tqdm

import ntklab as nk
from ...theory.dntk import ddntk_statistics, dntk_statistics
from ..claims import Claim, scale_factor
from ..report import RunFolder, claims_table, markdown_table
from ..studies import finite_width as F
from . import register

FAMILIES = {"relu": F.CRITICAL_RELU, "tanh": F.CRITICAL_TANH}


@dataclass(frozen=True)
class Config:
    """Settings of this experiment (the defaults are the full run)."""

    families: tuple[str, ...] = ("relu", "tanh")
    depths: tuple[int, ...] = (1, 2, 4, 8)
    widths: tuple[int, ...] = (32, 64, 128, 256, 512)
    seeds: int = 600
    inputs: int = 4
    d: int = 8
    covariance_depth: int = 2
    covariance_width: int = 64
    covariance_seeds: int = 4000
    hierarchy_depths: tuple[int, ...] = (1, 2, 4)
    hierarchy_widths: tuple[int, ...] = (32, 128)
    hierarchy_seeds: int = 300
    several_inputs: int = 3
    several_inputs_depth: int = 2
    several_inputs_width: int = 64
    several_inputs_seeds: int = 1000
    relative_variance: Claim = Claim(
        "Var Θ(x,x)/Θ² at order 1/n from the layer recursions: factor a in Monte Carlo = a × prediction",
        1.0, 0.1, "Roberts, Yaida & Hanin 2022, ch. 8-9 (the tolerance: O(L/n) relative corrections at "
                  "these widths)")
    mean_shift: Claim = Claim("the 1/n shift of E Θ(x,x): factor a in Monte Carlo = a × prediction", 1.0, 0.2,
                              "Roberts, Yaida & Hanin 2022, ch. 9")
    covariance: Claim = Claim("Cov[Θ(x_a,x_b), Θ(x_c,x_d)] over several inputs: factor a in Monte Carlo = a × "
                              "prediction", 1.0, 0.1, "Roberts, Yaida & Hanin 2022, ch. 8")
    dntk_output: Claim = Claim("E[dĤ z] (P + 2Q) at order 1/n: factor a in Monte Carlo = a × prediction", 1.0, 0.2,
                               "Roberts, Yaida & Hanin 2022, ch. 11 (recursion derived here)")
    ddntk: Claim = Claim("E[ddĤ] (R + 2S) at order 1/n: factor a in Monte Carlo = a × prediction", 1.0, 0.2,
                         "Roberts, Yaida & Hanin 2022, ch. 11 (recursion derived here)")

    @classmethod
    def quick(cls) -> "Config":
        """Small settings for tests and previews (seconds)."""
        return cls(depths=(1, 4), widths=(32, 128), seeds=48, inputs=3, covariance_depth=1,
                   covariance_width=16, covariance_seeds=300, hierarchy_depths=(1,),
                   hierarchy_widths=(16, 32), hierarchy_seeds=40, several_inputs_depth=1,
                   several_inputs_width=16, several_inputs_seeds=40)


@register("finite-width", "Roberts-Yaida-Hanin: NTK fluctuations of deep MLPs, predicted at order L/n",
          config=Config)
def run(folder: RunFolder, cfg: Config, *, seed: int, device: torch.device) -> dict:
    """Monte Carlo of the NTK's diagonal, covariances and dNTK/ddNTK moments beside the predictions."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(cfg.inputs, cfg.d, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True) * math.sqrt(cfg.d)   # ||x||^2 / d = 1
    rows = []
    grid = [(family, L, n) for family in cfg.families for L in cfg.depths for n in cfg.widths]
    for family, depth, width in tqdm(grid, desc="finite-width", unit="net"):
        stats = F.ntk_statistics(nk.mlp(depth, width, **FAMILIES[family]), x, cfg.seeds,
                                 first_seed=seed * 100_000)
        rows.append({"family": family, "depth": depth, "width": width, "L_over_n": depth / width,
                     **stats,
                     "z_variance": (stats["relative_variance"] - stats["predicted_relative_variance"])
                     / stats["relative_variance_se"],
                     "z_mean_shift": (stats["mean_shift"] - stats["predicted_mean_shift"])
                     / stats["mean_shift_se"]})
    covariances = [{"family": family, **row} for family in tqdm(cfg.families, desc="finite-width covariances")
                   for row in F.ntk_covariance_statistics(
                       nk.mlp(cfg.covariance_depth, cfg.covariance_width, **FAMILIES[family]), x,
                       cfg.covariance_seeds, first_seed=seed * 100_000 + 50_000)]
    hierarchy = _hierarchy_moments(cfg, x[:1], seed)
    entries = _several_inputs(cfg, x[:cfg.several_inputs], seed)
    z = np.array([r["z_variance"] for r in rows])
    z_mean = np.array([r["z_mean_shift"] for r in rows])
    summary = {"points": len(rows), "max_abs_z_variance": float(np.abs(z).max()),
               "rms_z_variance": float(np.sqrt((z ** 2).mean())),
               "max_abs_z_mean_shift": float(np.abs(z_mean).max()),
               "rms_z_mean_shift": float(np.sqrt((z_mean ** 2).mean())),
               "max_abs_z_covariance": max(abs(r["z"]) for r in covariances),
               "max_abs_z_dntk_output": max(abs(r["z_dntk_output"]) for r in hierarchy),
               "max_abs_z_ddntk": max(abs(r["z_ddntk"]) for r in hierarchy),
               **{f"{stat}_{name}_several_inputs": value for name in SEVERAL for stat, value in (
                   ("max_abs_z", max(abs(r["z"]) for r in entries if r["quantity"] == name)),
                   ("mean_z2", float(np.mean([r["z"] ** 2 for r in entries if r["quantity"] == name]))))}}
    folder.write_csv("metrics.csv", rows)
    folder.write_csv("covariances.csv", covariances)
    folder.write_csv("hierarchy.csv", hierarchy)
    folder.write_csv("hierarchy_several_inputs.csv", entries)
    folder.write_json("fits.json", summary)
    figure = _figure(folder, rows, x, cfg)
    hierarchy_figure = _hierarchy_figure(folder, hierarchy, entries, cfg)
    folder.claims += _claims(cfg, rows, covariances, hierarchy, entries)
    folder.write_text("report.md", _report(cfg, rows, covariances, hierarchy, entries, summary,
                                           (figure, hierarchy_figure), folder.claims))
    return summary


def _hierarchy_moments(cfg: Config, x: torch.Tensor, seed: int) -> list[dict]:
    """n E[dĤ z] and n E[ddĤ] of critical tanh MLPs at one input, per depth and width, the
    predicted n E[dĤ z] = P + 2Q (`nk.dntk_statistics`) and n E[ddĤ] = R + 2S
    (`nk.ddntk_statistics`) with their z-scores, and the difference
    between the smallest and largest width in units of its standard error."""
    rows = []
    for depth in tqdm(cfg.hierarchy_depths, desc="finite-width dNTK/ddNTK", unit="depth"):
        chosen = []
        for width in cfg.hierarchy_widths:
            net = nk.mlp(depth, width, **F.CRITICAL_TANH)
            moments = F.hierarchy_moments(net, x, cfg.hierarchy_seeds, first_seed=seed * 100_000 + 80_000)
            row = {"depth": depth, "width": width, **{k: width * float(v[0, 0, 0, 0]) for k, v in moments.items()},
                   "predicted_dntk_output": width * float(dntk_statistics(net, x).output_correlation),
                   "predicted_ddntk": width * float(ddntk_statistics(net, x).output_mean)}
            for name in ("dntk_output", "ddntk"):
                row["z_" + name] = (row[name] - row["predicted_" + name]) / row[name + "_se"]
            chosen.append(row)
        for name in ("dntk_output", "ddntk"):
            first, last = chosen[0], chosen[-1]
            z = (last[name] - first[name]) / math.hypot(first[name + "_se"], last[name + "_se"])
            for row in chosen:
                row[f"z_{name}_across_widths"] = z
        rows += chosen
    return rows


SEVERAL: dict[str, dict[str, Any]] = {
    "dntk_output": {"label": "E[dĤ(x_a,x_b,x_c) z(x_d)]", "formula": "(P_abcd + Q_abcd + Q_acbd)/n",
                    "function": "nk.dntk_statistics", "symmetric": (1, 2)},
    "ddntk": {"label": "E[ddĤ(x_a,x_b,x_c,x_d)]", "formula": "(R_abcd + S_abcd + S_abdc)/n",
              "function": "nk.ddntk_statistics", "symmetric": (2, 3)}}
"""The two tensors compared over several inputs: the dNTK is symmetric in its last two samples,
the ddNTK in its last two (`symmetric`), so one row per distinct entry."""


def _several_inputs(cfg: Config, x: torch.Tensor, seed: int) -> list[dict]:
    """n E[dĤ(x_a,x_b,x_c) z(x_d)] and n E[ddĤ(x_a,x_b,x_c,x_d)] of a critical tanh MLP over
    several inputs: Monte Carlo of each network's own hierarchy against `nk.dntk_statistics` and
    `nk.ddntk_statistics`, one row per quantity and distinct entry (`SEVERAL`)."""
    width = cfg.several_inputs_width
    net = nk.mlp(cfg.several_inputs_depth, width, **F.CRITICAL_TANH)
    measured = F.hierarchy_moments(net, x, cfg.several_inputs_seeds, first_seed=seed * 100_000 + 90_000)
    predicted = {"dntk_output": width * dntk_statistics(net, x).output_correlation.numpy(),
                 "ddntk": width * ddntk_statistics(net, x).output_mean.numpy()}
    rows = []
    for name, spec in SEVERAL.items():
        first, second = spec["symmetric"]
        for entry in itertools.product(range(len(x)), repeat=4):
            if entry[first] <= entry[second]:
                mean, se = width * measured[name][entry], width * measured[name + "_se"][entry]
                rows.append({"quantity": name, "entry": "".join(map(str, entry)),
                             "predicted": float(predicted[name][entry]), "monte_carlo": float(mean),
                             "se": float(se), "z": float((mean - predicted[name][entry]) / se)})
    return rows


def _factor(rows: list[dict], measured: str, se: str, predicted: str) -> tuple[float, float]:
    """`scale_factor` of the columns `measured` ± `se` against `predicted` over `rows`."""
    return scale_factor(*(np.array([r[key] for r in rows]) for key in (measured, se, predicted)))


def _claims(cfg: Config, rows: list[dict], covariances: list[dict], hierarchy: list[dict],
            entries: list[dict]) -> list[dict]:
    """Each predicted quantity against its Monte Carlo through one weighted least-squares factor
    (`scale_factor`, a = 1 is the prediction) over every depth, width and input entry."""
    grid = f"L = {', '.join(map(str, cfg.depths))}, n = {', '.join(map(str, cfg.widths))}, {cfg.seeds} networks"
    one_input = (f"tanh, L = {', '.join(map(str, cfg.hierarchy_depths))}, "
                 f"n = {', '.join(map(str, cfg.hierarchy_widths))}")
    several = f"{cfg.several_inputs} inputs, tanh, L = {cfg.several_inputs_depth}, n = {cfg.several_inputs_width}"
    claims = [cfg.relative_variance.check(*_factor(rows, "relative_variance", "relative_variance_se",
                                                   "predicted_relative_variance"), label=grid),
              cfg.mean_shift.check(*_factor(rows, "mean_shift", "mean_shift_se", "predicted_mean_shift"), label=grid),
              cfg.covariance.check(*_factor(covariances, "monte_carlo", "se", "predicted"),
                                   label=f"L = {cfg.covariance_depth}, n = {cfg.covariance_width}")]
    for name in SEVERAL:
        claim = getattr(cfg, name)
        mine = [r for r in entries if r["quantity"] == name]
        claims += [claim.check(*_factor(hierarchy, name, name + "_se", "predicted_" + name),
                               label=f"one input, {one_input}"),
                   claim.check(*_factor(mine, "monte_carlo", "se", "predicted"), label=several)]
    return claims


def _report(cfg: Config, rows: list[dict], covariances: list[dict], hierarchy: list[dict], entries: list[dict],
            summary: dict, figures: tuple[str, str], claims: list[dict]) -> str:
    """report.md: prediction against Monte Carlo, point by point."""
    table = [{"σ": r["family"], "L": r["depth"], "n": r["width"], "L/n": round(r["L_over_n"], 4),
              "Var/E² predicted": f"{r['predicted_relative_variance']:.4f}",
              "Var/E² Monte Carlo": f"{r['relative_variance']:.4f} ± {r['relative_variance_se']:.4f}",
              "z": f"{r['z_variance']:+.1f}",
              "mean shift predicted": f"{r['predicted_mean_shift']:+.5f}",
              "mean shift Monte Carlo": f"{r['mean_shift']:+.5f} ± {r['mean_shift_se']:.5f}",
              "z (shift)": f"{r['z_mean_shift']:+.1f}"} for r in rows]
    coefficient = ", ".join(f"{(11 * L + 7) / (3 * (L + 1)):.2f} at L = {L}" for L in cfg.depths)
    tanh = [abs(r["mean_shift"]) / math.sqrt(r["relative_variance"]) for r in rows
            if r["family"] == "tanh" and r["relative_variance"] > 0]
    shift = (f"|shift| at most {max(tanh):.2g} standard deviations of Θ at these widths" if tanh
             else "not measured in this run")
    lines = [
        "# Finite-width NTK fluctuations, predicted at order 1/n (Roberts, Yaida & Hanin)", "",
        claims_table(claims), "",
        f"MLPs at criticality in the NTK parameterization (ReLU: W_std = sqrt 2; tanh: W_std = 1; "
        f"b_std = 0), L hidden layers of width n; {cfg.seeds} initializations each; {cfg.inputs} "
        f"inputs on the sphere of radius sqrt({cfg.d}); every number is an average over the inputs. "
        f"*Predicted*: `nk.finite_width`, the book's 1/n recursions (no fitted constant). "
        f"Standard errors of the variance from the fourth moment (Θ is skewed at large L/n); "
        f"z = (Monte Carlo - predicted) / s.e.", "",
        markdown_table(table, list(table[0])), "",
        f"![prediction vs Monte Carlo]({figures[0]})", "",
        f"Over the {summary['points']} points: relative variance |z| at most "
        f"{summary['max_abs_z_variance']:.1f} (rms {summary['rms_z_variance']:.2f}); mean shift |z| "
        f"at most {summary['max_abs_z_mean_shift']:.1f} (rms {summary['rms_z_mean_shift']:.2f}). "
        f"An rms z near 1 means the leading order is right to within the Monte Carlo error; at the "
        f"largest L/n the next order (1/n²) may show as a positive z.", "",
        f"ReLU: the leading order is Var Θ/(EΘ)² = (L/n)(11L + 7)/(3(L + 1)), so it is *not* a "
        f"function of L/n alone: its coefficient is {coefficient} (→ 11/3). At fixed L/n the "
        f"deeper network is predicted to fluctuate more (compare rows of equal L/n). ReLU has no 1/n mean "
        f"shift of the diagonal NTK; tanh's is small ({shift}): where it is well below one, the "
        "mean-shift column tests that the prediction is consistent with the data rather than "
        "resolving a non-zero shift.", "",
        "## Several inputs", "",
        f"The NTK's covariance across inputs, Cov[Θ(x_a, x_b), Θ(x_c, x_d)] of one output, for "
        f"L = {cfg.covariance_depth}, n = {cfg.covariance_width}, {cfg.covariance_seeds} "
        f"initializations; predicted (A_(ab)(cd) + B_(ac)(bd) + B_(ad)(bc)) / n from the book's "
        f"tensors over sample indices (`nk.finite_width` of the inputs jointly). The entries share "
        f"the same initializations, so their z-scores are correlated.", "",
        markdown_table([{"σ": r["family"], "entry": r["entry"], "predicted": f"{r['predicted']:.5g}",
                         "Monte Carlo": f"{r['monte_carlo']:.5g} ± {r['se']:.2g}", "z": f"{r['z']:+.1f}"}
                        for r in covariances], ["σ", "entry", "predicted", "Monte Carlo", "z"]), "",
        f"Largest |z|: {summary['max_abs_z_covariance']:.1f}.", "",
        "## dNTK and ddNTK", "",
        f"Critical tanh MLPs at one input, {cfg.hierarchy_seeds} initializations per width, each "
        "network's own dNTK and ddNTK (`nk.ntk_hierarchy`), scaled by the width n: n E[dĤ(x,x,x) z(x)] "
        "(the dNTK-output correlation) against its prediction P + 2Q from the layer recursion "
        "(`nk.dntk_statistics`, the book's P and Q of ch. 11), and n E[ddĤ(x,x,x,x)] (the ddNTK "
        "mean) against R + 2S (`nk.ddntk_statistics`). n E the same at every width (z across "
        "widths near 0) is their 1/n scaling. They drive the trained network's 1/n correction "
        "(`nearly-kernel`).", "",
        markdown_table([{"L": r["depth"], "n": r["width"],
                         "n E[dĤ z]": f"{r['dntk_output']:.3f} ± {r['dntk_output_se']:.3f}",
                         "predicted P + 2Q": f"{r['predicted_dntk_output']:.3f}",
                         "z": f"{r['z_dntk_output']:+.1f}",
                         "z across widths (dĤ z)": f"{r['z_dntk_output_across_widths']:+.1f}",
                         "n E[ddĤ]": f"{r['ddntk']:.3f} ± {r['ddntk_se']:.3f}",
                         "predicted R + 2S": f"{r['predicted_ddntk']:.3f}",
                         "z (ddĤ)": f"{r['z_ddntk']:+.1f}",
                         "z across widths (ddĤ)": f"{r['z_ddntk_across_widths']:+.1f}"} for r in hierarchy],
                       ["L", "n", "n E[dĤ z]", "predicted P + 2Q", "z", "z across widths (dĤ z)", "n E[ddĤ]",
                        "predicted R + 2S", "z (ddĤ)", "z across widths (ddĤ)"]), "",
        f"![dNTK and ddNTK, prediction vs Monte Carlo]({figures[1]})", "",
        "### dNTK and ddNTK over several inputs", "",
        f"The same over the first {cfg.several_inputs} inputs jointly, a critical tanh MLP with "
        f"L = {cfg.several_inputs_depth}, n = {cfg.several_inputs_width}, {cfg.several_inputs_seeds} "
        f"initializations; one row per distinct entry (the dNTK is symmetric in b, c, the ddNTK in "
        f"c, d), all sharing the same initializations (correlated z); mean z² is 1 if the prediction "
        f"is exact. All entries in `hierarchy_several_inputs.csv`; the five largest predicted of each "
        f"here:", "",
        markdown_table([{"quantity": SEVERAL[r["quantity"]]["label"], "prediction": SEVERAL[r["quantity"]]["formula"],
                         "entry abcd": r["entry"], "predicted n E": f"{r['predicted']:.4f}",
                         "Monte Carlo n E": f"{r['monte_carlo']:.4f} ± {r['se']:.4f}", "z": f"{r['z']:+.1f}"}
                        for name in SEVERAL
                        for r in sorted((r for r in entries if r["quantity"] == name),
                                        key=lambda r: -abs(r["predicted"]))[:5]],
                       ["quantity", "prediction", "entry abcd", "predicted n E", "Monte Carlo n E", "z"]), "",
        "; ".join(f"{SEVERAL[name]['label']}: mean z² {summary[f'mean_z2_{name}_several_inputs']:.2f}, "
                  f"max |z| {summary[f'max_abs_z_{name}_several_inputs']:.1f}" for name in SEVERAL) + ".", ""]
    return "\n".join(lines)


def _figure(folder: RunFolder, rows: list[dict], x: torch.Tensor, cfg: Config) -> str:
    families = sorted({r["family"] for r in rows}, key=list(FAMILIES).index)
    fig, axes = plt.subplots(2, len(families), figsize=(5.5 * len(families), 8), squeeze=False)
    for column, family in enumerate(families):
        top, bottom = axes[0, column], axes[1, column]
        for i, depth in enumerate(sorted({r["depth"] for r in rows})):
            chosen = [r for r in rows if r["family"] == family and r["depth"] == depth]
            ratio = [r["L_over_n"] for r in chosen]
            top.errorbar(ratio, [r["relative_variance"] for r in chosen],
                         yerr=[r["relative_variance_se"] for r in chosen], marker="o", capsize=3,
                         ls="none", color=f"C{i}", label=f"L = {depth} Monte Carlo")
            widths = np.geomspace(min(cfg.widths), max(cfg.widths), 30).round().astype(int)
            predicted = [float(F.predicted_diagonal(nk.mlp(depth, int(n), **FAMILIES[family]), x)[1].mean())
                         for n in widths]
            top.plot(depth / widths, predicted, color=f"C{i}", lw=1, label=f"L = {depth} predicted")
            bottom.plot(ratio, [r["z_variance"] for r in chosen], "o", color=f"C{i}")
            bottom.plot(ratio, [r["z_mean_shift"] for r in chosen], "x", color=f"C{i}")
        top.set_title(f"{family} at criticality")
        top.set_xscale("log")
        top.set_yscale("log")
        top.set_ylabel("Var[Θ(x,x)] / E[Θ(x,x)]²")
        top.legend(fontsize=7, ncol=2)
        bottom.axhspan(-2, 2, color="0.9")
        bottom.axhline(0, color="k", lw=0.8)
        bottom.set_xscale("log")
        bottom.set_ylabel("(Monte Carlo - predicted) / s.e.")
        bottom.set_title(f"{family}: residuals (o variance, x mean shift)")
        for ax in (top, bottom):
            ax.set_xlabel("depth / width  L/n")
            ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return folder.save_figure("ntk_fluctuations_predicted_vs_monte_carlo", fig)


def _hierarchy_figure(folder: RunFolder, hierarchy: list[dict], entries: list[dict], cfg: Config) -> str:
    """Top: the dNTK-output correlation and the ddNTK mean over several inputs, Monte Carlo
    against prediction per entry. Bottom: the same two quantities per depth at one input, Monte
    Carlo per width beside the prediction."""
    fig, axes = plt.subplots(2, len(SEVERAL), figsize=(12, 9))
    depths = sorted({r["depth"] for r in hierarchy})
    widths = sorted({r["width"] for r in hierarchy})
    short = {"dntk_output": "dNTK-output correlation", "ddntk": "ddNTK mean"}
    for (top, bottom), (name, spec) in zip(axes.T, SEVERAL.items(), strict=True):
        chosen = [r for r in entries if r["quantity"] == name]
        predicted = [r["predicted"] for r in chosen]
        top.errorbar(predicted, [r["monte_carlo"] for r in chosen], yerr=[r["se"] for r in chosen],
                     fmt="o", ms=3, capsize=2, label="Monte Carlo (one entry abcd)")
        line = [min(predicted), max(predicted)]
        top.plot(line, line, "k-", lw=0.8, label="prediction = Monte Carlo")
        top.set_xlabel(f"predicted n {spec['label']}")
        top.set_ylabel("Monte Carlo")
        top.set_title(f"{short[name]}, {cfg.several_inputs} inputs\n(tanh, L = {cfg.several_inputs_depth}, "
                      f"n = {cfg.several_inputs_width})")
        top.legend(fontsize=8)
        for i, width in enumerate(widths):
            mine = [r for r in hierarchy if r["width"] == width]
            bottom.errorbar([r["depth"] * (1 + 0.04 * (i - (len(widths) - 1) / 2)) for r in mine],
                            [r[name] for r in mine], yerr=[r[name + "_se"] for r in mine], fmt="o", capsize=3,
                            color=f"C{i}", label=f"Monte Carlo, n = {width}")
        bottom.plot(depths, [next(r["predicted_" + name] for r in hierarchy if r["depth"] == d) for d in depths],
                    "k-", marker="x", label=f"predicted {spec['formula'].split('/')[0]}")
        bottom.set_xscale("log")
        bottom.minorticks_off()
        bottom.set_xticks(depths, [str(d) for d in depths])
        bottom.set_xlabel("depth L")
        bottom.set_ylabel(f"n {spec['label'].replace('x_a,x_b,x_c,x_d', 'x,x,x,x').replace('x_a,x_b,x_c', 'x,x,x')}"
                          .replace("z(x_d)", "z(x)"))
        bottom.set_title(f"{short[name]} at one input, critical tanh")
        bottom.legend(fontsize=8)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return folder.save_figure("dntk_ddntk_predicted_vs_monte_carlo", fig)
