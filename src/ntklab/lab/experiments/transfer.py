"""`ntklab run transfer` -- Damian, Lee & Soltanolkotabi (2022), transfer learning
(Theorem 3 and the transfer experiment of the paper): p = 3.

Pretrain: Algorithm 1's first step on n samples of f*(x) = He_2(u.x)/2 + He_3(u.x)/sqrt(2 3!)
(W after one gradient step, fresh biases b).  Transfer: keep W, b and fit only the head a
on N samples of the new task He_3(u.x)/sqrt(3!) on the same direction u: ridge regression,
the ridge chosen by exact leave-one-out on a grid 1e-8 ... 1e4 (relative to the mean diagonal
of the Gram matrix: its top end is the zero predictor, so the selection can fall back to
predicting 0 when the N samples carry no usable signal).  Beside it the oracle ridge (the best
of the grid on the test set: a bound on what any ridge selection can reach, not a method).
Also: the loss against N for pretraining on n = 10 d^2 samples at several d (the claim that the
head's sample complexity does not depend on d).  Baseline: NTK kernel
regression on the N target samples alone (same leave-one-out ridge).  Test loss: MSE to
the noiseless unit-norm target on fresh samples (the zero predictor scores 1).
Theory: for n >= d^2 the head needs N ~ r^p = O(1) samples, independent of d; for n = d^0,
d^1 the features carry no information and fine-tuning behaves like a kernel method
(trivial loss until N ~ d^p).
"""
from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from tqdm.auto import tqdm

from ..claims import Claim, mean_se
from ..fits import power_law_slope
from ..report import RunFolder, claims_table, grouped, markdown_table, mean_std
from ..studies import representation as R
from . import register

BASELINE = "NTK on the N target samples"
HEAD_RIDGES = tuple(10.0 ** k for k in range(-8, 5))   # up to 1e4: the zero predictor is in reach


@dataclass(frozen=True)
class Config:
    """Settings of this experiment (the defaults are the full run)."""

    d: int = 10
    p: int = 3
    noise: float = 0.1
    m: int = 1000
    seeds: int = 10
    n_test: int = 4000
    pretrain: tuple[int, ...] = (1, 10, 100, 200, 400, 1000, 10000)   # d^0, d^1, d^2, 2 d^2, 4 d^2, 10 d^2, 100 d^2
    claim_pretrain: int = 1000   # the n (one of `pretrain`) at which few_samples is checked: 10 d^2
    finetune: tuple[int, ...] = (4, 8, 16, 32, 64, 128, 256, 512, 1024)
    dims: tuple[int, ...] = (8, 12, 16, 24)
    dims_finetune: tuple[int, ...] = (8, 16, 32, 64, 128)
    few: int = 32   # the N at which "few samples" is checked
    few_samples: Claim = Claim(
        "after pretraining on n = claim_pretrain samples (10 d^2 at d = 10) the head learns the new task from few "
        "samples: "
        "test loss at N = few",
        0.0, 0.5, "Damian, Lee & Soltanolkotabi 2022, Theorem 3 (N = O(r^p) samples, independent of d; the "
                  "tolerance: half the zero predictor's loss)")
    head_across_d: Claim = Claim(
        "the head's sample complexity does not grow with d: exponent of d of the loss at the largest N "
        "(pretrained on n = 10 d^2, every seed)", 0.0, 0.5,
        "Damian, Lee & Soltanolkotabi 2022, Theorem 3 (N independent of d; a kernel-like head would need "
        "N ~ d^p)")

    @classmethod
    def quick(cls) -> "Config":
        """Small settings for tests and previews (seconds)."""
        return cls(m=400, seeds=1, n_test=2000, pretrain=(1, 10, 100, 1000), finetune=(8, 32, 128),
                   dims=(8, 12), dims_finetune=(16, 64))


def fit_head(features: torch.Tensor, y: torch.Tensor, features_test: torch.Tensor,
             y_test: torch.Tensor) -> dict:
    """Ridge head by leave-one-out on HEAD_RIDGES, and the oracle ridge's test loss."""
    gram = features @ features.T
    coefficients, ridge = R.loo_ridge(gram, y, HEAD_RIDGES)
    loss = lambda c: float((features_test @ (features.T @ c) - y_test).square().mean())  # noqa: E731
    oracle = min(loss(R.loo_ridge(gram, y, (value,))[0]) for value in HEAD_RIDGES)
    return {"ridge": ridge, "test_loss": loss(coefficients), "oracle_test_loss": oracle}


def across_dimensions(cfg: Config, seed: int) -> list[dict]:
    """Pretrain on n = 10 d^2 samples, then the head's loss against N, for each d."""
    rows = []
    for d in cfg.dims:
        source = R.paper_target(d, cfg.p, seed=seed)
        target = R.transfer_target(source.U, cfg.p)
        x_test, y_test = R.sample(target, cfg.n_test, seed=seed + 1)
        x_n, y_n = R.sample(source, 10 * d * d, noise=cfg.noise, seed=seed + 100)
        W, b = R.pretrain_first_layer(x_n, y_n, m=cfg.m, seed=seed + 2)
        features_test = torch.relu(x_test @ W.T + b)
        for N in cfg.dims_finetune:
            x, y = R.sample(target, N, noise=cfg.noise, seed=seed + 10 + N)
            rows.append({"seed": seed, "d": d, "pretrain_n": 10 * d * d, "N": N,
                         **fit_head(torch.relu(x @ W.T + b), y, features_test, y_test)})
    return rows


def one_run(cfg: Config, seed: int) -> list[dict]:
    """One seed: the NTK baseline and each pretraining size, against the fine-tuning sizes N."""
    source = R.paper_target(cfg.d, cfg.p, seed=seed)
    target = R.transfer_target(source.U, cfg.p)
    x_test, y_test = R.sample(target, cfg.n_test, seed=seed + 1)
    fine = {N: R.sample(target, N, noise=cfg.noise, seed=seed + 10 + N) for N in cfg.finetune}
    rows = []
    ntk = R.ntk_architecture()
    for N, (x, y) in fine.items():
        coefficients, ridge = R.loo_ridge(ntk.kernel(x, get="ntk"), y, HEAD_RIDGES)
        prediction = ntk.kernel(x_test, x, get="ntk") @ coefficients
        rows.append({"seed": seed, "pretrain_n": 0, "method": BASELINE, "N": N, "ridge": ridge,
                     "test_loss": float((prediction - y_test).square().mean())})
    for n in cfg.pretrain:
        x_n, y_n = R.sample(source, n, noise=cfg.noise, seed=seed + 100 + n)
        W, b = R.pretrain_first_layer(x_n, y_n, m=cfg.m, seed=seed + 2)
        alignment = R.subspace_alignment(W, source.U)["fraction_in_span"]
        features_test = torch.relu(x_test @ W.T + b)
        for N, (x, y) in fine.items():
            rows.append({"seed": seed, "pretrain_n": n, "method": f"pretrained on n = {n}", "N": N,
                         "fraction_in_span": alignment,
                         **fit_head(torch.relu(x @ W.T + b), y, features_test, y_test)})
    return rows


def summarize(rows: list[dict], keys=("method", "N")) -> list[dict]:
    """Mean and sample standard deviation (`mean_std`) of the test loss per `keys`, and the oracle's mean."""
    out = []
    for values, chosen in grouped(rows, keys).items():
        mean, std = mean_std([r["test_loss"] for r in chosen])
        oracle = [r["oracle_test_loss"] for r in chosen if "oracle_test_loss" in r]
        out.append({**dict(zip(keys, values, strict=True)), "mean_loss": mean, "std_loss": std,
                    "mean_oracle_loss": float(np.mean(oracle)) if oracle else float("nan")})
    return out


@register("transfer", "Damian-Lee-Soltanolkotabi: pretrain W on f*, fit the head on a new task, loss vs N",
          config=Config)
def run(folder: RunFolder, cfg: Config, *, seed: int, device: torch.device) -> dict:
    """Pretraining sizes x fine-tuning sizes and the sweep over d, over the seeds; the report."""
    if cfg.claim_pretrain not in cfg.pretrain:
        raise ValueError(f"claim_pretrain={cfg.claim_pretrain} is not one of pretrain={list(cfg.pretrain)}: the "
                         "few-samples claim is checked at a measured pretraining size; add it to pretrain")
    rows, dims = [], []
    for s in tqdm(range(cfg.seeds), desc="transfer", unit="seed"):
        rows.extend(one_run(cfg, seed + s))
        dims.extend(across_dimensions(cfg, seed + s))
    summary = summarize(rows)
    folder.write_csv("metrics.csv", rows)
    folder.write_csv("summary.csv", summary)
    folder.write_csv("across_dimensions.csv", dims)
    by_dimension = summarize(dims, ("d", "N"))
    figure = _figure(folder, summary, by_dimension, cfg)
    folder.claims += _claims(cfg, rows, dims)
    folder.write_text("report.md", _report(cfg, rows, summary, by_dimension, figure, folder.claims))
    return {"mean_test_loss": {f"{e['method']}, N={e['N']}": round(e["mean_loss"], 4) for e in summary}}


def _figure(folder: RunFolder, summary: list[dict], by_dimension: list[dict], cfg: Config) -> str:
    fig, (ax, right) = plt.subplots(1, 2, figsize=(12, 4.4))
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
    ax.axhline(1.0, color="0.5", lw=0.8, label="zero predictor")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    for i, d in enumerate(cfg.dims):
        chosen = [e for e in by_dimension if e["d"] == d]
        right.errorbar([e["N"] for e in chosen], [e["mean_loss"] for e in chosen],
                       yerr=[e["std_loss"] for e in chosen], marker="o", capsize=3,
                       color=plt.cm.viridis(i / max(1, len(cfg.dims) - 1)), label=f"d = {d}")
    right.axhline(1.0, color="0.5", lw=0.8)
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("target-task samples N (head only)")
    right.set_ylabel("test loss on the new task")
    right.set_title("pretrained on n = 10 d^2: the head's N does not grow with d")
    right.legend(fontsize=7)
    right.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return folder.save_figure("loss_vs_N", fig)


def _claims(cfg: Config, rows: list[dict], dims: list[dict]) -> list[dict]:
    """The loss at N = few after pretraining on claim_pretrain samples (mean over seeds ± s.e.), and the
    exponent of d of the loss at the largest N across the dimensions (fit over every seed ± s.e.;
    nan without three points)."""
    best = cfg.claim_pretrain
    few = [r["test_loss"] for r in rows if r["pretrain_n"] == best and r["N"] == cfg.few]
    largest = [r for r in dims if r["N"] == max(cfg.dims_finetune)]
    try:
        slope = power_law_slope([r["d"] for r in largest], [r["test_loss"] for r in largest])
    except ValueError:
        slope = (float("nan"), float("nan"))
    return [cfg.few_samples.check(*(mean_se(few) if few else (float("nan"), float("nan"))),
                                  label=f"n = {best} = {best / cfg.d ** 2:g} d^2, N = {cfg.few}"),
            cfg.head_across_d.check(*slope, label=f"d = {', '.join(map(str, cfg.dims))}")]


def _report(cfg, rows, summary, by_dimension, figure, claims) -> str:
    methods = list(dict.fromkeys(e["method"] for e in summary))
    table = []
    for method in methods:
        row = {"method": method}
        for e in summary:
            if e["method"] == method:
                row[f"N={e['N']}"] = (f"{e['mean_loss']:.3f}" + ("" if np.isnan(e["mean_oracle_loss"])
                                                                  else f" ({e['mean_oracle_loss']:.3f})"))
        alignment = [r["fraction_in_span"] for r in rows if r["method"] == method and "fraction_in_span" in r]
        row["||W||^2 in span(u)"] = f"{np.mean(alignment):.3f}" if alignment else "-"
        table.append(row)
    d, p = cfg.d, cfg.p
    return "\n".join([
        "# Transfer learning (Damian, Lee & Soltanolkotabi 2022)", "",
        claims_table(claims), "",
        f"d = {d}, p = {p}: pretraining target He2(u.x)/2 + He{p}(u.x)/sqrt(2 {p}!) on n samples "
        f"(Algorithm 1's first step, width m = {cfg.m}); new task He{p}(u.x)/sqrt({p}!) on the same u, "
        f"head fitted on N samples (ridge by exact leave-one-out on 1e-8 ... 1e4 times the mean "
        f"diagonal; in parentheses the oracle ridge, the best of the grid on the test set); label "
        f"noise +-{cfg.noise}; {cfg.seeds} seed(s); mean test loss against the noiseless target "
        f"(zero predictor: 1).", "",
        markdown_table(table, list(table[0])), "",
        "Where even the oracle ridge scores about 1, the N samples do not determine the new task "
        "with these features (a cubic in u.x has 4 coefficients, and the head has m features, not "
        "4); where leave-one-out is above the oracle, the selection on N points is the limit.", "",
        "## The head's sample complexity across d", "",
        "Pretrained on n = 10 d^2 samples, mean test loss (oracle ridge in parentheses) against N:", "",
        markdown_table([{"d": d, **{f"N={e['N']}": f"{e['mean_loss']:.3f} ({e['mean_oracle_loss']:.3f})"
                                    for e in by_dimension if e["d"] == d}}
                        for d in cfg.dims], ["d", *[f"N={N}" for N in cfg.dims_finetune]]), "",
        f"![loss vs N]({figure})", "",
        f"Theory (Theorem 3): with n >= d^2 = {d ** 2} pretraining samples the loss decays fast in N "
        f"from N = O(1); with n = d^0, d^1 the first layer is (nearly) random and fine-tuning acts like "
        f"a kernel method without prior knowledge (trivial loss until N ~ d^{p} = {d ** p}).", ""])
