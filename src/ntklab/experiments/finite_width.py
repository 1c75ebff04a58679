"""`ntklab run finite-width` -- Roberts, Yaida & Hanin: finite-width effects are set by the
depth-to-width ratio L/n.  For ReLU MLPs (NTK parameterization, W_std = sqrt 2) of depth L
and width n, over many initializations: the relative variance of the NTK's diagonal and the
deviation of its mean from the infinite-width NTK (`studies.finite_width`), against L/n,
with fitted log-log slopes (theory: relative variance proportional to L/n)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import math
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from tqdm.auto import tqdm

from .. import arch as nk
from ..fits import power_law
from ..report import RunFolder, markdown_table
from ..studies import finite_width as F
from . import register


@dataclass(frozen=True)
class Config:
    """Settings of this experiment (the defaults are the full run)."""
    depths: tuple = (1, 2, 4, 8)
    widths: tuple = (32, 64, 128, 256, 512)
    seeds: int = 200
    inputs: int = 4
    d: int = 8

    @classmethod
    def quick(cls) -> "Config":
        """Small settings for tests and previews (seconds)."""
        return cls(depths=(1, 4), widths=(32, 128), seeds=48, inputs=3)


@register("finite-width", "Roberts-Yaida-Hanin: NTK fluctuations of deep MLPs scale with L/n")
def run(folder: RunFolder, *, seed: int, quick: bool, device: torch.device) -> dict:
    cfg = Config.quick() if quick else Config()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(cfg.inputs, cfg.d, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True) * math.sqrt(cfg.d)   # ||x||^2 / d = 1
    started = time.perf_counter()
    rows = []
    for depth, width in tqdm([(L, n) for L in cfg.depths for n in cfg.widths],
                             desc="finite-width", unit="net"):
        stats = F.ntk_statistics(nk.mlp(depth, width, **F.CRITICAL_RELU), x, cfg.seeds, first_seed=seed * 100_000)
        rows.append({"depth": depth, "width": width, "L_over_n": depth / width, **stats})
    seconds = time.perf_counter() - started
    ratio = np.array([r["L_over_n"] for r in rows])
    variance = np.array([r["relative_variance"] for r in rows])
    slope, constant = power_law(ratio, variance)
    deviation = np.array([r["mean_deviation"] for r in rows])
    resolved = deviation > 2 * np.array([r["mean_deviation_se"] for r in rows])
    mean_fit = power_law(ratio[resolved], deviation[resolved]) if resolved.sum() >= 3 else None
    fits = {"relative_variance_slope": slope, "relative_variance_constant": constant,
            "mean_deviation_slope": None if mean_fit is None else mean_fit[0],
            "mean_deviation_points_resolved": int(resolved.sum())}
    folder.write_csv("metrics.csv", rows)
    folder.write_json("fits.json", fits)
    figure = _figure(folder, rows, slope, constant)
    folder.config.update(asdict(cfg))
    folder.write_text("report.md", _report(cfg, rows, fits, mean_fit, resolved, figure, seconds))
    return {"seconds": round(seconds, 1), **{k: v for k, v in fits.items() if v is not None}}


def _report(cfg: Config, rows: list[dict], fits: dict, mean_fit, resolved, figure: str,
            seconds: float) -> str:
    """report.md: the table against L/n, the fit and what the mean shift shows."""
    table = [{"L": r["depth"], "n": r["width"], "L/n": round(r["L_over_n"], 4),
              "Var/E^2 (diag)": f"{r['relative_variance']:.4f} ± {r['relative_variance_se']:.4f}",
              "|E - inf| / scale": f"{r['mean_deviation']:.4f} ± {r['mean_deviation_se']:.4f}"}
             for r in rows]
    mean_line = (f"The mean's deviation from the infinite-width NTK is resolved (> 2 s.e.) at "
                 f"{int(resolved.sum())} of {len(rows)} points"
                 + (f"; fitted slope against L/n there: {mean_fit[0]:.2f} (theory 1)." if mean_fit
                    else "; too few to fit: at these seed counts the O(L/n) shift of the mean is "
                         "below the Monte Carlo error of the mean."))
    return "\n".join([
        "# Finite-width NTK fluctuations against depth/width (Roberts, Yaida & Hanin)", "",
        f"ReLU MLPs, NTK parameterization (W_std = sqrt 2, b_std = 0), L hidden layers of width n; "
        f"{cfg.seeds} initializations each; {cfg.inputs} inputs on the sphere of radius "
        f"sqrt({cfg.d}).", "",
        markdown_table(table, list(table[0])), "",
        f"![scaling]({figure})", "",
        f"Fit over all (L, n): Var/E^2 = {fits['relative_variance_constant']:.2f} "
        f"(L/n)^{fits['relative_variance_slope']:.2f} (theory: proportional to L/n, slope 1; "
        f"Hanin & Nica 2019 give exp(5 L/n) - 1 for ReLU with its own input conventions). "
        f"{mean_line}", "",
        f"Time: {seconds:.0f} s.", ""])


def _figure(folder: RunFolder, rows: list[dict], slope: float, constant: float) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for i, depth in enumerate(sorted({r["depth"] for r in rows})):
        chosen = [r for r in rows if r["depth"] == depth]
        ratio = [r["L_over_n"] for r in chosen]
        axes[0].errorbar(ratio, [r["relative_variance"] for r in chosen],
                         yerr=[r["relative_variance_se"] for r in chosen], marker="o", capsize=3,
                         ls="none", color=f"C{i}", label=f"L = {depth}")
        axes[1].errorbar(ratio, [r["mean_deviation"] for r in chosen],
                         yerr=[r["mean_deviation_se"] for r in chosen], marker="o", capsize=3,
                         ls="none", color=f"C{i}", label=f"L = {depth}")
    grid = np.geomspace(min(r["L_over_n"] for r in rows), max(r["L_over_n"] for r in rows), 50)
    axes[0].plot(grid, constant * grid ** slope, "k--", label=f"fit {constant:.2f} (L/n)^{slope:.2f}")
    axes[0].set_ylabel("Var[Theta(x,x)] / E[Theta(x,x)]^2")
    axes[1].set_ylabel("|E Theta - Theta_inf| / scale")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("depth / width  L/n")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    return folder.save_figure("ntk_fluctuations_vs_L_over_n", fig)
