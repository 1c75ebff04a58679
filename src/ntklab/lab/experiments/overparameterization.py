"""`ntklab run overparameterization` -- lecture 20: over-parameterized networks interpolate, GD
from the symmetric initialization picks (as the width grows) the minimum-RKHS-norm interpolant of
the NTK, and the test error of least squares on m random features shows double descent around
the interpolation threshold m = N, falling towards the ridgeless kernel limit
(`studies.overparameterization`)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from tqdm.auto import tqdm

import ntklab as nk
from ..data import regression_sphere
from ..claims import Claim
from ..fits import power_law_slope
from ..report import RunFolder, claims_table, markdown_table, power_guides
from ..studies import overparameterization as O
from . import register


@dataclass(frozen=True)
class Config:
    """Settings of this experiment (the defaults are the full run)."""

    d: int = 5
    n_train: int = 60
    n_test: int = 500
    noise: float = 0.3
    features: tuple[int, ...] = (10, 20, 30, 40, 50, 55, 58, 60, 62, 65, 70, 80, 100, 150, 240, 500, 1000, 4000)
    feature_seeds: int = 20
    implicit_train: int = 30
    widths: tuple[int, ...] = (64, 256, 1024, 4096)
    width_seeds: int = 3
    bootstrap: int = 1000   # resamples of the feature draws for the standard errors of the double-descent claims
    peak_location: Claim = Claim(
        "double descent: the median test MSE peaks at m/N (features over samples)", 1.0, 0.1,
        "lecture 20 (Belkin et al. 2019: the interpolation threshold m = N)")
    kernel_limit: Claim = Claim(
        "beyond the threshold the error falls to the ridgeless kernel limit: median MSE at the largest m "
        "over the kernel's", 1.0, 0.15, "lecture 20 (m → ∞ random features = kernel regression)")
    implicit_bias: Claim = Claim(
        "GD from f₀ = 0 approaches the min-RKHS-norm NTK interpolant: exponent of n of the distance", -0.5, 0.25,
        "lecture 20 (Jacot et al. 2018; Lee et al. 2019: the trained network is the NTK's interpolant "
        "up to O(n^-1/2))")

    @classmethod
    def quick(cls) -> "Config":
        """Small settings for tests and previews (seconds)."""
        return cls(n_test=200, features=(20, 50, 60, 70, 200, 1000), feature_seeds=5,
                   widths=(64, 256, 1024), width_seeds=1)


@register("overparameterization", "Lecture 20: GD interpolants approach the minimum-RKHS-norm NTK "
          "interpolant as width grows; double descent of random-features regression", config=Config)
def run(folder: RunFolder, cfg: Config, *, seed: int, device: torch.device) -> dict:
    """The double-descent curve, the ridgeless kernel limit and the implicit-bias distances."""
    task = regression_sphere(cfg.n_train, cfg.d, seed=seed, n_test=cfg.n_test)
    g = torch.Generator().manual_seed(seed + 1)
    noise = torch.randn(cfg.n_train, generator=g, dtype=task.y_train.dtype)
    y_train = (task.y_train + cfg.noise * noise)[:, None]
    curve = [_double_descent_point(task, y_train, m, cfg.feature_seeds, seed)
             for m in tqdm(cfg.features, desc="double descent", unit="m")]
    kernel_error = _test_mse(O.ridgeless_kernel_prediction(task.x_train, y_train, task.x_test), task)
    bias = _implicit_bias(cfg, seed)
    slope = (power_law_slope([r["width"] for r in bias], [r["distance"] for r in bias])
             if len(bias) >= 3 else (float("nan"), float("nan")))
    peak = max(curve, key=lambda r: r["median"])
    peak_ratio, kernel_ratio = _bootstrap(cfg, curve, kernel_error, seed)
    summary = {"peak_features": peak["features"], "peak_median_mse": peak["median"],
               "peak_over_n_train": peak_ratio, "largest_m_over_kernel": kernel_ratio,
               "largest_m_median_mse": curve[-1]["median"], "ridgeless_kernel_mse": kernel_error,
               "noise_variance": cfg.noise ** 2, "implicit_bias_slope": slope[0],
               "implicit_bias_slope_se": slope[1]}
    folder.claims += [cfg.peak_location.check(*peak_ratio), cfg.kernel_limit.check(*kernel_ratio),
                      cfg.implicit_bias.check(*slope)]
    curve = [{k: v for k, v in r.items() if k != "errors"} for r in curve]
    folder.write_csv("metrics.csv", curve)   # the double-descent curve
    folder.write_csv("implicit_bias.csv", bias)
    folder.write_json("fits.json", summary)
    figure = _figure(folder, curve, kernel_error, bias, cfg)
    folder.write_text("report.md", _report(cfg, curve, bias, summary, figure, folder.claims))
    return summary


def _bootstrap(cfg: Config, curve: list[dict], kernel_error: float, seed: int
               ) -> tuple[tuple[float, float], tuple[float, float]]:
    """(peak m / N, median MSE at the largest m / the kernel's MSE), each with its bootstrap
    standard error: the feature draws of every m resampled `cfg.bootstrap` times."""
    rng = np.random.default_rng(seed)
    errors = [np.asarray(r["errors"]) for r in curve]
    peaks, ratios = [], []
    for _ in range(cfg.bootstrap):
        medians = [np.median(e[rng.integers(0, len(e), len(e))]) for e in errors]
        peaks.append(curve[int(np.argmax(medians))]["features"] / cfg.n_train)
        ratios.append(medians[-1] / kernel_error)
    peak = max(curve, key=lambda r: r["median"])["features"] / cfg.n_train
    return (peak, float(np.std(peaks, ddof=1))), (curve[-1]["median"] / kernel_error, float(np.std(ratios, ddof=1)))


def _test_mse(prediction: torch.Tensor, task) -> float:
    """Mean squared error of [N_test, 1] predictions against the noiseless test targets."""
    return float((prediction[:, 0] - task.y_test).square().mean())


def _double_descent_point(task, y_train: torch.Tensor, m: int, seeds: int, seed: int) -> dict:
    """Test MSE of least squares on m random features over `seeds` draws: median, quartiles, mean."""
    errors = [_test_mse(O.random_features_regression(task.x_train, y_train, task.x_test, m,
                                                     seed=1000 * seed + s), task) for s in range(seeds)]
    return {"features": m, "median": float(np.median(errors)), "q25": float(np.quantile(errors, 0.25)),
            "q75": float(np.quantile(errors, 0.75)), "mean": float(np.mean(errors)), "errors": errors}


def _implicit_bias(cfg: Config, seed: int) -> list[dict]:
    """The distance of GD-trained networks to the minimum-RKHS-norm NTK interpolant per width."""
    small = regression_sphere(cfg.implicit_train, cfg.d, seed=seed, n_test=200)
    rows = []
    for width in tqdm(cfg.widths, desc="implicit bias", unit="width"):
        for s in range(cfg.width_seeds):
            result = O.implicit_bias_distance(nk.mlp(1, width, W_std=math.sqrt(2), b_std=0.5),
                                              small.x_train, small.y_train, small.x_test, seed=s)
            rows.append({"width": width, "seed": s, **result})
    return rows


def _report(cfg: Config, curve: list[dict], bias: list[dict], summary: dict, figure: str, claims: list[dict]) -> str:
    return "\n".join([
        "# Over-parameterization: implicit bias and double descent (lecture 20)", "",
        claims_table(claims), "",
        "## Double descent", "",
        f"Least squares on m random ReLU features relu(sqrt(2) w·x/sqrt(d) + 0.5 b)/sqrt(m) "
        f"(minimum-norm solution for m >= N), N = {cfg.n_train} noisy samples (noise std {cfg.noise}) of "
        f"y = sin(x1) + x2 x3 / 2 on the sphere in R^{cfg.d}; test MSE against the noiseless target on "
        f"{cfg.n_test} points, median and quartiles over {cfg.feature_seeds} draws of the features. "
        f"The ridgeless kernel limit (the features' NNGP, m → ∞): {summary['ridgeless_kernel_mse']:.3g}.", "",
        markdown_table(curve,
                       ["features", "median", "q25", "q75", "mean"]), "",
        "## Implicit bias", "",
        f"One-hidden-layer ReLU networks (NTK parameterization, W_std sqrt 2, b_std 0.5) from the symmetric "
        f"initialization, full-batch GD with eta = 1/lambda_max of the empirical NTK to max |f - y| < 1e-6 "
        f"max |y| on {cfg.implicit_train} noiseless samples; relative L2 distance of the test predictions "
        f"to Θ(x, X) Θ(X, X)^-1 y, the minimum-RKHS-norm interpolant of the infinite-width NTK.", "",
        markdown_table(bias,
                       ["width", "seed", "distance", "steps", "train_residual"]), "",
        f"![double descent and implicit bias]({figure})", ""])


def _figure(folder: RunFolder, curve, kernel_error, bias, cfg) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    m = [r["features"] for r in curve]
    axes[0].plot(m, [r["median"] for r in curve], "o-", label="random features (median)")
    axes[0].fill_between(m, [r["q25"] for r in curve], [r["q75"] for r in curve], alpha=0.3,
                         label="quartiles")
    axes[0].axhline(kernel_error, color="k", ls="--", label="ridgeless kernel (m = ∞)")
    axes[0].axvline(cfg.n_train, color="C3", lw=0.8, label=f"m = N = {cfg.n_train}")
    axes[0].set(xscale="log", yscale="log", xlabel="number of features m", ylabel="test MSE",
                title="double descent")
    axes[0].legend(fontsize=8)
    widths = np.array([r["width"] for r in bias], float)
    axes[1].loglog(widths, [r["distance"] for r in bias], "o", label="trained network")
    power_guides(axes[1], np.geomspace(widths.min(), widths.max(), 10),
                 np.mean([r["distance"] for r in bias if r["width"] == widths.min()]), (-0.5,), label="n")
    axes[1].set(xlabel="width n", ylabel="‖f_GD - f_min-norm NTK‖ / ‖f_min-norm NTK‖",
                title="GD picks the minimum-RKHS-norm interpolant")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return folder.save_figure("overparameterization", fig)
