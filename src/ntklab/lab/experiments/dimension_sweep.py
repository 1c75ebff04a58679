"""`ntklab run dimension-sweep` -- Damian, Lee & Soltanolkotabi (2022): the samples needed against
the input dimension d, kernels (n ~ d^p) against Algorithm 1 (n ~ d^2), measured degree by degree.

Inputs uniform on the sphere of radius sqrt(d); target (Y_2 + Y_p)/sqrt(2) with Y_k the unit-norm
zonal harmonic of degree k about a random direction (`studies.sphere`): each degree is one
eigenfunction of every dot-product kernel, so what a method learns is read off per degree as its
**learned fraction** <f, Y_k>/a_k (1: learned, 0: not), not from a loss threshold that mixes degrees.

* NTK regression (the two-layer ReLU NTK, fixed ridge) is measured at n = c N_{<=p}(d), the number
  of spherical harmonics of degree <= p, and predicted from the NTK's spectrum by eigenlearning
  (`ntklab.theory.spectral`: learned fraction L_k = lambda_k / (lambda_k + kappa)); the prediction,
  validated on the measured d, is extrapolated to d ~ 10^3, where n_1/2 (half of degree p learned)
  grows as d^p.
* Algorithm 1 (one gradient step, fresh biases, ridge head; `studies.representation`) at
  n = c d^2, up to d = 64; its n_1/2 against d is fitted as a power law.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter, ScalarFormatter
import numpy as np
import torch
from tqdm.auto import tqdm

from ...theory.spectral import SphereSpectrum, eigenlearning, half_learned_samples, harmonic_count, sphere_spectrum
from ..claims import Claim, mean_se, scale_factor
from ..fits import power_law_slope
from ..report import RunFolder, claims_table, markdown_table
from ..studies import representation as R
from ..studies import sphere as S
from . import register


@dataclass(frozen=True)
class Config:
    """Settings of this experiment (the defaults are the full run)."""

    p: int = 3
    noise: float = 0.1
    ridge: float = 1e-3                      # kernel ridge delta / k(x, x)
    kernel_dims: tuple[int, ...] = (8, 12, 16, 24)
    mode_factors: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0)   # n / N_{<=p}(d) for the kernel
    kernel_n_max: int = 8000
    alg1_dims: tuple[int, ...] = (8, 12, 16, 24, 32, 48, 64)
    d2_factors: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)      # n / d^2 for Algorithm 1
    alg1_n_max: int = 65_536
    m: int = 1000
    seeds: int = 4
    n_test: int = 4000
    max_degree: int = 10
    extrapolation_dims: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512, 1024)
    # (d, n) of NTK regression solved by conjugate gradients streaming a float32 kernel store (20 GB of disk
    # in the run folder's kernels/ at n = 10^5, removed after; ~1 h on one core), one seed each
    large_points: tuple[tuple[int, int], ...] | None = None
    large_centers: int = 4000                 # the CG preconditioner's Nystrom centers
    eigenlearning_factor: Claim = Claim(
        "NTK regression: learned fraction of degrees 2 and p = a × eigenlearning's L_k(n) from the NTK's "
        "spectrum, over every measured d and n (weighted least squares)", 1.0, 0.1,
        "Bordelon, Canatar & Pehlevan 2020; Simon, Dickens, Karkada & DeWeese 2021 (eigenlearning)")
    kernel_exponent: Claim = Claim(
        "NTK regression: local exponent of n½(d) (eigenlearning learns half of degree p = 3) between the "
        "two largest extrapolation dimensions", 3.0, 0.15,
        "Ghorbani, Mei, Misiakiewicz & Montanari 2021 (kernel ridge regression needs n ~ d^p for degree p)")
    large_eigenlearning_factor: Claim = Claim(
        "NTK regression at the large_points (conjugate gradients from a kernel store): learned fraction of degrees "
        "2 and p = a × eigenlearning's L_k(n)", 1.0, 0.1,
        "Bordelon, Canatar & Pehlevan 2020; Simon, Dickens, Karkada & DeWeese 2021 (eigenlearning)")
    alg1_exponent: Claim = Claim(
        "Algorithm 1: exponent e of n½ ∝ d^e, n½ = samples at which half of the degree-p part is learned", 2.0, 0.5,
        "Damian, Lee & Soltanolkotabi 2022, Theorem 1 (n = O(d^2 polylog d); the tolerance covers the "
        "polylog: d^2 log d has local exponent 2 + 1/ln d = 2.2-2.5 at d = 8-64)")

    @classmethod
    def quick(cls) -> "Config":
        """Small settings for tests and previews (seconds)."""
        return cls(kernel_dims=(6, 8), mode_factors=(0.25, 1.0, 4.0), alg1_dims=(6, 8, 12),
                   d2_factors=(1.0, 4.0, 16.0), m=400, seeds=2, n_test=1500, max_degree=8,
                   extrapolation_dims=(8, 64, 512, 1024))


def mode_count(d: int, p: int) -> int:
    """N_{<=p}(d): the number of spherical harmonics of degree <= p in R^d."""
    return sum(harmonic_count(d, k) for k in range(p + 1))


def _algorithm1(cfg: Config, x, y, seed: int):
    return R.algorithm1(x, y, m=cfg.m, seed=seed)


def _ntk(cfg: Config, x, y, seed: int):
    return S.kernel_ridge(R.ntk_architecture(), x, y, ridge=cfg.ridge)[0]


METHODS: dict[str, Callable] = {"Algorithm 1": _algorithm1, "NTK regression": _ntk}


def _ntk_from_store(folder: RunFolder) -> Callable:
    def solve(cfg: Config, x, y, seed: int):
        store = folder.stores({"large_point": [x.shape[1], len(x)], "seed": seed}) / "ntk.zarr"
        return S.kernel_ridge(R.ntk_architecture(), x, y, ridge=cfg.ridge, store=store, centers=cfg.large_centers)[0]
    return solve


LARGE = "NTK regression (CG from a store)"


def measure(cfg: Config, method: str, d: int, n: int, seed: int, *, solver: Callable | None = None,
            seeds: int | None = None) -> dict:
    """The learned fractions of degrees 2 and p and the test loss of one method at (d, n), mean
    over seeds with standard errors (between seeds; the Monte Carlo projection's with one seed).
    `solver` replaces the method's function (`METHODS`), `seeds` the number of seeds."""
    per_seed = []
    for s in range(cfg.seeds if seeds is None else seeds):
        target = S.single_index_target(d, (2, cfg.p), seed=seed + s)
        x, y = S.sample(target, n, noise=cfg.noise, seed=seed + s + 1000)
        predictor = (solver or METHODS[method])(cfg, x, y, seed + s + 2000)
        per_seed.append(S.learned_fractions(predictor, target, cfg.n_test, seed=seed + s + 3000))
    row: dict = {"method": method, "d": d, "n": n, "n_over_modes": n / mode_count(d, cfg.p), "n_over_d2": n / d ** 2}
    for k in (2, cfg.p):
        row[f"fraction_{k}"], row[f"fraction_{k}_se"] = _mean_se([f[k] for f, _ in per_seed])
    row["loss"], row["loss_se"] = _mean_se([loss for _, loss in per_seed])
    return row


def _mean_se(values: list[tuple[float, float]]) -> tuple[float, float]:
    mean, se = mean_se([v for v, _ in values])
    return mean, se if np.isfinite(se) else values[0][1]


def half_crossing(rows: list[dict], key: str) -> float:
    """n at which `key` first reaches 1/2 along increasing n (linear in log n between the grid
    points around it); nan if it never does, the first n if it starts above."""
    before = None
    for row in sorted(rows, key=lambda r: r["n"]):
        if row[key] >= 0.5:
            if before is None:
                return float(row["n"])
            fraction = (0.5 - before[key]) / (row[key] - before[key])
            return float(math.exp(math.log(before["n"]) + fraction * math.log(row["n"] / before["n"])))
        before = row
    return float("nan")


def _grid(d: int, factors, unit: float, n_max: int) -> list[int]:
    """n = round(c unit) for each factor, at least 2 (d + 2) (Algorithm 1's validation split and
    preprocessing), at most n_max."""
    return sorted({max(2 * (d + 2), round(c * unit)) for c in factors if c * unit <= n_max})


@register("dimension-sweep", "Damian-Lee-Soltanolkotabi: samples needed against d, degree by degree: NTK "
          "regression (d^p, eigenlearning) vs Algorithm 1 (d^2)", config=Config)
def run(folder: RunFolder, cfg: Config, *, seed: int, device: torch.device) -> dict:
    """The learned fractions per method, d and n, the spectral prediction and its extrapolation,
    n½ per d, the fitted exponents, the report."""
    net = R.ntk_architecture()
    spectra = {d: sphere_spectrum(net, d, max_degree=cfg.max_degree)
               for d in sorted({*cfg.kernel_dims, *cfg.extrapolation_dims, *(d for d, _ in cfg.large_points or ())})}
    jobs = [("NTK regression", d, n) for d in cfg.kernel_dims
            for n in _grid(d, cfg.mode_factors, mode_count(d, cfg.p), cfg.kernel_n_max)]
    jobs += [("Algorithm 1", d, n) for d in cfg.alg1_dims for n in _grid(d, cfg.d2_factors, d ** 2, cfg.alg1_n_max)]
    rows = []
    for method, d, n in tqdm(jobs, desc="dimension sweep", unit="point"):
        row = measure(cfg, method, d, n, seed * 10_000 + d * 100)
        if method == "NTK regression":
            prediction = _predict(spectra[d], cfg, n)
            row.update({f"predicted_{k}": float(prediction.learnability[k]) for k in (2, cfg.p)},
                       predicted_loss=prediction.generalization_error)
        rows.append(row)
    for d, n in tqdm(cfg.large_points or (), desc="dimension sweep, large n", unit="point",
                     disable=not cfg.large_points):
        row = measure(cfg, LARGE, d, n, seed * 10_000 + d * 100, solver=_ntk_from_store(folder), seeds=1)
        prediction = _predict(spectra[d], cfg, n)
        row.update({f"predicted_{k}": float(prediction.learnability[k]) for k in (2, cfg.p)},
                   predicted_loss=prediction.generalization_error)
        rows.append(row)
    kernel_rows = [r for r in rows if r["method"] == "NTK regression"]
    factor = scale_factor([r[f"fraction_{k}"] for r in kernel_rows for k in (2, cfg.p)],
                          [r[f"fraction_{k}_se"] for r in kernel_rows for k in (2, cfg.p)],
                          [r[f"predicted_{k}"] for r in kernel_rows for k in (2, cfg.p)])
    extrapolation = [{"d": d, "modes": mode_count(d, cfg.p),
                      "n_half_predicted": half_learned_samples(spectra[d], cfg.p, ridge=_delta(spectra[d], cfg))}
                     for d in cfg.extrapolation_dims]
    (d1, n1), (d2, n2) = [(float(e["d"]), float(e["n_half_predicted"])) for e in extrapolation[-2:]]
    local_exponent = math.log(n2 / n1) / math.log(d2 / d1)
    halves: list[dict] = [{"method": method, "d": d, "n_half": half_crossing(
        [r for r in rows if r["method"] == method and r["d"] == d], f"fraction_{cfg.p}")}
        for method, dims in (("NTK regression", cfg.kernel_dims), ("Algorithm 1", cfg.alg1_dims)) for d in dims]
    alg1 = [h for h in halves if h["method"] == "Algorithm 1" and np.isfinite(h["n_half"])]
    alg1_fit = (power_law_slope([h["d"] for h in alg1], [h["n_half"] for h in alg1]) if len(alg1) >= 3
                else (float("nan"), float("nan")))
    folder.claims += [cfg.eigenlearning_factor.check(*factor), cfg.kernel_exponent.check(local_exponent, 0.0),
                      cfg.alg1_exponent.check(*alg1_fit)]
    large_rows = [r for r in rows if r["method"] == LARGE]
    if large_rows:
        large_factor = scale_factor([r[f"fraction_{k}"] for r in large_rows for k in (2, cfg.p)],
                                    [r[f"fraction_{k}_se"] for r in large_rows for k in (2, cfg.p)],
                                    [r[f"predicted_{k}"] for r in large_rows for k in (2, cfg.p)])
        folder.claims.append(cfg.large_eigenlearning_factor.check(*large_factor))
    summary = {"eigenlearning_factor": factor[0], "eigenlearning_factor_se": factor[1],
               "kernel_local_exponent": local_exponent, "alg1_exponent": alg1_fit[0], "alg1_exponent_se": alg1_fit[1]}
    folder.write_csv("metrics.csv", rows)
    folder.write_csv("n_half.csv", halves)
    folder.write_csv("extrapolation.csv", extrapolation)
    folder.write_json("fits.json", summary)
    figure = _figure(folder, cfg, rows, spectra, extrapolation, halves)
    folder.write_text("report.md", _report(cfg, rows, halves, extrapolation, folder.claims, figure))
    return summary


def _delta(spectrum: SphereSpectrum, cfg: Config) -> float:
    """The kernel ridge delta = ridge * k(x, x) (`studies.sphere.kernel_ridge`)."""
    return cfg.ridge * spectrum.trace


def _predict(spectrum: SphereSpectrum, cfg: Config, n: int):
    return eigenlearning(spectrum, n, ridge=_delta(spectrum, cfg), target_energy={2: 0.5, cfg.p: 0.5},
                         noise=cfg.noise)


def _report(cfg: Config, rows, halves, extrapolation, claims, figure) -> str:
    """report.md: the claims, the measured and predicted fractions, n½ and how to read them."""
    columns = ["method", "d", "n", "n_over_modes", "n_over_d2", "fraction_2", "fraction_2_se", f"fraction_{cfg.p}",
               f"fraction_{cfg.p}_se", "predicted_2", f"predicted_{cfg.p}", "loss", "loss_se", "predicted_loss"]
    return "\n".join([
        "# Samples needed against the dimension, degree by degree (Damian, Lee & Soltanolkotabi 2022)", "",
        f"Inputs uniform on the sphere of radius sqrt(d); target (Y_2 + Y_{cfg.p})/sqrt(2), unit-norm zonal "
        f"harmonics about a random direction, label noise ±{cfg.noise}; {cfg.seeds} seed(s) per point, learned "
        f"fractions <f, Y_k>/a_k on {cfg.n_test} test points. NTK regression: the two-layer ReLU NTK, ridge "
        f"{cfg.ridge} × k(x, x), at n = c · N_<=p(d) (the number of spherical harmonics of degree <= {cfg.p}); its "
        f"prediction is eigenlearning on the NTK's eigenvalues (degrees 0..{cfg.max_degree}, the rest as a ridge). "
        f"Algorithm 1: width {cfg.m}, ridge head by validation, at n = c · d^2."
        + (f" Large points {list(cfg.large_points)} (d, n), one seed each: the NTK computed into a float32 kernel "
           f"store and the ridge system solved by conjugate gradients streaming it (relative residual 1e-6, "
           f"Nystrom preconditioner on {cfg.large_centers} centers), the n x n matrix never in memory."
           if cfg.large_points else ""), "",
        claims_table(claims), "",
        "## n½: samples at which half of the degree-p part is learned", "",
        markdown_table(halves, ["method", "d", "n_half"]), "",
        "Eigenlearning's n½ for NTK regression, extrapolated (N_<=p = modes):", "",
        markdown_table(extrapolation, ["d", "n_half_predicted", "modes"]), "",
        "## Every point", "",
        markdown_table(rows, [c for c in columns if c in rows[0] or c.startswith("predicted")]), "",
        "Reading: a kernel learns a degree once n passes the number of harmonics up to that degree "
        "(N(d, k) ~ d^k/k!); eigenlearning turns the NTK's spectrum into the learned fraction at every n, and "
        "the measured points test it. Algorithm 1's first step finds the direction u from the degree-2 part, "
        f"after which the degree-{cfg.p} part is a one-dimensional problem: its n½ grows like d^2, not d^{cfg.p} "
        "(Theorem 1's d^2 polylog d is a sufficient rate, an upper bound: an exponent below 2 at these d is "
        "within it; finding u at all needs n of order d). "
        "The predictions and tolerances are the settings `eigenlearning_factor`, `kernel_exponent`, `alg1_exponent` "
        "(fixed before the run); the verdict rule is in `ntklab.lab.claims`.", "",
        f"![learned fractions and n½ against d]({figure})", ""])


def _figure(folder, cfg: Config, rows, spectra, extrapolation, halves) -> str:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    colors = {d: plt.cm.viridis(i / max(1, len(cfg.kernel_dims) - 1)) for i, d in enumerate(cfg.kernel_dims)}
    for d in cfg.kernel_dims:
        points = [r for r in rows if r["method"] == "NTK regression" and r["d"] == d]
        unit = mode_count(d, cfg.p)
        grid = np.geomspace(min(r["n"] for r in points), max(r["n"] for r in points), 40)
        for k, marker, style in ((2, "s", ":"), (cfg.p, "o", "-")):
            axes[0].errorbar([r["n_over_modes"] for r in points], [r[f"fraction_{k}"] for r in points],
                             [2 * r[f"fraction_{k}_se"] for r in points], fmt=marker, color=colors[d], ms=4,
                             label=f"d = {d}" if k == cfg.p else None)
            axes[0].plot(grid / unit, [_predict(spectra[d], cfg, int(n)).learnability[k] for n in grid],
                         style, color=colors[d], lw=1)
    for r in (r for r in rows if r["method"] == LARGE):
        for k, marker in ((2, "s"), (cfg.p, "o")):
            axes[0].errorbar([r["n_over_modes"]], [r[f"fraction_{k}"]], [2 * r[f"fraction_{k}_se"]], fmt=marker,
                             mfc="none", color="k", ms=7,
                             label=f"d = {r['d']}, CG from a store (x: eigenlearning)" if k == cfg.p else None)
            axes[0].plot([r["n_over_modes"]], [r[f"predicted_{k}"]], "x", color="k", ms=7)
    axes[0].set_xscale("log")
    axes[0].set_xlabel(f"n / N≤{cfg.p}(d)  (harmonics of degree ≤ {cfg.p})")
    axes[0].set_ylabel("learned fraction")
    axes[0].set_title(f"NTK regression (squares: degree 2, circles: degree {cfg.p};\nlines: eigenlearning)")
    axes[0].legend(fontsize=8)
    shades = {d: plt.cm.plasma(i / max(1, len(cfg.alg1_dims) - 1)) for i, d in enumerate(cfg.alg1_dims)}
    for d in cfg.alg1_dims:
        points = [r for r in rows if r["method"] == "Algorithm 1" and r["d"] == d]
        axes[1].errorbar([r["n_over_d2"] for r in points], [r[f"fraction_{cfg.p}"] for r in points],
                         [2 * r[f"fraction_{cfg.p}_se"] for r in points], fmt="o-", color=shades[d], ms=4,
                         label=f"d = {d}")
    axes[1].axhline(0.5, color="k", lw=0.6)
    axes[1].set_xscale("log")
    axes[1].set_xlabel("n / d²")
    axes[1].set_ylabel(f"learned fraction of degree {cfg.p}")
    axes[1].set_title("Algorithm 1 (error bars: 2 s.e.)")
    axes[1].legend(fontsize=7, ncol=2)
    dims = np.array([e["d"] for e in extrapolation], float)
    axes[2].loglog(dims, [e["n_half_predicted"] for e in extrapolation], "-", color="C0",
                   label="NTK, eigenlearning")
    for method, marker, color in (("NTK regression", "s", "C0"), ("Algorithm 1", "o", "C1")):
        measured = [h for h in halves if h["method"] == method and np.isfinite(h["n_half"])]
        axes[2].loglog([h["d"] for h in measured], [h["n_half"] for h in measured], marker, color=color,
                       label=f"{method}, measured")
    first_alg1 = next((h for h in halves if h["method"] == "Algorithm 1" and np.isfinite(h["n_half"])), None)
    kernel_anchor = (dims[0], extrapolation[0]["n_half_predicted"])
    guides = {cfg.p: kernel_anchor, 2: (first_alg1["d"], first_alg1["n_half"]) if first_alg1 else kernel_anchor}
    for power, style in ((2, ":"), (cfg.p, "--")):
        anchor_d, anchor_n = guides[power]
        axes[2].loglog(dims, anchor_n * (dims / anchor_d) ** power, color="gray", ls=style, lw=0.8,
                       label=f"∝ d^{power}")
    axes[2].set_xlabel("dimension d")
    axes[2].set_ylabel(f"n½ (half of degree {cfg.p} learned)")
    axes[2].set_title("samples needed")
    axes[2].legend(fontsize=8)
    for ax in axes[:2]:
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.xaxis.set_major_formatter(ScalarFormatter())
    fig.tight_layout()
    return folder.save_figure("dimension_sweep", fig)
