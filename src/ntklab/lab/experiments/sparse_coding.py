"""`ntklab run sparse-coding` -- lecture 22: find a basis in which the data are sparse.

Planted dictionaries of m atoms in R^d, N samples with k-sparse codes plus noise
(`studies.sparse_coding`); scikit-learn's dictionary learning recovers the atoms. Three sweeps
from a base setting, each until recovery fails: the sparsity k towards d, the samples per atom
N/m down to a few, and the noise. Per cell, over several seeds: atom recovery (max |cosine| per
planted atom: mean, and the fraction above 0.95), the relative reconstruction error with
k-sparse OMP codes on the learned dictionary, on the planted one (the noise floor), on a random
dictionary of the same size, and of the dense alternative the lecture contrasts: the best
k-dimensional subspace (PCA with k components); and the parameter counts kN + md against dN.
"""
from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.linear_model import orthogonal_mp
from tqdm.auto import tqdm

from ..claims import Claim, mean_se
from ..report import RunFolder, claims_table, markdown_table, mean_std
from ..studies import sparse_coding as S
from . import register

FAILED = 0.5   # recovery fails when fewer than half the planted atoms reach |cos| > 0.95


@dataclass(frozen=True)
class Config:
    """Settings of this experiment (the defaults are the full run)."""

    d: int = 24
    m: int = 48
    n: int = 1500
    k: int = 4
    noise: float = 0.05
    ks: tuple[int, ...] = (1, 2, 4, 8, 12, 16)
    samples: tuple[int, ...] = (96, 192, 480, 1500)
    noises: tuple[float, ...] = (0.05, 0.3, 1.0, 3.0)
    seeds: int = 5
    max_iter: int = 100
    recovery: Claim = Claim(
        "dictionary learning recovers a planted sparse basis (m = 2d): fraction of atoms with |cos| > 0.95 "
        "at the base setting", 1.0, 0.1, "lecture 22 (Olshausen & Field 1996)")
    failure: Claim = Claim(
        "recovery fails at the hard end of the sweep: fraction of atoms recovered", 0.0, FAILED,
        "lecture 22 (recovery needs k << d, enough samples per atom and little noise)")
    beats_pca: Claim = Claim(
        "a k-sparse code beats the best dense k-dimensional subspace: reconstruction error of the learned "
        "dictionary over PCA's (k components) at the base setting", 0.0, 0.5,
        "lecture 22 (noiseless k-sparse data are reconstructed exactly by k-sparse codes, not by any "
        "k-dimensional subspace when m > k; the tolerance: the sparse code at least halves PCA's error)")

    @classmethod
    def quick(cls) -> "Config":
        """Small settings for tests and previews (seconds)."""
        return cls(d=12, m=24, n=400, k=2, ks=(1, 2, 8), samples=(48, 400), noises=(0.05, 1.0),
                   seeds=1, max_iter=30)


def _omp_error(x: np.ndarray, atoms: np.ndarray, k: int) -> float:
    unit = atoms / np.linalg.norm(atoms, axis=1, keepdims=True)
    codes = orthogonal_mp(unit.T, x.T, n_nonzero_coefs=k).T
    return S.relative_error(x, codes, unit)


def _pca_error(x: np.ndarray, k: int) -> float:
    """The best k-dimensional linear subspace (dense codes): relative error of the rank-k fit."""
    singular = np.linalg.svd(x, compute_uv=False)
    return float(np.sqrt((singular[k:] ** 2).sum() / (singular ** 2).sum()))


def one_fit(cfg: Config, k: int, n: int, noise: float, seed: int) -> dict:
    """One cell and seed: recovery of the planted atoms and the reconstruction errors."""
    data = S.planted(cfg.d, cfg.m, k, n, noise=noise, seed=seed)
    atoms, codes = S.learn(data.x, cfg.m, k, seed=seed, max_iter=cfg.max_iter)
    cosines = S.recovery(data.dictionary, atoms)
    random_atoms = np.random.default_rng(seed + 1).standard_normal(atoms.shape)
    return {"k": k, "N": n, "N_per_atom": n / cfg.m, "noise": noise, "seed": seed,
            "mean_recovery": float(cosines.mean()), "recovered_0.95": float((cosines > 0.95).mean()),
            "error_learned": S.relative_error(data.x, codes, atoms),
            "error_planted": _omp_error(data.x, data.dictionary, k),
            "error_random_dictionary": _omp_error(data.x, random_atoms, k),
            "error_pca_k": _pca_error(data.x, k),
            "random_dictionary_recovery": float(S.recovery(data.dictionary, random_atoms).mean()),
            **S.parameter_counts(cfg.d, cfg.m, k, n)}


SWEEPS = {"k": "non-zeros per code k", "N_per_atom": "samples per atom N/m", "noise": "noise (relative)"}


@register("sparse-coding", "Lecture 22: dictionary learning recovers a planted sparse basis until k, N/m "
          "or the noise make it fail; kN + md vs dN", config=Config)
def run(folder: RunFolder, cfg: Config, *, seed: int, device: torch.device) -> dict:
    """Every cell of the three sweeps over the seeds, the failure boundaries, the report."""
    settings = {("k", k, cfg.n, cfg.noise) for k in cfg.ks}
    settings |= {("N_per_atom", cfg.k, n, cfg.noise) for n in cfg.samples}
    settings |= {("noise", cfg.k, cfg.n, noise) for noise in cfg.noises}
    cells = sorted({(k, n, noise) for _, k, n, noise in settings})
    rows = [one_fit(cfg, k, n, noise, seed * 1000 + s)
            for k, n, noise in tqdm(cells, desc="sparse-coding cells", unit="cell") for s in range(cfg.seeds)]
    table = _table(rows, cells)
    boundaries = {sweep: _boundary(table, sweep, cfg) for sweep in SWEEPS}
    folder.write_csv("metrics.csv", rows)
    folder.write_csv("table.csv", table)
    folder.write_json("fits.json", {"failure_boundaries": boundaries})
    figure = _figure(folder, table, cfg)
    folder.claims += _claims(cfg, rows)
    folder.write_text("report.md", _report(cfg, rows, table, boundaries, figure, folder.claims))
    return {"failure_boundaries": boundaries}


def _table(rows: list[dict], cells) -> list[dict]:
    """Mean and sample standard deviation (`mean_std`) over seeds per (k, N, noise)."""
    keys = ("mean_recovery", "recovered_0.95", "error_learned", "error_planted",
            "error_random_dictionary", "error_pca_k")
    out = []
    for k, n, noise in cells:
        chosen = [r for r in rows if (r["k"], r["N"], r["noise"]) == (k, n, noise)]
        entry = {"k": k, "N": n, "N_per_atom": chosen[0]["N_per_atom"], "noise": noise}
        for key in keys:
            entry[key], entry[key + "_std"] = mean_std([r[key] for r in chosen])
        entry["kN + md"], entry["dN"] = chosen[0]["sparse kN + md"], chosen[0]["raw dN"]
        out.append(entry)
    return out


def _sweep(table: list[dict], sweep: str, cfg: Config) -> list[dict]:
    base = {"k": cfg.k, "N": cfg.n, "noise": cfg.noise}
    fixed = [name for name in ("k", "N", "noise") if name != {"N_per_atom": "N"}.get(sweep, sweep)]
    return sorted((r for r in table if all(r[name] == base[name] for name in fixed)), key=lambda r: r[sweep])


def _boundary(table: list[dict], sweep: str, cfg: Config) -> str:
    """Where the recovered fraction first falls below FAILED along the sweep."""
    entries = _sweep(table, sweep, cfg)
    ordered = entries if sweep in ("k", "noise") else entries[::-1]   # the direction that gets harder
    good = [r[sweep] for r in ordered if r["recovered_0.95"] >= FAILED]
    bad = [r[sweep] for r in ordered if r["recovered_0.95"] < FAILED]
    if not bad:
        return f"no failure up to {sweep} = {ordered[-1][sweep]:g}"
    if not good:
        return f"fails already at {sweep} = {ordered[0][sweep]:g}"
    return f"between {sweep} = {good[-1]:g} (recovered) and {bad[0]:g} (failed)"


def _claims(cfg: Config, rows: list[dict]) -> list[dict]:
    """Recovery and the noise floor at the base setting, failure at the hard end of each sweep
    (means over seeds ± standard errors)."""
    def cell(k, n, noise):
        return [r for r in rows if (r["k"], r["N"], r["noise"]) == (k, n, noise)]
    base = cell(cfg.k, cfg.n, cfg.noise)
    hardest = {"k": (max(cfg.ks), cfg.n, cfg.noise), "N_per_atom": (cfg.k, min(cfg.samples), cfg.noise),
               "noise": (cfg.k, cfg.n, max(cfg.noises))}
    return [cfg.recovery.check(*mean_se([r["recovered_0.95"] for r in base])),
            *[cfg.failure.check(*mean_se([r["recovered_0.95"] for r in cell(*hardest[sweep])]),
                                label=f"{SWEEPS[sweep]} sweep, (k, N, noise) = {hardest[sweep]}")
              for sweep in SWEEPS],
            cfg.beats_pca.check(*mean_se([r["error_learned"] / r["error_pca_k"] for r in base]))]


def _report(cfg: Config, rows, table, boundaries, figure, claims) -> str:
    shown = [{"k": r["k"], "N/m": f"{r['N_per_atom']:.1f}", "noise": r["noise"],
              "recovered (>0.95)": f"{r['recovered_0.95']:.2f} ± {r['recovered_0.95_std']:.2f}",
              "mean |cos|": f"{r['mean_recovery']:.3f}",
              "error learned": f"{r['error_learned']:.3f} ± {r['error_learned_std']:.3f}",
              "noise floor (planted)": f"{r['error_planted']:.3f}", "PCA, k dims": f"{r['error_pca_k']:.3f}",
              "random dict.": f"{r['error_random_dictionary']:.3f}", "kN + md": r["kN + md"], "dN": r["dN"]}
             for r in table]
    floor_ratio = [r["error_learned"] / r["error_planted"] for r in table if r["recovered_0.95"] >= 0.9]
    return "\n".join([
        "# Sparse coding: recovering a planted dictionary, and where it fails (lecture 22)", "",
        claims_table(claims), "",
        f"d = {cfg.d}, m = {cfg.m} unit atoms (overcomplete: m = 2d), x = sum_j alpha_j v_j + noise "
        f"(std noise/sqrt(d) per coordinate), k-sparse N(0, 1) codes; scikit-learn DictionaryLearning "
        f"(coordinate-descent lasso, {cfg.max_iter} iterations, then OMP codes with k non-zeros); "
        f"{cfg.seeds} seeds per cell (mean ± standard deviation). Base setting k = {cfg.k}, N = {cfg.n}, "
        f"noise {cfg.noise}; three sweeps from it. Recovery: max |cosine| of each planted atom with the "
        f"learned ones (a random dictionary scores about "
        f"{np.mean([r['random_dictionary_recovery'] for r in rows]):.2f}). Errors ||X - A D||_F / ||X||_F "
        "with k-sparse codes on the learned, the planted (the noise floor) and a random dictionary, and "
        "of the best k-dimensional subspace (PCA: dense codes of the same length k).", "",
        markdown_table(shown, list(shown[0])), "",
        "Failure boundaries (recovered fraction below 1/2):", "",
        *[f"- {SWEEPS[s]}: {b}" for s, b in boundaries.items()], "",
        f"Where recovery succeeds (>= 90% of atoms), the learned dictionary's error is "
        f"{min(floor_ratio, default=float('nan')):.2f}-{max(floor_ratio, default=float('nan')):.2f} "
        "times the planted dictionary's (the noise floor). A k-dimensional subspace (PCA) needs the "
        "same k numbers per sample but cannot follow the sample-dependent supports: its error is far "
        "above the sparse code's whenever m > k.", "",
        f"![recovery]({figure})", "",
        "The sparse representation stores kN + md numbers instead of dN: worthwhile when k << d and "
        "the dictionary is shared by many samples.", ""])


def _figure(folder: RunFolder, table: list[dict], cfg: Config) -> str:
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    for column, sweep in enumerate(SWEEPS):
        entries = _sweep(table, sweep, cfg)
        values = [r[sweep] for r in entries]
        top, bottom = axes[0, column], axes[1, column]
        top.errorbar(values, [r["recovered_0.95"] for r in entries],
                     yerr=[r["recovered_0.95_std"] for r in entries], marker="o", capsize=3,
                     label="atoms recovered (|cos| > 0.95)")
        top.plot(values, [r["mean_recovery"] for r in entries], "s--", label="mean max |cos|")
        top.axhline(FAILED, color="C3", lw=0.8, label="failure: 1/2")
        top.set_ylim(-0.02, 1.02)
        top.set_ylabel("recovery")
        for key, style, label in (("error_learned", "o-", "learned dictionary"),
                                  ("error_planted", "k--", "planted (noise floor)"),
                                  ("error_pca_k", "^:", "PCA, k dims (dense)"),
                                  ("error_random_dictionary", "x:", "random dictionary")):
            bottom.plot(values, [r[key] for r in entries], style, label=label)
        bottom.set_yscale("log")
        bottom.set_ylabel("relative reconstruction error")
        for ax in (top, bottom):
            ax.set_xlabel(SWEEPS[sweep])
            ax.grid(alpha=0.3)
            if sweep != "k":
                ax.set_xscale("log")
                ax.minorticks_off()
            ax.set_xticks(values, [f"{v:g}" for v in values])
        top.set_title(f"sweep of {SWEEPS[sweep]} (d = {cfg.d}, m = {cfg.m})")
        bottom.set_title(f"k-sparse reconstruction against {SWEEPS[sweep]}")
    axes[0, 0].legend(fontsize=7)
    axes[1, 0].legend(fontsize=7)
    fig.tight_layout()
    return folder.save_figure("recovery", fig)
