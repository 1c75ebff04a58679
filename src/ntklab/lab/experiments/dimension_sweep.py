"""`ntklab run dimension-sweep` -- Damian, Lee & Soltanolkotabi (2022): the sample complexity's
scaling in the input dimension d. For the target He_2(u.x)/2 + He_p(u.x)/sqrt(2 p!) (p = 3 for
speed; unit norm, the zero predictor scores 1), for each d it finds the number of samples n* at
which the mean test loss (over seeds) first falls below a threshold (0.3: the He_2 half and
part of the He_p half learned), by a geometric grid of n and log-log interpolation between the
two grid points around the crossing, for Algorithm 1 and NTK regression. The paper's claims:
Algorithm 1 needs n ~ d^2 (up to logs), kernels n ~ d^p; the fitted exponents of n* against d
are reported with their standard errors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import matplotlib.pyplot as plt
import numpy as np
import torch
from tqdm.auto import tqdm

from ..claims import Claim
from ..fits import power_law_slope
from ..report import RunFolder, claims_table, markdown_table
from ..studies import representation as R
from . import register

def _algorithm1(x, y, cfg: "Config", seed: int) -> R.TwoLayerPredictor:
    return R.algorithm1(x, y, m=cfg.m, seed=seed)


def _ntk_regression(x, y, cfg: "Config", seed: int) -> R.KernelPredictor:
    return R.ntk_regression(x, y)


METHODS: dict[str, Callable[..., Callable[[torch.Tensor], torch.Tensor]]] = {
    "Algorithm 1": _algorithm1, "NTK regression": _ntk_regression}


@dataclass(frozen=True)
class Config:
    """Settings of this experiment (the defaults are the full run)."""

    p: int = 3
    dims: dict[str, tuple[int, ...]] = field(default_factory=lambda: {
        "Algorithm 1": (6, 8, 12, 16, 24, 32), "NTK regression": (6, 8, 10, 12, 16, 20)})
    threshold: float = 0.3
    noise: float = 0.1
    m: int = 1000
    seeds: int = 4
    n_test: int = 3000
    n_start: int = 25
    n_max: int = 12_000
    after_crossing: int = 2   # grid points measured past the crossing (the curves' plateaus), not used for n*
    alg1_exponent: Claim = Claim(
        "Algorithm 1: exponent e of n* ∝ d^e", 2.0, 0.5,
        "Damian, Lee & Soltanolkotabi 2022, Theorem 1 (n = O(d^2 polylog d); the tolerance covers "
        "the polylog: d^2 log d has local exponent 2 + 1/ln d = 2.3-2.6 at d = 6-32)")
    ntk_modes_exponent: Claim = Claim(
        "NTK regression: exponent of n*/C(d+p, p) against d (n* grows as the number of polynomial "
        "modes of degree <= p)", 0.0, 0.5,
        "Ghorbani, Mei, Misiakiewicz & Montanari 2021 (kernel ridge regression learns the degree-k "
        "part once n exceeds the number of modes of degree <= k, C(d+k, k) ~ d^k/k!)")

    @classmethod
    def quick(cls) -> "Config":
        """Small settings for tests and previews (seconds)."""
        return cls(dims={"Algorithm 1": (6, 8, 12), "NTK regression": (6, 8, 10)}, threshold=0.35,
                   m=400, seeds=1, n_test=1500, n_max=4000)


def crossing(cfg: Config, method: str, d: int, seed: int) -> tuple[float, list[dict]]:
    """n* for one method and dimension, and the (n, loss) points measured on the way (and
    `cfg.after_crossing` grid points past the crossing, within n_max)."""
    points: list[dict] = []
    n, previous = max(cfg.n_start, 2 * (d + 1)), None   # preprocessing needs n > d + 1
    n_star, first_past = float("nan"), 0
    while n <= cfg.n_max and (not np.isfinite(n_star) or len(points) < first_past + cfg.after_crossing):
        losses = []
        for s in range(cfg.seeds):
            target = R.paper_target(d, cfg.p, seed=seed + s)
            x, y = R.sample(target, n, noise=cfg.noise, seed=seed + s + 1000)
            predictor = METHODS[method](x, y, cfg, seed + s + 2000)
            losses.append(R.test_loss(predictor, target, cfg.n_test, seed=seed + s + 3000))
        loss = float(np.mean(losses))
        points.append({"method": method, "d": d, "n": n, "loss": loss})
        if loss < cfg.threshold and not np.isfinite(n_star):
            first_past = len(points)
            if previous is None:
                n_star = float(n)
            else:
                (n0, l0), (n1, l1) = previous, (n, loss)
                fraction = math.log(l0 / cfg.threshold) / math.log(l0 / l1)
                n_star = float(math.exp(math.log(n0) + fraction * math.log(n1 / n0)))
        previous = (n, loss)
        n = int(round(n * math.sqrt(2)))
    return n_star, points


@register("dimension-sweep", "Damian-Lee-Soltanolkotabi: samples needed against d, Algorithm 1 (d^2) "
          "vs NTK regression (d^p)", config=Config)
def run(folder: RunFolder, cfg: Config, *, seed: int, device: torch.device) -> dict:
    """The crossing n* per method and d, the fitted exponents, the report."""
    rows, curves = [], []
    jobs = [(method, d) for method, dims in cfg.dims.items() for d in dims]
    for method, d in tqdm(jobs, desc="dimension sweep", unit="d"):
        n_star, points = crossing(cfg, method, d, seed * 10_000)
        rows.append({"method": method, "d": d, "n_star": n_star, "n_star_over_d2": n_star / d ** 2,
                     f"n_star_over_d{cfg.p}": n_star / d ** cfg.p, "modes": math.comb(d + cfg.p, cfg.p),
                     "n_star_over_modes": n_star / math.comb(d + cfg.p, cfg.p)})
        curves.extend(points)
    fits = {method: _exponent(rows, method, "n_star") for method in cfg.dims}
    modes = _exponent(rows, "NTK regression", "n_star_over_modes")
    summary = {**{f"exponent {m}": v[0] for m, v in fits.items()},
               **{f"exponent_se {m}": v[1] for m, v in fits.items()},
               "exponent NTK regression n*/modes": modes[0], "exponent_se NTK regression n*/modes": modes[1]}
    folder.claims += [cfg.alg1_exponent.check(*fits["Algorithm 1"]), cfg.ntk_modes_exponent.check(*modes)]
    folder.write_csv("metrics.csv", rows)
    folder.write_csv("curves.csv", curves)
    folder.write_json("fits.json", summary)
    figure = _figure(folder, rows, curves, cfg, fits)
    folder.write_text("report.md", _report(cfg, rows, folder.claims, figure))
    return summary


def _exponent(rows: list[dict], method: str, key: str) -> tuple[float, float]:
    """The fitted exponent of `key` against d (± its standard error) over the dimensions where
    n* was measured; nan with fewer than three."""
    chosen = [r for r in rows if r["method"] == method and np.isfinite(r["n_star"])]
    if len(chosen) < 3:
        return float("nan"), float("nan")
    return power_law_slope([r["d"] for r in chosen], [r[key] for r in chosen])


def _report(cfg: Config, rows, claims, figure) -> str:
    """report.md: the claims with this run's exponents, the crossings, and how to read them."""
    kernel = [r["n_star_over_modes"] for r in rows if r["method"] == "NTK regression" and np.isfinite(r["n_star"])]
    spread = (f"n*/C(d+p, p) between {min(kernel):.3g} and {max(kernel):.3g} over these d" if kernel
              else "no crossing measured")
    return "\n".join([
        "# Sample complexity against the dimension (Damian, Lee & Soltanolkotabi 2022)", "",
        f"Target He_2(u.x)/2 + He_{cfg.p}(u.x)/sqrt(2 {cfg.p}!) in R^d (unit norm), label noise "
        f"+-{cfg.noise}; n* = samples at which the mean test loss over {cfg.seeds} seed(s) first falls "
        f"below {cfg.threshold} (grid n = max({cfg.n_start}, 2(d + 1)) x sqrt(2)^k, log-log interpolation, at most "
        f"{cfg.n_max}); Algorithm 1 with width m = {cfg.m}, NTK regression with the two-layer ReLU NTK; "
        "ridges by validation as in `sample-complexity`.", "",
        claims_table(claims), "",
        markdown_table(rows, list(rows[0])), "",
        "The exponents are fitted over the dimensions measured (standard errors from the fit; the "
        "crossing points themselves carry seed noise). The predictions and tolerances are the "
        "settings `alg1_exponent` and `ntk_modes_exponent` (fixed before the run); the verdict rule "
        "is in `ntklab.lab.claims`. The kernel lower bound n = Ω(d^p) is asymptotic: at finite d the "
        "kernel's count is the number of polynomial modes of degree <= p, C(d + p, p) (column "
        f"`modes`), about d^p/p! only for d >> p; here NTK regression crosses the threshold with "
        f"{spread}. n* is the first crossing of a fixed loss threshold, which mixes the He_2 and He_p "
        "parts of the target (the learned fraction of each degree is not measured here).", "",
        f"![n* against d]({figure})", ""])


def _figure(folder, rows, curves, cfg, fits) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, method in enumerate(cfg.dims):
        chosen = [r for r in rows if r["method"] == method]
        d = np.array([r["d"] for r in chosen], float)
        axes[0].loglog(d, [r["n_star"] for r in chosen], "o", color=f"C{i}",
                       label=f"{method}: exponent {fits[method][0]:.2f} ± {fits[method][1]:.2f}")
        for power, style in ((2, ":"), (cfg.p, "--")):
            axes[0].loglog(d, chosen[0]["n_star"] * (d / d[0]) ** power, color=f"C{i}", ls=style, lw=0.8)
        modes = np.array([math.comb(int(k) + cfg.p, cfg.p) for k in d], float)
        axes[0].loglog(d, chosen[0]["n_star"] * modes / modes[0], color=f"C{i}", ls="-.", lw=0.8)
        for j, dim in enumerate(cfg.dims[method]):
            points = [c for c in curves if c["method"] == method and c["d"] == dim]
            axes[1].loglog([c["n"] for c in points], [c["loss"] for c in points], marker="os"[i],
                           ls="-" if i == 0 else "--", color=plt.cm.viridis(j / max(1, len(cfg.dims[method]) - 1)),
                           label=f"{method}, d = {dim}")
    dims = sorted({d for values in cfg.dims.values() for d in values})
    axes[0].set_xticks(dims, [str(d) for d in dims], minor=False)
    axes[0].set_xticks([], minor=True)
    axes[0].set_xlabel("dimension d")
    axes[0].set_ylabel(f"n* (loss < {cfg.threshold})")
    axes[0].set_title(f"samples needed (dotted: d^2, dashed: d^{cfg.p},\ndash-dotted: C(d+{cfg.p}, {cfg.p}) modes)")
    axes[0].legend(fontsize=8)
    axes[1].axhline(cfg.threshold, color="k", lw=0.8)
    axes[1].set_xlabel("training samples n")
    axes[1].set_ylabel("test loss")
    axes[1].set_title(f"loss curves, {cfg.after_crossing} grid points past the crossing\n"
                      "(circles: Algorithm 1, squares: NTK)")
    axes[1].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return folder.save_figure("dimension_sweep", fig)
