"""`ntklab run linearization` -- a wide network trains like its linearization, which trains
like kernel regression with its empirical NTK (Lee et al. 2019; Jacot et al. 2018).

One-hidden-layer ReLU MLPs of several widths n (on flattened 8x8 digits) and small CNNs of
several channel counts n (8-64; two 3x3 SAME convolutions + ReLU, global average pooling, on the 1x8x8
images), NTK parameterization, 10 classes, trained by full-batch gradient descent with the mean
squared loss and with cross-entropy, at the learning rate |Y| / lambda_max(Theta_0) (function-space step
1/lambda_max).  Along training it compares, on the test set:
  * the network f_t with its linearization f_lin,t (`nk.linearize`, trained alongside),
  * f_lin,t with the function-space prediction from the empirical NTK at initialization
    (`predict.gradient_descent_mse` in closed form / `predict.gradient_descent`, an ODE, on the
    full [N O x N O] kernel) at the same time t = step;
and fits the distances against width at the last step (theory: ||f - f_lin|| ~ n^-1/2; the
kernel prediction differs from discrete GD by the time discretization, independent of n).
"""
from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import digits_images
from ..claims import Claim
from ..fits import power_law, power_law_slope
from ..report import RunFolder, claims_table, markdown_table
from ..studies import linearization as S
from . import register

QUANTITIES = ("network_vs_linearized", "linearized_vs_kernel", "network_vs_kernel")


@dataclass(frozen=True)
class Config:
    """Settings of this experiment (the defaults are the full run)."""

    widths: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048, 4096)
    channels: tuple[int, ...] = (8, 16, 32, 64)
    n_train: int = 128
    n_test: int = 200
    steps: int = 400
    record: int = 12
    network_vs_linearized: Claim = Claim(
        "network vs its linearization at the last step: exponent of n", -0.5, 0.25,
        "Lee et al. 2019, Theorem 2.1 (an O(n^-1/2) bound; the tolerance admits ReLU's kink law, "
        "between n^-1/2 and n^-3/4, see lazy-training)")
    linearized_vs_kernel: Claim = Claim(
        "linearization vs the empirical-NTK flow at the last step: exponent of n", 0.0, 0.25,
        "discrete vs continuous time only, which does not depend on n (Lee et al. 2019)")

    @classmethod
    def quick(cls) -> "Config":
        """Small settings for tests and previews (seconds)."""
        return cls(widths=(64, 256, 1024), channels=(8, 32), n_train=48, n_test=64, steps=60, record=6)


@register("linearization", "Lee et al. 2019: networks vs their linearization vs the NTK prediction, "
                           "MSE and cross-entropy, against width", config=Config)
def run(folder: RunFolder, cfg: Config, *, seed: int, device: torch.device) -> dict:
    """Every (network, loss, width) run of `studies.linearization`, the slopes at the last step."""
    task = digits_images(cfg.n_train, cfg.n_test, seed=seed)
    cases = [(network, loss) for network in S.NETWORKS for loss in S.LOSSES]
    jobs = [(network, loss, width) for network, loss in cases
            for width in (cfg.widths if network == "mlp" else cfg.channels)]
    rows = []
    for network, loss_name, width in tqdm(jobs, desc="linearization", unit="net"):
        rows += S.distances(task, network, width, loss_name, steps=cfg.steps, record=cfg.record, seed=seed)
    last = [r for r in rows if r["step"] == cfg.steps]
    fits = {}
    for network, loss_name in cases:
        chosen = [r for r in last if r["loss"] == loss_name and r["network"] == network]
        widths = np.array([r["width"] for r in chosen], dtype=float)
        fits[f"{network} {loss_name}"] = {q: _slope(widths, np.array([r[q] for r in chosen])) for q in QUANTITIES}
    figures = {case: _figure(folder, [r for r in rows if f"{r['network']} {r['loss']}" == case], case,
                             fits[case]) for case in fits}
    folder.write_csv("metrics.csv", rows)
    folder.claims += [getattr(cfg, q).check(*fit[q], label=case) for case, fit in fits.items()
                      for q in ("network_vs_linearized", "linearized_vs_kernel")]
    folder.write_text("report.md", _report(cfg, last, fits, figures, folder.claims))
    return {"slopes": {case: {q: v[0] for q, v in fit.items()} for case, fit in fits.items()},
            "slope_se": {case: {q: v[1] for q, v in fit.items()} for case, fit in fits.items()}}


def _slope(widths: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """The log-log slope against width with its standard error (nan with two widths)."""
    if len(widths) >= 3:
        return power_law_slope(widths, values)
    return power_law(widths, values)[0], float("nan")


def _figure(folder: RunFolder, chosen: list[dict], case: str, fits: dict) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    widths = sorted({r["width"] for r in chosen})
    for i, width in enumerate(widths):
        mine = [r for r in chosen if r["width"] == width and r["step"] > 0]
        axes[0].loglog([r["step"] for r in mine], [r["network_vs_linearized"] for r in mine], "o-",
                       color=f"C{i}", label=f"n = {width}")
    last = [r for r in chosen if r["step"] == max(x["step"] for x in chosen)]
    for quantity, marker in (("network_vs_linearized", "o-"), ("linearized_vs_kernel", "s--"),
                             ("network_vs_kernel", "x:")):
        axes[1].loglog([r["width"] for r in last], [r[quantity] for r in last], marker,
                       label=f"{quantity} (slope {fits[quantity][0]:+.2f})")
    axes[0].set_xlabel("GD step")
    axes[0].set_ylabel("||f - f_lin|| / ||f_lin|| (test)")
    axes[1].minorticks_off()
    axes[1].set_xticks(widths, [str(w) for w in widths])
    axes[1].set_xlabel("width n (MLP units, CNN channels)")
    axes[1].set_ylabel("relative distance at the last step")
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(f"{case}: network, linearization and empirical-NTK prediction")
    return folder.save_figure(f"distances_{case.replace(' ', '_')}", fig)


def _report(cfg: Config, last: list[dict], fits: dict, figures: dict[str, str], claims: list[dict]) -> str:
    """report.md: the claims, the distances at the last step against width, and the fitted slopes."""
    slopes = [{"network, loss": case, **{q: f"{v[0]:+.2f} ± {v[1]:.2f}" for q, v in fit.items()}}
              for case, fit in fits.items()]
    return "\n".join([
        "# Networks vs their linearization vs the empirical-NTK prediction (Lee et al. 2019)", "",
        claims_table(claims), "",
        f"One-hidden-layer ReLU MLPs of widths {cfg.widths} and CNNs (two 3x3 SAME convolutions, "
        f"ReLU, global average pooling) of {cfg.channels} channels (NTK parameterization, W_std = "
        f"sqrt 2, b_std = 0.1) on 10-class digits ({cfg.n_train} train / {cfg.n_test} test, one-hot "
        f"targets), full-batch GD for "
        f"{cfg.steps} steps at learning rate |Y| / lambda_max(Theta_0); relative distances of test "
        "outputs. The kernel prediction is continuous-time gradient flow with the full empirical NTK "
        "at initialization (closed form for MSE, an ODE for cross-entropy) at t = step.", "",
        "## Fitted log-log slopes against width (last step)",
        "Theory: network vs linearization ~ n^-1/2 (Lee et al. 2019, Theorem 2.1); the "
        "linearization vs the kernel flow differ only by discrete vs continuous time, which does "
        "not depend on n (slope ~ 0).", "",
        markdown_table(slopes, list(slopes[0])), "",
        "## Last step", "", markdown_table(last, list(last[0])), "",
        *[f"![{case}]({path})" for case, path in figures.items()], ""])
