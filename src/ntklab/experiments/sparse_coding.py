"""`ntklab run sparse-coding` -- lecture 22: find a basis in which the data are sparse.

Planted dictionaries of m atoms in R^d, N samples with k-sparse codes plus noise
(`studies.sparse_coding`); scikit-learn's dictionary learning recovers the atoms.
Reports, across k and m: atom recovery (max |cosine| per planted atom: mean, and the
fraction above 0.95), the relative reconstruction error with k-sparse OMP codes on the
learned dictionary (and on the planted one, the noise floor, and on a random dictionary
of the same size, a baseline), and the parameter counts kN + md against dN.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.linear_model import orthogonal_mp
from tqdm.auto import tqdm

from ..report import RunFolder, markdown_table
from ..studies import sparse_coding as S
from . import register


@dataclass(frozen=True)
class Config:
    """Settings of this experiment (the defaults are the full run)."""
    d: int = 24
    n: int = 2000
    noise: float = 0.05
    ks: tuple = (1, 2, 4, 8)
    ms: tuple = (24, 48)
    seeds: int = 2
    max_iter: int = 100

    @classmethod
    def quick(cls) -> "Config":
        """Small settings for tests and previews (seconds)."""
        return cls(d=16, n=800, ks=(1, 3), ms=(16, 32), seeds=1, max_iter=40)


def _omp_error(x: np.ndarray, atoms: np.ndarray, k: int) -> float:
    unit = atoms / np.linalg.norm(atoms, axis=1, keepdims=True)
    codes = orthogonal_mp(unit.T, x.T, n_nonzero_coefs=k).T
    return S.relative_error(x, codes, unit)


@register("sparse-coding", "Lecture 22: dictionary learning recovers a planted sparse basis; kN + md vs dN")
def run(folder: RunFolder, *, seed: int, quick: bool, device: torch.device) -> dict:
    cfg = Config.quick() if quick else Config()
    started = time.perf_counter()
    rows = []
    jobs = [(k, m, seed + s) for m in cfg.ms for k in cfg.ks for s in range(cfg.seeds)]
    for k, m, run_seed in tqdm(jobs, desc="sparse-coding", unit="fit"):
        data = S.planted(cfg.d, m, k, cfg.n, noise=cfg.noise, seed=run_seed)
        atoms, codes = S.learn(data.x, m, k, seed=run_seed, max_iter=cfg.max_iter)
        cosines = S.recovery(data.dictionary, atoms)
        random_atoms = np.random.default_rng(run_seed + 1).standard_normal(atoms.shape)
        rows.append({"k": k, "m": m, "seed": run_seed, "mean_recovery": float(cosines.mean()),
                     "fraction_recovered_0.95": float((cosines > 0.95).mean()),
                     "error_learned": S.relative_error(data.x, codes, atoms),
                     "error_planted": _omp_error(data.x, data.dictionary, k),
                     "error_random_dictionary": _omp_error(data.x, random_atoms, k),
                     "random_dictionary_recovery": float(S.recovery(data.dictionary, random_atoms).mean()),
                     **S.parameter_counts(cfg.d, m, k, cfg.n)})
    seconds = time.perf_counter() - started
    table = []
    for m in cfg.ms:
        for k in cfg.ks:
            chosen = [r for r in rows if r["k"] == k and r["m"] == m]
            mean = lambda key: float(np.mean([r[key] for r in chosen]))  # noqa: E731
            table.append({"m": m, "k": k, "mean |cos|": round(mean("mean_recovery"), 3),
                          "recovered (>0.95)": round(mean("fraction_recovered_0.95"), 3),
                          "error learned": round(mean("error_learned"), 3),
                          "error planted": round(mean("error_planted"), 3),
                          "error random dict.": round(mean("error_random_dictionary"), 3),
                          "kN + md": chosen[0]["sparse kN + md"], "dN": chosen[0]["raw dN"]})
    folder.write_csv("metrics.csv", rows)
    folder.write_csv("table.csv", table)
    figure = _figure(folder, table, cfg)
    folder.config.update(asdict(cfg))
    folder.write_text("report.md", _report(cfg, rows, table, figure, seconds))
    return {"seconds": round(seconds, 1),
            "mean_recovery": {f"m={r['m']}, k={r['k']}": r["mean |cos|"] for r in table}}


def _report(cfg: Config, rows: list[dict], table: list[dict], figure: str, seconds: float) -> str:
    """report.md: recovery and reconstruction per (m, k), and the storage count."""
    return "\n".join([
        "# Sparse coding: recovering a planted dictionary (lecture 22)", "",
        f"d = {cfg.d}, N = {cfg.n} samples x = sum_j alpha_j v_j + noise (std {cfg.noise}/sqrt(d) "
        f"per coordinate), k-sparse N(0, 1) codes on m unit atoms; scikit-learn "
        f"DictionaryLearning (coordinate-descent lasso, {cfg.max_iter} iterations, then OMP codes with k non-zeros); "
        f"{cfg.seeds} seed(s). Recovery: max |cosine| of each planted atom with the learned ones "
        f"(a random dictionary scores about "
        f"{np.mean([r['random_dictionary_recovery'] for r in rows]):.2f}). Errors: ||X - A D||_F / ||X||_F "
        "with k-sparse codes on the learned, the planted (noise floor) and a random dictionary.", "",
        markdown_table(table, list(table[0])), "",
        f"![recovery]({figure})", "",
        "The sparse representation stores kN + md numbers instead of dN: worthwhile when k << d "
        "and the dictionary is shared by many samples; recovery gets harder as k grows towards d "
        "and as the dictionary becomes more overcomplete (m > d).", "",
        f"Time: {seconds:.0f} s.", ""])


def _figure(folder: RunFolder, table: list[dict], cfg: Config) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.8))
    for i, m in enumerate(cfg.ms):
        entries = [r for r in table if r["m"] == m]
        ks = [r["k"] for r in entries]
        axes[0].plot(ks, [r["mean |cos|"] for r in entries], "o-", color=f"C{i}", label=f"m = {m}")
        axes[1].plot(ks, [r["error learned"] for r in entries], "o-", color=f"C{i}", label=f"m = {m} learned")
        axes[1].plot(ks, [r["error random dict."] for r in entries], "x:", color=f"C{i}",
                     label=f"m = {m} random dictionary")
    axes[0].set_ylabel("mean max |cos| per planted atom")
    axes[1].set_ylabel("relative reconstruction error")
    for ax in axes:
        ax.set_xlabel("non-zeros per code k")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_title(f"atom recovery, d = {cfg.d}")
    axes[1].set_title("k-sparse reconstruction")
    return folder.save_figure("recovery_vs_k", fig)
