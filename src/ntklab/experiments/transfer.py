"""`ntklab run transfer` -- Damian, Lee & Soltanolkotabi (2022), transfer learning
(Theorem 3 and the transfer experiment of the paper): p = 3.

Pretrain: Algorithm 1's first step on n samples of f*(x) = He_2(u.x)/2 + He_3(u.x)/sqrt(2 3!)
(W after one gradient step, fresh biases b).  Transfer: keep W, b and fit only the head a
on N samples of the new task He_3(u.x)/sqrt(3!) on the same direction u (ridge, chosen
by exact leave-one-out so that it works down to a few samples).  Baseline: NTK kernel
regression on the N target samples alone (same leave-one-out ridge).  Test loss: MSE to
the noiseless unit-norm target on fresh samples (the zero predictor scores 1).
Theory: for n >= d^2 the head needs N ~ r^p = O(1) samples, independent of d; for n = d^0,
d^1 the features carry no information and fine-tuning behaves like a kernel method
(trivial loss until N ~ d^p).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from tqdm.auto import tqdm

from ..report import RunFolder, grouped, markdown_table, mean_std
from ..studies import representation as R
from . import register

BASELINE = "NTK on the N target samples"


@dataclass(frozen=True)
class Config:
    """Settings of this experiment (the defaults are the full run)."""
    d: int = 10
    p: int = 3
    noise: float = 0.1
    m: int = 1000
    seeds: int = 3
    n_test: int = 4000
    pretrain: tuple = (1, 10, 100, 1000, 10000)
    finetune: tuple = (4, 8, 16, 32, 64, 128, 256, 512, 1024)

    @classmethod
    def quick(cls) -> "Config":
        """Small settings for tests and previews (seconds)."""
        return cls(m=400, seeds=1, n_test=2000, pretrain=(1, 10, 1000), finetune=(8, 32, 128))


def one_run(cfg: Config, seed: int) -> list[dict]:
    source = R.paper_target(cfg.d, cfg.p, seed=seed)
    target = R.transfer_target(source.U, cfg.p)
    x_test, y_test = R.sample(target, cfg.n_test, seed=seed + 1)
    fine = {N: R.sample(target, N, noise=cfg.noise, seed=seed + 10 + N) for N in cfg.finetune}
    rows = []
    ntk = R.ntk_architecture()
    for N, (x, y) in fine.items():
        coefficients, ridge = R.loo_ridge(ntk.kernel(x, get="ntk"), y)
        prediction = ntk.kernel(x_test, x, get="ntk") @ coefficients
        rows.append({"seed": seed, "pretrain_n": 0, "method": BASELINE, "N": N, "ridge": ridge,
                     "test_loss": float((prediction - y_test).square().mean())})
    for n in cfg.pretrain:
        x_n, y_n = R.sample(source, n, noise=cfg.noise, seed=seed + 100 + n)
        W, b = R.pretrain_first_layer(x_n, y_n, m=cfg.m, seed=seed + 2)
        alignment = R.subspace_alignment(W, source.U)["fraction_in_span"]
        features_test = torch.relu(x_test @ W.T + b)
        for N, (x, y) in fine.items():
            features = torch.relu(x @ W.T + b)
            coefficients, ridge = R.loo_ridge(features @ features.T, y)
            prediction = features_test @ (features.T @ coefficients)
            rows.append({"seed": seed, "pretrain_n": n, "method": f"pretrained on n = {n}", "N": N,
                         "ridge": ridge, "fraction_in_span": alignment,
                         "test_loss": float((prediction - y_test).square().mean())})
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    for (method, N), chosen in grouped(rows, ("method", "N")).items():
        mean, std = mean_std([r["test_loss"] for r in chosen])
        out.append({"method": method, "N": N, "mean_loss": mean, "std_loss": std})
    return out


@register("transfer", "Damian-Lee-Soltanolkotabi: pretrain W on f*, fit the head on a new task, loss vs N")
def run(folder: RunFolder, *, seed: int, quick: bool, device: torch.device) -> dict:
    cfg = Config.quick() if quick else Config()
    started = time.perf_counter()
    rows = []
    for s in tqdm(range(cfg.seeds), desc="transfer", unit="seed"):
        rows.extend(one_run(cfg, seed + s))
    seconds = time.perf_counter() - started
    summary = summarize(rows)
    folder.write_csv("metrics.csv", rows)
    folder.write_csv("summary.csv", summary)
    figure = _figure(folder, summary, cfg)
    folder.config.update(asdict(cfg))
    folder.write_text("report.md", _report(cfg, rows, summary, figure, seconds))
    return {"seconds": round(seconds, 1),
            "mean_test_loss": {f"{e['method']}, N={e['N']}": round(e["mean_loss"], 4) for e in summary}}


def _figure(folder: RunFolder, summary: list[dict], cfg: Config) -> str:
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    methods = list(dict.fromkeys(e["method"] for e in summary))
    for i, method in enumerate(methods):
        entries = [e for e in summary if e["method"] == method]
        style = dict(color="black", ls="--") if method == BASELINE else dict(color=f"C{i}")
        ax.errorbar([e["N"] for e in entries], [e["mean_loss"] for e in entries],
                    yerr=[e["std_loss"] for e in entries], marker="o", capsize=3, label=method, **style)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("target-task samples N (head only)")
    ax.set_ylabel("test loss on the new task")
    ax.set_title(f"Transfer: He{cfg.p}(u.x)/sqrt({cfg.p}!) after pretraining, d = {cfg.d}")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    return folder.save_figure("loss_vs_N", fig)


def _report(cfg, rows, summary, figure, seconds) -> str:
    methods = list(dict.fromkeys(e["method"] for e in summary))
    table = []
    for method in methods:
        row = {"method": method}
        for e in summary:
            if e["method"] == method:
                row[f"N={e['N']}"] = f"{e['mean_loss']:.3f}"
        alignment = [r["fraction_in_span"] for r in rows if r["method"] == method and "fraction_in_span" in r]
        row["||W||^2 in span(u)"] = f"{np.mean(alignment):.3f}" if alignment else "-"
        table.append(row)
    d, p = cfg.d, cfg.p
    return "\n".join([
        "# Transfer learning (Damian, Lee & Soltanolkotabi 2022)", "",
        f"d = {d}, p = {p}: pretraining target He2(u.x)/2 + He{p}(u.x)/sqrt(2 {p}!) on n samples "
        f"(Algorithm 1's first step, width m = {cfg.m}); new task He{p}(u.x)/sqrt({p}!) on the same u, "
        f"head fitted on N samples (ridge by exact leave-one-out); label noise +-{cfg.noise}; "
        f"{cfg.seeds} seed(s); mean test loss against the noiseless target (zero predictor: 1).", "",
        markdown_table(table, list(table[0])), "",
        f"![loss vs N]({figure})", "",
        f"Theory (Theorem 3): with n >= d^2 = {d ** 2} pretraining samples the loss decays fast in N "
        f"from N = O(1); with n = d^0, d^1 the first layer is (nearly) random and fine-tuning acts like "
        f"a kernel method without prior knowledge (trivial loss until N ~ d^{p} = {d ** p}).", "",
        f"Time: {seconds:.0f} s.", ""])
