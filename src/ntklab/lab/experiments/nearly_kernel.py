"""`ntklab run nearly-kernel` -- Roberts, Yaida & Hanin ch. 11: a quadratic model against its
kernel prediction (error O(eps)) and its nearly-kernel predictions (error O(eps^2)), each against
the solution it describes, on a log grid of eps:
  * GD with step eta = 1/lambda_max(k~) from W = 0, trained to convergence -> the GD projectors;
  * gradient flow (GD as eta -> 0, integrated by LSODA)                     -> the ODE projectors;
  * direct optimization, dL/dW = 0 solved exactly with W* in the span of the training features
    (the linear model's solution, Newton's limit from W = 0)              -> Z_A = 0, Z_B = vv/2;
  * the interpolant with W* in the span of phi# = (phi + phi^E(W*))/2      -> the slides'
    compressed trained-kernel prediction k#_bA (k#_AA)^-1 y.
Direct optimization does not fix W* when F > N (every interpolant is stationary); the last two
are different interpolants, and their predictions differ at O(eps) (measured).

Optimal feature learning: the test loss L(eps) = 1/2 sum (z(eps) - y)^2 with
z = z^F + eps z^I + eps^2 z^II + O(eps^3) is stationary to first order at
    eps* = - sum (z^F - y) z^I / sum [(z^I)^2 + 2 (z^F - y) z^II]
(the slides print the z^II term without the 2; both are reported). It is checked on a task where
the optimum is known and inside the verified range: test labels from the GD-trained model at
eps_teacher; z^I from the GD formula, z^II from trained models at +-h (central difference).

Real networks (ch. 11 and ∞): tanh MLPs with 1 and 2 hidden layers trained by gradient flow,
against predictions from their own NTK, dNTK and ddNTK at initialization
(`nk.ntk_hierarchy`): the frozen kernel (error O(1/n)), the first-order nearly-kernel
prediction (error O(1/n²)), and the two ablations that keep only the dNTK or only the ddNTK.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from tqdm.auto import tqdm

import ntklab as nk
from ..._core.validation import resolve_device
from ..fits import power_law_slope
from ..spectrum import inverse_largest_eigenvalue
from ..claims import Claim
from ..report import RunFolder, claims_table, markdown_table, power_guides
from ...theory.hierarchy import nearly_kernel_flow, ntk_hierarchy, train_gradient_flow
from ..studies import quadratic as Q
from . import register


@dataclass(frozen=True)
class Config:
    """Settings of this experiment (the defaults are the full run)."""

    d: int = 3
    features: int = 30
    n_train: int = 6
    n_test: int = 100
    steps: int = 6000
    eps_log: tuple[float, ...] = (0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128)
    eps_teacher: float = 0.05
    difference_step: float = 0.01
    eps_search: int = 25
    seed_model: int = 2
    networks: tuple[tuple[int, tuple[int, ...]], ...] = (   # (depth, widths)
        (1, (256, 1024, 4096, 16384)), (2, (256, 512, 1024)))
    network_seeds: int = 4
    network_train: int = 4
    network_test: int = 20
    network_time: float = 10.0            # training time in units of 1/lambda_min of the NTK
    eps_first_order: Claim = Claim("error of an O(eps)-accurate prediction: exponent of eps", 1.0, 0.1,
                                   "Roberts, Yaida & Hanin 2022, ch. 11 (the kernel prediction misses O(eps))")
    eps_second_order: Claim = Claim("error of an O(eps^2)-accurate prediction: exponent of eps", 2.0, 0.1,
                                    "Roberts, Yaida & Hanin 2022, ch. 11 (nearly-kernel predictions)")
    network_kernel: Claim = Claim("frozen-kernel prediction's error on trained MLPs: exponent of n", -1.0, 0.2,
                                  "Roberts, Yaida & Hanin 2022, ch. ∞ (the NTK moves at O(1/n))")
    network_first_order: Claim = Claim("first-order (1/n) prediction's error: exponent of n", -2.0, 0.2,
                                       "Roberts, Yaida & Hanin 2022, ch. ∞ (what is left is O(1/n^2))")
    network_ablation: Claim = Claim("one of dNTK / ddNTK kept (ablation): exponent of n of the error", -1.0, 0.2,
                                    "Roberts, Yaida & Hanin 2022, ch. 11 (the other O(1/n) term is missing)")
    network_hierarchy_rms: Claim = Claim("rms of the dNTK / ddNTK at initialization: exponent of n", -1.0, 0.2,
                                         "Roberts, Yaida & Hanin 2022, ch. 11 (both are O(1/n))")

    @classmethod
    def quick(cls) -> "Config":
        """Small settings for tests and previews (seconds)."""
        return cls(n_test=40, steps=3000, eps_log=(0.01, 0.02, 0.04), eps_teacher=0.03, eps_search=5,
                   networks=((1, (64, 128, 256)), (2, (32, 64, 128))), network_seeds=2)


# (column, solution, prediction, expected slope) of the error table; the claim of each expected
# slope is the Config field EPS_CLAIMS[expected]
COMPARISONS = (
    ("kernel_error", "GD", "kernel", 1),
    ("nearly_kernel_error", "GD", "nearly-kernel, GD projectors", 2),
    ("ode_error", "gradient flow", "nearly-kernel, ODE projectors", 2),
    ("direct_error", "direct (span of phi)", "nearly-kernel, direct projectors", 2),
    ("compressed_error", "interpolant in the span of phi#", "k#_bA (k#_AA)^-1 y", 2),
    ("gd_minus_direct", "GD", "nearly-kernel, direct projectors", 1),
    ("compressed_minus_direct", "direct (span of phi)", "k#_bA (k#_AA)^-1 y", 1),
)


# trained networks: column -> (label, 1/n terms of the prediction, theory slope against n)
NETWORK_QUANTITIES = {
    "kernel_error": ("kernel prediction (NTK frozen)", (), -1),
    "first_order_error": ("nearly-kernel, first order in 1/n", ("dntk", "ddntk"), -2),
    "dntk_only_error": ("dNTK alone (ablation)", ("dntk",), -1),
    "ddntk_only_error": ("ddNTK alone (ablation)", ("ddntk",), -1),
    "dntk_rms": ("rms of the dNTK", None, -1),
    "ddntk_rms": ("rms of the ddNTK", None, -1),
}
NETWORK_COLUMNS = list(NETWORK_QUANTITIES)
EPS_CLAIMS = {1: "eps_first_order", 2: "eps_second_order"}
NETWORK_CLAIMS = {"kernel_error": "network_kernel", "first_order_error": "network_first_order",
                  "dntk_only_error": "network_ablation", "ddntk_only_error": "network_ablation",
                  "dntk_rms": "network_hierarchy_rms", "ddntk_rms": "network_hierarchy_rms"}
"""The Config field holding the claim on each network quantity's exponent of n."""


def _task(cfg: Config, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(cfg.n_train + cfg.n_test, cfg.d, generator=g, dtype=torch.float64)
    y = (torch.sin(x[:, 0]) + 0.5 * x[:, 1] * x[:, 2])[:, None]
    return x[:cfg.n_train], y[:cfg.n_train], x[cfg.n_train:], y[cfg.n_train:]


def _trained(cfg, eps, x, y, x_test):
    model = Q.random_model(cfg.d, cfg.features, eps, seed=cfg.seed_model)
    eta = inverse_largest_eigenvalue(model.kernel(x, x))
    W = Q.train_gd(model, x, y, learning_rate=eta, steps=cfg.steps)[-1]
    residual = float((model.output(W, x) - y).abs().max())
    return model, eta, model.output(W, x_test), residual


def _errors(cfg, eps, x, y, x_test) -> dict:
    """Every comparison of COMPARISONS at one eps: max |difference| / max |z_GD| on the test set."""
    model, eta, z_gd, residual = _trained(cfg, eps, x, y, x_test)
    gd = Q.nearly_kernel_prediction(model, x, y, x_test, algorithm="gd", learning_rate=eta)
    direct = Q.nearly_kernel_prediction(model, x, y, x_test, algorithm="direct")
    ode = Q.nearly_kernel_prediction(model, x, y, x_test, algorithm="ode")
    z_direct = model.output(Q.interpolant(model, x, y, span="initial"), x_test)
    z_sharp = model.output(Q.interpolant(model, x, y, span="sharp"), x_test)
    z_flow = model.output(Q.gradient_flow(model, x, y), x_test)
    pairs = {"kernel_error": (z_gd, gd["kernel"]), "nearly_kernel_error": (z_gd, gd["nearly_kernel"]),
             "ode_error": (z_flow, ode["nearly_kernel"]), "direct_error": (z_direct, direct["nearly_kernel"]),
             "compressed_error": (z_sharp, direct["trained_kernel"]),
             "gd_minus_direct": (z_gd, direct["nearly_kernel"]),
             "compressed_minus_direct": (z_direct, direct["trained_kernel"])}
    scale = float(z_gd.abs().max())
    return {"eps": eps, "train_residual": residual,
            **{name: float((a - b).abs().max()) / scale for name, (a, b) in pairs.items()}}


def optimal_eps(residual: np.ndarray, first: np.ndarray, second: np.ndarray) -> dict:
    """eps* of L(eps) = 1/2 sum (r + eps z^I + eps^2 z^II)^2, r = z^F - y:
    "first_order": the root of dL/deps truncated at O(eps), -Σ r z^I / Σ [(z^I)² + 2 r z^II];
    "slides": the same with r z^II (the slides' printed formula);
    "polynomial": the minimizer of the quartic polynomial itself (the real root of its cubic
    derivative with the lowest loss)."""
    r, a, b = residual.ravel(), first.ravel(), second.ravel()
    numerator = -(r * a).sum()
    derivative = [2 * (b * b).sum(), 3 * (a * b).sum(), (a * a).sum() + 2 * (r * b).sum(), (r * a).sum()]
    roots = [float(root.real) for root in np.roots(derivative) if abs(root.imag) < 1e-12]
    loss = lambda e: 0.5 * float(((r + e * a + e * e * b) ** 2).sum())  # noqa: E731
    return {"first_order": float(numerator / ((a * a).sum() + 2 * (r * b).sum())),
            "slides": float(numerator / ((a * a).sum() + (r * b).sum())),
            "polynomial": min(roots, key=loss)}


@register("nearly-kernel", "Roberts-Yaida-Hanin: quadratic models vs kernel (O(eps)) and nearly-kernel "
          "(O(eps^2)) predictions for GD, gradient flow and direct optimization; eps*; trained MLPs vs their "
          "1/n prediction", config=Config, devices=("cpu", "cuda"))
def run(folder: RunFolder, cfg: Config, *, seed: int, device: torch.device) -> dict:
    """The eps grid of the quadratic model, eps* on a task with a known optimum, trained MLPs."""
    x, y, x_test, _ = _task(cfg, seed)
    rows = [_errors(cfg, eps, x, y, x_test) for eps in tqdm(cfg.eps_log, desc="nearly-kernel eps grid", unit="eps")]
    eps = np.array(cfg.eps_log)
    slopes = {name: power_law_slope(eps, np.array([r[name] for r in rows])) for name, *_ in COMPARISONS}
    search, stars, loss_at_zero = _optimal_eps_search(cfg, x, y, x_test)
    networks = _networks(cfg, x, y, x_test, device)
    fits = {**{f"slope_{name}": value[0] for name, value in slopes.items()},
            **{f"slope_{name}_se": value[1] for name, value in slopes.items()},
            "eps_teacher": cfg.eps_teacher, **{f"eps_star_{k}": v for k, v in stars.items()},
            "eps_star_grid": float(search[int(np.argmin([r["test_loss"] for r in search]))]["eps"]),
            "grid_spacing": search[1]["eps"] - search[0]["eps"], "loss_at_zero": loss_at_zero,
            **_network_fits(cfg, networks)}
    folder.write_csv("metrics.csv", rows)
    folder.write_csv("networks.csv", networks)
    folder.write_csv("eps_search.csv", search)
    folder.write_json("fits.json", fits)
    figure = _figure(folder, rows, search, stars, cfg.eps_teacher, networks)
    folder.claims += _claims(cfg, fits)
    folder.write_text("report.md", _report(cfg, rows, fits, networks, figure, folder.claims))
    return fits


def _claims(cfg: Config, fits: dict) -> list[dict]:
    """The exponent of eps of every comparison, and of n of every network quantity per depth,
    each against the claim of its expected order (slopes ± standard errors of the fits)."""
    claims = [getattr(cfg, EPS_CLAIMS[expected]).check(fits[f"slope_{name}"], fits[f"slope_{name}_se"],
                                                       label=f"{solution} vs {prediction}")
              for name, solution, prediction, expected in COMPARISONS]
    for depth, _ in cfg.networks:
        for key, (label, _, _) in NETWORK_QUANTITIES.items():
            name = f"network_depth{depth}_{key}"
            claims.append(getattr(cfg, NETWORK_CLAIMS[key]).check(fits[name], fits[name + "_se"],
                                                                  label=f"depth {depth}, {label}"))
    return claims


def _optimal_eps_search(cfg: Config, x, y, x_test) -> tuple[list[dict], dict, float]:
    """eps* on a task whose optimum eps_teacher is known (test labels from the GD-trained model
    there): the formulas of `optimal_eps` from z^F, z^I (GD projectors) and z^II (central
    difference of trained models at +-h), and a grid of trained models' test losses beside the
    loss expansion, and the loss at eps = 0.  The test loss is the book's 1/2 Σ (z - y)^2, the
    loss the formula for eps* is derived from (module docstring)."""
    y_test = _trained(cfg, cfg.eps_teacher, x, y, x_test)[2]
    h = cfg.difference_step
    model, eta, z_plus, _ = _trained(cfg, h, x, y, x_test)
    gd = Q.nearly_kernel_prediction(model, x, y, x_test, algorithm="gd", learning_rate=eta)
    z_f, z_i = gd["kernel"], (gd["nearly_kernel"] - gd["kernel"]) / h
    z_ii = (z_plus + _trained(cfg, -h, x, y, x_test)[2] - 2 * _trained(cfg, 0.0, x, y, x_test)[2]) / (2 * h * h)
    residual = (z_f - y_test).numpy()
    stars = optimal_eps(residual, z_i.numpy(), z_ii.numpy())
    search = []
    for e in tqdm(np.linspace(-cfg.eps_teacher, 3 * cfg.eps_teacher, cfg.eps_search),
                  desc="nearly-kernel eps search", unit="eps"):
        trained = _trained(cfg, float(e), x, y, x_test)[2]
        expansion = residual + e * z_i.numpy() + e * e * z_ii.numpy()
        search.append({"eps": float(e), "test_loss": 0.5 * float((trained - y_test).square().sum()),
                       "expansion": 0.5 * float((expansion ** 2).sum())})
    return search, stars, 0.5 * float((residual ** 2).sum())


def _report(cfg: Config, rows: list[dict], fits: dict, networks: list[dict], figure: str, claims: list[dict]) -> str:
    """report.md: the claims (exponents against their theory), errors against eps, eps*."""
    slopes = [{"solution": solution, "prediction": prediction, "theory slope": expected,
               "fitted slope": f"{fits['slope_' + name]:.2f} ± {fits['slope_' + name + '_se']:.2f}"}
              for name, solution, prediction, expected in COMPARISONS]
    large = [r["eps"] for r in rows if r["nearly_kernel_error"] > 0.5 * r["kernel_error"]]
    checked = max(r["eps"] for r in rows if r["eps"] not in large) if len(large) < len(rows) else 0.0
    inside = abs(fits["eps_star_first_order"]) <= checked
    return "\n".join([
        "# Quadratic model: kernel vs nearly-kernel predictions (Roberts, Yaida & Hanin ch. 11)", "",
        claims_table(claims), "",
        f"Random quadratic model: {cfg.features} tanh features + constant, random symmetric tanh "
        f"meta features; d = {cfg.d}, {cfg.n_train} training and {cfg.n_test} test points, "
        f"target sin(x1) + x2 x3 / 2; GD from W = 0 with eta = 1/lambda_max(k~), {cfg.steps} steps. "
        "Each prediction is compared with the solution it describes (max |difference| on the test "
        "set relative to max |z_GD|):", "",
        markdown_table(slopes, list(slopes[0])), "",
        markdown_table(rows, list(rows[0])), "",
        "Direct optimization (dL/dW = 0) is satisfied by every interpolant when there are more "
        "features than training points. The slides' direct projectors (Z_A = 0) describe the "
        "interpolant in the span of the training features (the linear model's choice, and the limit "
        "of Newton's method from W = 0); the slides' compressed trained-kernel prediction "
        "k#_bA (k#_AA)^-1 y describes a different interpolant, W* in the span of "
        "phi# = (phi + phi^E(W*))/2 (then z = phi#.W* exactly), whose projectors are "
        "Z_A = Z_B = vv/2. Each formula matches its own solution at O(eps^2) (slopes above), the "
        "two differ at O(eps) (last row): the slides' statement that the compressed formula equals "
        "the direct-optimization prediction to O(eps^2) does not hold.", "",
        f"Optimal feature learning, on a task whose optimum is known: test labels from the model "
        f"trained by GD at eps_teacher = {cfg.eps_teacher} (inside the range where the expansion "
        f"was verified, eps <= {checked:g}); z^II from trained models at +-{cfg.difference_step}.", "",
        f"- eps* (first-order stationarity, -Σ r z^I / Σ[(z^I)² + 2 r z^II]): {fits['eps_star_first_order']:.4g}",
        f"- eps* (the slides' formula, r z^II without the 2): {fits['eps_star_slides']:.4g}",
        f"- minimizer of the O(eps^2) loss polynomial: {fits['eps_star_polynomial']:.4g}",
        f"- grid search of the trained models' test loss ({cfg.eps_search} values, spacing "
        f"{fits['grid_spacing']:.3g}): {fits['eps_star_grid']:.4g}", "",
        "Differentiating L = 1/2 Σ (r + eps z^I + eps^2 z^II)^2 gives dL/deps = Σ r z^I + eps Σ "
        "[(z^I)^2 + 2 r z^II] + O(eps^2): the factor 2 is missing from the slides' formula. On this "
        "task r = O(eps_teacher), so both are within O(eps_teacher^2) of the optimum; they differ at "
        "leading order only when the kernel's residual r is O(1) (then eps* is usually beyond the "
        "expansion's range)." + ("" if inside else f" **Warning:** eps* lies beyond eps = {checked:g}."), "",
        "## Real networks: the book's 1/n prediction", "",
        f"tanh MLPs (NTK parameterization, W_std 1.5, b_std 0.1), {cfg.network_seeds} "
        f"initializations per width, trained on the first {cfg.network_train} training points by "
        f"gradient flow (GD as eta -> 0; DOP853, rtol 1e-11) to t = {cfg.network_time:g} / "
        "lambda_min(NTK); errors max |Δf - prediction| / max |Δf| on "
        f"{cfg.network_test} test points, Δf = f_trained - f_init. Predictions from each network's own "
        "NTK, dNTK and ddNTK at initialization (`nk.ntk_hierarchy`): the kernel "
        "prediction freezes the NTK; the nearly-kernel prediction adds the first-order (1/n) "
        "correction of PDLT ch. ∞ from the dNTK and the ddNTKs; the ablations keep one of the two.", "",
        markdown_table(_network_summary(networks), ["depth", "width", *NETWORK_COLUMNS]), "",
        "Fitted slopes against n (all seeds, ± standard error; 'last' is the slope of the geometric "
        "means between the two largest widths):", "",
        markdown_table(_network_slopes(cfg, fits), ["depth", "quantity", "theory", "fitted", "last"]), "",
        *_network_gains(networks), "",
        f"![errors]({figure})", ""])


def _geometric_means(networks: list[dict], depth: int, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(widths, geometric mean over the seeds of `key`) for one depth."""
    widths = np.array(sorted({r["width"] for r in networks if r["depth"] == depth}))
    return widths, np.array([np.exp(np.mean([np.log(r[key]) for r in networks
                                            if r["depth"] == depth and r["width"] == w])) for w in widths])


def _network_summary(networks: list[dict]) -> list[dict]:
    """Geometric means over the seeds, per depth and width."""
    depths = sorted({r["depth"] for r in networks})
    means = {(depth, key): _geometric_means(networks, depth, key) for depth in depths for key in NETWORK_COLUMNS}
    return [{"depth": depth, "width": int(width), **{key: float(means[depth, key][1][i]) for key in NETWORK_COLUMNS}}
            for depth in depths for i, width in enumerate(means[depth, NETWORK_COLUMNS[0]][0])]


def _network_gains(networks: list[dict]) -> list[str]:
    """How many times closer than the frozen kernel each prediction is at the largest width."""
    lines = []
    for row in _network_summary(networks):
        if row["width"] == max(r["width"] for r in networks if r["depth"] == row["depth"]):
            lines.append(f"- depth {row['depth']}, n = {row['width']}: the first-order prediction is "
                         f"{row['kernel_error'] / row['first_order_error']:.0f}x closer to the trained network "
                         f"than the frozen kernel, the dNTK alone {row['kernel_error'] / row['dntk_only_error']:.1f}x, "
                         f"the ddNTK alone {row['kernel_error'] / row['ddntk_only_error']:.1f}x.")
    return lines


def _network_fits(cfg: Config, networks: list[dict]) -> dict:
    """Per depth and quantity: the fitted slope against n with its standard error, and the slope
    of the geometric means between the two largest widths."""
    fits = {}
    for depth, _ in cfg.networks:
        chosen = [r for r in networks if r["depth"] == depth]
        for key in NETWORK_COLUMNS:
            name = f"network_depth{depth}_{key}"
            fits[name], fits[name + "_se"] = power_law_slope([r["width"] for r in chosen], [r[key] for r in chosen])
            widths, means = _geometric_means(networks, depth, key)
            fits[name + "_last"] = float(np.log(means[-1] / means[-2]) / np.log(widths[-1] / widths[-2]))
    return fits


def _network_slopes(cfg: Config, fits: dict) -> list[dict]:
    rows = []
    for depth, _ in cfg.networks:
        for key, (label, _, expected) in NETWORK_QUANTITIES.items():
            name = f"network_depth{depth}_{key}"
            slope, se = fits[name], fits[name + "_se"]
            rows.append({"depth": depth, "quantity": label, "theory": expected, "fitted": f"{slope:.2f} ± {se:.2f}",
                         "last": f"{fits[name + '_last']:.2f}"})
    return rows


def _figure(folder, rows, search, stars, eps_teacher, networks) -> str:
    fig, axes = plt.subplots(1, 2 + len({r["depth"] for r in networks}), figsize=(22, 4.6))
    eps = np.array([r["eps"] for r in rows])
    markers = "os^vD<>"
    for (name, solution, prediction, expected), marker in zip(COMPARISONS, markers, strict=True):
        axes[0].plot(eps, [r[name] for r in rows], marker=marker, ls="-" if expected == 2 else "--",
                     label=f"{solution} vs {prediction}")
    power_guides(axes[0], eps, rows[0]["kernel_error"], (1,), label="eps")
    power_guides(axes[0], eps, rows[0]["nearly_kernel_error"], (2,), label="eps", styles=("--",))
    axes[0].set(xscale="log", yscale="log", xlabel="eps", ylabel="max |difference| / max |z|",
                title="each prediction against its solution")
    axes[0].legend(fontsize=6.5)
    axes[0].grid(alpha=0.3, which="both")
    grid = [r["eps"] for r in search]
    axes[1].plot(grid, [r["test_loss"] for r in search], "o", label="trained models (GD)")
    axes[1].plot(grid, [r["expansion"] for r in search], "-", label="L(eps) from z^F + eps z^I + eps^2 z^II")
    axes[1].axvline(eps_teacher, color="k", lw=0.8, label=f"eps_teacher = {eps_teacher}")
    axes[1].axvline(stars["first_order"], color="C3", ls="--", label=f"eps* = {stars['first_order']:.3g}")
    axes[1].axvline(stars["slides"], color="C4", ls=":", label=f"slides' eps* = {stars['slides']:.3g}")
    axes[1].set(xlabel="eps", ylabel="test loss  ½ Σ (y - z)²", title="optimal amount of feature learning")
    axes[1].legend(fontsize=7)
    axes[1].grid(alpha=0.3)
    for axis, depth in zip(axes[2:], sorted({r["depth"] for r in networks}), strict=True):
        chosen = [r for r in networks if r["depth"] == depth]
        for key, marker in zip(NETWORK_COLUMNS[:3], "os^", strict=True):
            widths, means = _geometric_means(networks, depth, key)
            line, = axis.plot(widths, means, "-" + marker, label=NETWORK_QUANTITIES[key][0])
            axis.plot([r["width"] for r in chosen], [r[key] for r in chosen], marker, color=line.get_color(),
                      alpha=0.3, ms=4)
        widths, kernel = _geometric_means(networks, depth, "kernel_error")
        power_guides(axis, widths, kernel[0], (-1, -2), label="n")
        axis.set(xscale="log", yscale="log", xlabel="width n", ylabel="max |Δf - prediction| / max |Δf|",
                 title=f"trained tanh MLPs, {depth} hidden layer{'s' if depth > 1 else ''}")
        axis.legend(fontsize=7)
        axis.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return folder.save_figure("nearly_kernel", fig)


def _networks(cfg: Config, x, y, x_test, device: torch.device | str) -> list[dict]:
    device = resolve_device(device)                  # "auto": a GPU where there is one
    x_train, y_train, x_eval = (t.to(device) for t in (x[:cfg.network_train], y[:cfg.network_train, 0],
                                                       x_test[:cfg.network_test]))
    return [_network_errors(cfg, depth, width, seed, x_train, y_train, x_eval)
            for depth, widths in cfg.networks
            for width in tqdm(widths, desc=f"nearly-kernel networks, depth {depth}", unit="width")
            for seed in range(cfg.network_seeds)]


def _network_errors(cfg: Config, depth: int, width: int, seed: int, x, y, x_test) -> dict:
    """One tanh MLP trained by gradient flow vs the predictions of NETWORK_QUANTITIES from its
    own NTK hierarchy at initialization, and the sizes (rms) of its dNTK and ddNTK."""
    started = time.perf_counter()
    model = nk.mlp(depth, width, W_std=1.5, b_std=0.1, activation=nk.Tanh()).module(
        x.shape[1], seed=seed, dtype=torch.float64, device=x.device)
    hierarchy = ntk_hierarchy(model, x, x_test)
    eigenvalues = torch.linalg.eigvalsh(hierarchy.ntk[:len(x)])
    times = [cfg.network_time / float(eigenvalues[0])]
    initial = hierarchy.output[len(x):].cpu()
    # network_time is t lambda_min with the book's unit rate on ½ Σ: learning_rate = N in
    # ntklab's convention (L = ||z - y||² / (2N)), which makes the flow time t itself
    change = train_gradient_flow(model, x, y, times, x_test, learning_rate=len(x))[0] - initial
    scale = float(change.abs().max())
    row = {"depth": depth, "width": width, "seed": seed, "condition": float(eigenvalues[-1] / eigenvalues[0])}
    for key, (_, terms, _) in NETWORK_QUANTITIES.items():
        if terms is not None:   # the errors of the predictions (the rms rows have no terms)
            predicted = nearly_kernel_flow(hierarchy, y, times, learning_rate=len(x), terms=terms)
            change_predicted = predicted["nearly_kernel" if terms else "kernel"][0] - initial
            row[key] = float((change - change_predicted).abs().max()) / scale
    row["dntk_rms"] = float(hierarchy.dntk.square().mean().sqrt())
    assert hierarchy.ddntk is not None   # ntk_hierarchy computes it by default
    row["ddntk_rms"] = float(hierarchy.ddntk.square().mean().sqrt())
    return {**row, "network_seconds": time.perf_counter() - started}
