"""`ntklab run sample-complexity` -- Damian, Lee & Soltanolkotabi (2022), the sample-
complexity experiment of the paper (COLT 2022): d = 10, p = 4,
f*(x) = He_2(u.x)/2 + He_p(u.x)/sqrt(2 p!), x ~ N(0, I_d), labels with +-zeta noise.

Test loss (MSE against the noiseless, unit-norm target on fresh samples) against the
number of samples n for
  * Algorithm 1 (one gradient step on W, fresh biases, ridge head; `studies.representation`),
  * random features (the same network with W, b frozen at initialization),
  * kernel regression with the analytic two-layer ReLU NTK,
with ridges tuned on a 20% validation split, several seeds.  Theory: the kernels need
n ~ d^p; for d^2 < n < d^p they learn only the He_2 half (loss ~ 1/2), while
Algorithm 1 learns u from the He_2 part (n ~ d^2) and then g (loss well below 1/2).
Also the alignment of Algorithm 1's first layer with span(u).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import matplotlib.pyplot as plt
import numpy as np
import torch
from tqdm.auto import tqdm

from ..claims import Claim, mean_se
from ..report import RunFolder, claims_table, grouped, markdown_table, mean_std
from ..studies import representation as R
from . import register

def _algorithm1_normal_bias(x, y, **options) -> R.TwoLayerPredictor:
    return R.algorithm1(x, y, initial_bias="normal", **options)


def _ntk_regression(x, y, **_) -> R.KernelPredictor:
    return R.ntk_regression(x, y)   # no width, no seed: the kernel is the infinite network's


METHODS: dict[str, Callable[..., R.TwoLayerPredictor | R.KernelPredictor]] = {
    "Algorithm 1": R.algorithm1, "Algorithm 1, b ~ N(0, 1) in step 1": _algorithm1_normal_bias,
           "random features": R.random_features_ridge, "NTK regression": _ntk_regression}


@dataclass(frozen=True)
class Config:
    """Settings of this experiment (the defaults are the full run)."""

    d: int = 10
    p: int = 4
    noise: float = 0.1
    m: int = 1000
    seeds: int = 3
    n_test: int = 4000
    grid: tuple[int, ...] = (20, 50, 100, 200, 500, 1000, 2000, 5000)
    widths: tuple[int, ...] = (50, 100, 300, 1000, 3000)      # Theorem 1's width m, at n = width_n
    width_n: int = 2000
    degenerate_grid: tuple[int, ...] = (200, 1000, 5000)       # Theorem 2: E[Hessian of f*] = 0
    kernel_plateau: Claim = Claim(
        "kernels learn only the He_2 half below the degree-p mode count: the best kernel's loss at the "
        "largest n between d^2 and C(d+p-1, p)", 0.5, 0.1,
        "Ghorbani et al. 2021 (kernel ridge regression needs n of the order of the number of degree-p "
        "modes, C(d+p-1, p) = 715 at d = 10, p = 4, to learn the degree-p part); Damian, Lee & "
        "Soltanolkotabi 2022")
    algorithm1_learns: Claim = Claim(
        "Algorithm 1 learns the He_p half too at the same n: its loss", 0.0, 0.25,
        "Damian, Lee & Soltanolkotabi 2022, Theorem 1 (n ~ d^2 polylog d suffices; the tolerance: at "
        "most half of the He_p half left)")

    @classmethod
    def quick(cls) -> "Config":
        """Small settings for tests and previews (seconds)."""
        return cls(m=400, seeds=1, n_test=2000, grid=(50, 200, 800), widths=(50, 400),
                   width_n=800, degenerate_grid=(800,))


def width_sweep(cfg: Config, seed: int) -> list[dict]:
    """Theorem 1's dependence on the width m: Algorithm 1's test loss at n = width_n."""
    rows = []
    for m in cfg.widths:
        for s in range(cfg.seeds):
            target = R.paper_target(cfg.d, cfg.p, seed=seed + s)
            x, y = R.sample(target, cfg.width_n, noise=cfg.noise, seed=seed + s + 1000)
            predictor = R.algorithm1(x, y, m=m, seed=seed + s + 2000)
            rows.append({"m": m, "seed": seed + s, "test_loss": R.test_loss(predictor, target, cfg.n_test,
                                                                           seed=seed + s + 3000)})
    return rows


def degenerate_target(d: int, p: int, seed: int) -> "R.MultiIndexTarget":
    """He_p(u.x)/sqrt(p!) alone: E[grad^2 f*] = 0 (no He_2 part), Theorem 2's setting."""
    return R.hermite_target(R.random_directions(d, 1, seed=seed), [(1.0, (p,))], name=f"He{p}/sqrt({p}!)")


def degenerate_sweep(cfg: Config, seed: int) -> list[dict]:
    """Algorithm 1 and NTK regression on the degenerate target: the first step sees no
    Hessian, so it finds no direction (alignment near its chance level r/d)."""
    rows = []
    for n in cfg.degenerate_grid:
        for s in range(cfg.seeds):
            target = degenerate_target(cfg.d, cfg.p, seed + s)
            x, y = R.sample(target, n, noise=cfg.noise, seed=seed + s + 1000)
            algorithm = R.algorithm1(x, y, m=cfg.m, seed=seed + s + 2000)
            rows.append({"n": n, "seed": seed + s,
                         "Algorithm 1": R.test_loss(algorithm, target, cfg.n_test, seed=seed + s + 3000),
                         "NTK regression": R.test_loss(R.ntk_regression(x, y), target, cfg.n_test,
                                                       seed=seed + s + 3000),
                         **R.subspace_alignment(algorithm.W, target.U)})
    return rows


def one_run(cfg: Config, n: int, seed: int) -> list[dict]:
    """Every method on one sample of n points: test loss, ridge, fit time (and alignment)."""
    target = R.paper_target(cfg.d, cfg.p, seed=seed)
    x, y = R.sample(target, n, noise=cfg.noise, seed=seed + 1000)
    rows = []
    for method in METHODS:
        start = time.perf_counter()
        predictor = METHODS[method](x, y, m=cfg.m, seed=seed + 2000)
        extra = (R.subspace_alignment(predictor.W, target.U)
                 if isinstance(predictor, R.TwoLayerPredictor) and method.startswith("Algorithm 1") else {})
        loss = R.test_loss(predictor, target, cfg.n_test, seed=seed + 3000)
        fractions = R.hermite_fractions(predictor, target.U[0], R.paper_coefficients(cfg.p), cfg.n_test,
                                        seed=seed + 4000)
        rows.append({"n": n, "seed": seed, "method": method, "test_loss": loss, "fraction_2": fractions[2],
                     f"fraction_{cfg.p}": fractions[cfg.p],
                     "ridge": predictor.ridge, "seconds": time.perf_counter() - start, **extra})
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation of the test loss per (n, method)."""
    out = []
    for (n, method), chosen in grouped(rows, ("n", "method")).items():
        mean, std = mean_std([r["test_loss"] for r in chosen])
        entry = {"n": n, "method": method, "mean_loss": mean, "std_loss": std,
                 **{key: mean_std([r[key] for r in chosen])[0] for key in chosen[0] if key.startswith("fraction_")}}
        if method.startswith("Algorithm 1"):
            for key in ("fraction_in_span", "max_principal_angle_deg"):
                entry[key] = mean_std([r[key] for r in chosen])[0]
        out.append(entry)
    return out


@register("sample-complexity", "Damian-Lee-Soltanolkotabi: Algorithm 1 vs random features vs NTK, loss vs n",
          config=Config)
def run(folder: RunFolder, cfg: Config, *, seed: int, device: torch.device) -> dict:
    """The loss against n per method over seeds, the width and degenerate-target sweeps."""
    rows = []
    jobs = [(n, seed + s) for n in cfg.grid for s in range(cfg.seeds)]
    for n, run_seed in tqdm(jobs, desc="sample-complexity", unit="run"):
        rows.extend(one_run(cfg, n, run_seed))
    widths = width_sweep(cfg, seed)
    degenerate = degenerate_sweep(cfg, seed)
    summary = summarize(rows)
    folder.write_csv("metrics.csv", rows)
    folder.write_csv("summary.csv", summary)
    folder.write_csv("width_sweep.csv", widths)
    folder.write_csv("degenerate_target.csv", degenerate)
    figure = _figure(folder, summary, cfg)
    folder.claims += _claims(cfg, rows)
    folder.write_text("report.md", _report(cfg, summary, rows, widths, degenerate, figure, folder.claims))
    return {"mean_test_loss": {f"{e['method']} n={e['n']}": round(e["mean_loss"], 4) for e in summary}}


def modes(d: int, p: int) -> tuple[int, int]:
    """The number of polynomial modes of degree exactly p, C(d+p-1, p), and of degree <= p, C(d+p, p)."""
    return math.comb(d + p - 1, p), math.comb(d + p, p)


def _claims(cfg: Config, rows: list[dict]) -> list[dict]:
    """At the largest grid n between d^2 and the degree-p mode count: the best kernel's loss
    and Algorithm 1's (means over seeds ± standard errors; no n there: not measured)."""
    middle = [n for n in cfg.grid if cfg.d ** 2 < n < modes(cfg.d, cfg.p)[0]]
    if not middle:
        nan = (float("nan"), float("nan"))
        return [cfg.kernel_plateau.check(*nan), cfg.algorithm1_learns.check(*nan)]
    n = max(middle)
    losses = {method: mean_se([r["test_loss"] for r in rows if r["n"] == n and r["method"] == method])
              for method in ("random features", "NTK regression", "Algorithm 1")}
    best = min(("random features", "NTK regression"), key=lambda method: losses[method][0])
    return [cfg.kernel_plateau.check(*losses[best], label=f"n = {n} ({best})"),
            cfg.algorithm1_learns.check(*losses["Algorithm 1"], label=f"n = {n}")]


def _figure(folder: RunFolder, summary: list[dict], cfg: Config) -> str:
    fig, ax = plt.subplots(figsize=(9.6, 4.4))
    for i, method in enumerate(METHODS):
        entries = [e for e in summary if e["method"] == method]
        ax.errorbar([e["n"] for e in entries], [e["mean_loss"] for e in entries],
                    yerr=[e["std_loss"] for e in entries], marker="o", capsize=3, color=f"C{i}",
                    label=method)
    d, p = cfg.d, cfg.p
    ax.axhline(0.5, color="gray", ls=":", label="1/2: only the He_2 part learned")
    exactly = modes(d, p)[0]
    for n, style, label in ((d ** 2, ":", f"n = d² = {d ** 2}"),
                            (exactly, "--", f"n = C(d+p-1, p) = {exactly} degree-{p} modes"),
                            (d ** p, "-.", f"n = d^{p} = {d ** p}")):
        ax.axvline(n, color="gray", ls=style, lw=0.8, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training samples n")
    ax.set_ylabel("test loss (MSE to the unit-norm target)")
    ax.set_title(f"d = {d}, p = {p}: learning He2/2 + He{p}/sqrt(2 {p}!)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return folder.save_figure("loss_vs_n", fig)


def _degenerate_sentence(cfg: Config, degenerate: list[dict]) -> str:
    """What the degenerate-target table shows, from its numbers."""
    largest = max(cfg.degenerate_grid)
    fraction = float(np.mean([r["fraction_in_span"] for r in degenerate if r["n"] == largest]))
    chance = 1 / cfg.d
    head = (f"Expectation (Theorem 2, as d → ∞): the first gradient step sees the target through "
            f"E[grad^2 f*], which vanishes without a He_2 part, so W stays near its chance alignment "
            f"1/d = {chance:.2f}. Measured at n = {largest}: {fraction:.2f} of ||W||^2 in span(u). ")
    if fraction < 2 * chance:
        return head + "Near chance: the first step finds no direction, as the theorem says."
    return head + (f"Well above chance at d = {cfg.d}: the ReLU gradient's higher Hermite terms "
                   "(of size |w.u|^(p-1) ~ d^(-(p-1)/2) for w ~ N(0, I/d)) still point towards u at this "
                   "small d; the lower bound is asymptotic and is not resolved by this run.")


def ridge_summary(rows: list[dict]) -> list[dict]:
    """Per method: the selected ridges (counts) and how many sit on an edge of the grid."""
    out = []
    for method in METHODS:
        chosen = [r["ridge"] for r in rows if r["method"] == method]
        edges = sum(r in (R.RIDGES[0], R.RIDGES[-1]) for r in chosen)
        counts = {f"{v:g}": chosen.count(v) for v in sorted(set(chosen))}
        out.append({"method": method, "selected ridges (count)": ", ".join(f"{k}: {v}" for k, v in counts.items()),
                    "on a grid edge": f"{edges} of {len(chosen)}"})
    return out


def _report(cfg: Config, summary: list[dict], rows: list[dict], widths: list[dict], degenerate: list[dict],
            figure: str, claims: list[dict]) -> str:
    d, p = cfg.d, cfg.p
    exactly, up_to = modes(d, p)
    table = []
    for n in sorted({e["n"] for e in summary}):
        row = {"n": n}
        for e in summary:
            if e["n"] == n:
                row[e["method"]] = f"{e['mean_loss']:.3f} ± {e['std_loss']:.3f}"
                if e["method"] == "Algorithm 1":
                    row["Alg. 1 ||W||^2 in span(u)"] = round(e["fraction_in_span"], 3)
                    row["Alg. 1 angle (deg)"] = round(e["max_principal_angle_deg"], 1)
        table.append(row)
    middle = [n for n in sorted({e["n"] for e in summary}) if d ** 2 < n < exactly]
    checks = []
    for n in middle:
        losses = {e["method"]: e["mean_loss"] for e in summary if e["n"] == n}
        kernel = min(losses["random features"], losses["NTK regression"])
        checks.append(f"- n = {n}: Algorithm 1 {losses['Algorithm 1']:.3f} vs best kernel "
                      f"{kernel:.3f} ({'below' if losses['Algorithm 1'] < kernel else 'NOT below'}); "
                      f"NTK {losses['NTK regression']:.3f}, random features "
                      f"{losses['random features']:.3f} (expectation: about 1/2 until n is of the order "
                      f"of the {exactly} degree-{p} modes)")
    ridges = ridge_summary(rows)
    return "\n".join([
        "# Sample complexity: Algorithm 1 vs random features vs NTK (Damian, Lee & Soltanolkotabi 2022)",
        "",
        f"d = {d}, p = {p}, target He2(u.x)/2 + He{p}(u.x)/sqrt(2 {p}!) (unit norm), label noise "
        f"+-{cfg.noise}, width m = {cfg.m}, {cfg.seeds} seed(s) per n, test loss on "
        f"{cfg.n_test} fresh samples against the noiseless target (the zero predictor scores 1). "
        "Mean ± standard deviation over seeds.", "",
        claims_table(claims), "",
        markdown_table(table, list(table[0])), "",
        f"![loss vs n]({figure})", "",
        "## Learned fraction of each degree", "",
        "The predictor's coefficient on the orthonormal He_k(u.x)/sqrt(k!) over the target's (1: that half "
        "learned, 0: not), on fresh samples; mean over seeds.", "",
        markdown_table([{"n": e["n"], "method": e["method"], "He_2 part": round(e["fraction_2"], 3),
                         f"He_{p} part": round(e[f"fraction_{p}"], 3)} for e in summary],
                       ["n", "method", "He_2 part", f"He_{p} part"]), "",
        f"## Theory check (d^2 = {d ** 2} < n < C(d+p-1, p) = {exactly})", "",
        f"The kernels' threshold is the number of modes, not d^p = {d ** p}: {exactly} polynomial modes of "
        f"degree exactly {p} in d = {d} variables (C(d+p-1, p)), {up_to} of degree <= {p} (C(d+p, p)); "
        f"d^p/p! = {d ** p / math.factorial(p):.0f} only for d >> p. Kernels learning below d^p is expected.", "",
        *checks, "",
        f"## Theorem 1's width: Algorithm 1 at n = {cfg.width_n} against m", "",
        markdown_table([{"m": m, "test loss (mean ± std)": "{:.3f} ± {:.3f}".format(
            *mean_std([r["test_loss"] for r in widths if r["m"] == m]))} for m in cfg.widths],
            ["m", "test loss (mean ± std)"]), "",
        "Theorem 1 asks for a width m that grows with the target's complexity (the head must fit "
        "g on the learned features); the loss should fall with m and then level off.", "",
        f"## Theorem 2: a target with E[Hessian of f*] = 0 (He_{cfg.p}(u.x)/sqrt({cfg.p}!) alone)", "",
        markdown_table([{"n": n, **{k: "{:.3f}".format(float(np.mean([r[k] for r in degenerate if r["n"] == n])))
                                    for k in ("Algorithm 1", "NTK regression", "fraction_in_span")}}
                        for n in cfg.degenerate_grid], ["n", "Algorithm 1", "NTK regression", "fraction_in_span"]), "",
        _degenerate_sentence(cfg, degenerate), "",
        "## Selected ridges", "",
        f"Grid {R.RIDGES[0]:g} ... {R.RIDGES[-1]:g} (factor 10), chosen by validation MSE; a ridge on an "
        "edge of the grid means the optimum may lie beyond it.", "",
        markdown_table(ridges, list(ridges[0])), "",
        "## Protocol", "",
        "- Algorithm 1 as in the slides (symmetric init a = +-1, w ~ N(0, I/d), b = 0 during the first "
        "step; the authors' code keeps b ~ N(0, 1) there: the row 'Algorithm 1, b ~ N(0, 1) in step 1'; preprocessing "
        "alpha = mean y, beta = mean y x; one step on W with lambda_1 = 1/eta_1 and eta_1 giving rows of "
        "unit RMS norm, as the authors' code; b re-drawn from N(0, 1); the head a by ridge regression, "
        "the limit of GD with weight decay, ridge on a log grid by validation MSE, as the code).",
        "- Random features: the same network and head fit with W ~ N(0, I/d), b ~ N(0, 1) frozen.",
        "- NTK: kernel regression with the analytic NTK of the two-layer ReLU network (NTK "
        "parameterization, b_std = 1), diag_reg relative to the mean diagonal on the same grid.",
        "- All three use the same preprocessing and a 20% validation split of the n samples.",
        "- Not shown: the network with all layers trained (not implemented in this study).", ""])
