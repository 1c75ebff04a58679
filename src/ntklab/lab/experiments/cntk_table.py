"""`ntklab run cntk-table` -- lecture 22: "forget about NNs, compute the closed-form
NTK and perform kernel regression" (Arora et al. 2019, Table 1, CIFAR-10).

For depth L (= number of conv layers + 1, the paper's convention) the network is
    [Conv(C, 3x3, SAME, W_std = sqrt 2, b_std = 0), ReLU] x (L - 1), readout, Dense(10),
with readout `Flatten` (vanilla, "-V") or `GlobalAvgPool` ("-GAP"), NTK
parameterization.  Four columns:
  * CNTK-V, CNTK-GAP: kernel regression with the infinite-width NTK, exactly as in
    the paper's code: one-hot labels with 0.9 for the class and -0.1 elsewhere,
    f(x) = K(x, X) K(X, X)^-1 Y with no ridge, arg-max; CNTK-GAP with the paper's
    "fix" option (first and last layers not trained: `trainable=False`).
  * CNN-V, CNN-GAP: the same architectures at finite width, all layers trained by
    mini-batch SGD on ||f(X) - Y||^2 / (2 |Y|) with the same shifted one-hot targets
    (constant learning rate |Y| / lambda_max, i.e. function-space step 1/lambda_max of
    the empirical NTK of the training set at initialization; no batch norm, no augmentation, no weight decay).  The
    paper's CNN training hyperparameters are not in ntklab's sources; this protocol
    is ours and is stated in the report.
Kernels go through the tiled engine (`ntklab.kernels.compute_kernel`) into zarr
stores in the run folder's `kernels/` (`kernel_stores`): a killed run's rerun resumes
them, and `--scheduler tcp://...` spreads the tiles over a Dask cluster.  Default data: scikit-learn's digits as
1x8x8 images (no download); `--data cifar10:DIR` reads the CIFAR-10 binary batches.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import matplotlib.pyplot as plt
import torch

from ..data import image_task
from ...kernels.engine import check_scheduler
from ..claims import Claim, accuracy_difference, other_data
from ..report import RunFolder, claims_table, markdown_table
from ..studies import cntk as C
from . import register

DEPTHS = (3, 4, 6, 11, 21)
COLUMNS = ("CNN-V", "CNTK-V", "CNN-GAP", "CNTK-GAP")
PAPER = {  # lecture 22's table (Arora et al. 2019, Table 1), CIFAR-10 test accuracy in %
    3: (61.97, 64.67, 57.96, 70.47), 4: (62.12, 65.52, 80.58, 75.93),
    6: (64.03, 66.03, 80.97, 76.73), 11: (70.97, 65.90, 75.45, 77.43),
    21: (80.56, 64.09, 81.23, 77.08)}


@dataclass(frozen=True)
class Config:
    """Settings of this experiment (the defaults are the full run)."""

    depths: tuple[int, ...] = DEPTHS
    train_size: int = 240
    test_size: int = 160
    channels: int = 64
    epochs: int = 100
    batch_size: int = 40
    tile_size: int = 64
    solver: str = "cholesky"   # "cg": conjugate gradients streaming the train store, the test store streamed too
    cg_diag_reg: float = 1e-6  # solver="cg": ridge relative to the mean diagonal (the paper's 0 leaves CG stalling)
    prediction_data: str = "cifar10"   # the data the claims' predictions are for (the paper's)
    cntk_gap_over_v: Claim = Claim(
        "CNTK-GAP - CNTK-V test accuracy, points (mean over the depths run)", 10.29, 5.0,
        "Arora et al. 2019, Table 1 (CIFAR-10): the mean margin over depths 3-21")
    cnn_gap_over_v: Claim = Claim("CNN-GAP - CNN-V test accuracy, points (mean over the depths run)", 7.31, 5.0,
                                  "Arora et al. 2019, Table 1 (CIFAR-10): the mean margin over depths 3-21")
    cntk_v_over_cnn_v: Claim = Claim("CNTK-V - CNN-V test accuracy, points (mean over the depths run)", -2.69, 5.0,
                                     "Arora et al. 2019, Table 1 (CIFAR-10): the mean margin over depths 3-21")
    cntk_gap_over_cnn_gap: Claim = Claim(
        "CNTK-GAP - CNN-GAP test accuracy, points (mean over the depths run)", 0.29, 5.0,
        "Arora et al. 2019, Table 1 (CIFAR-10): the mean margin over depths 3-21")

    @classmethod
    def quick(cls) -> "Config":
        """Small settings for tests and previews (seconds)."""
        return cls(depths=(3, 4), train_size=60, test_size=40, channels=16, epochs=200, batch_size=20,
                   tile_size=32)


def cell(task, column: str, depth: int, cfg: Config, stores, *, seed: int, scheduler, workers, device):
    """One cell of the table: (test accuracy, details) of `column` at `depth` (`studies.cntk`)."""
    readout = "GAP" if column.endswith("GAP") else "V"
    kernel = column.startswith("CNTK")
    arch = C.plain(depth, readout, channels=cfg.channels, n_classes=task.n_classes, fix=kernel and readout == "GAP")
    print(f"[cntk-table] depth {depth} {column}", file=sys.stderr, flush=True)
    if kernel:
        return C.cntk_accuracy(task, arch, stores, f"{task.name}-seed{seed}-{column}-depth{depth}",
                               tile_size=cfg.tile_size, scheduler=scheduler, workers=workers, device=device,
                               solver=cfg.solver, cg_diag_reg=cfg.cg_diag_reg)
    return C.cnn_accuracy(task, arch, epochs=cfg.epochs, batch_size=cfg.batch_size, seed=seed, device=device)


ORDERINGS = [("CNTK-GAP", "CNTK-V"), ("CNN-GAP", "CNN-V"), ("CNTK-V", "CNN-V"),
             ("CNTK-GAP", "CNN-GAP")]
CLAIMS = dict(zip(ORDERINGS, ("cntk_gap_over_v", "cnn_gap_over_v", "cntk_v_over_cnn_v", "cntk_gap_over_cnn_gap"),
                  strict=True))
"""The Config field holding the claim on each ordering's margin."""


def claims(cfg: Config, table: dict[int, dict[str, float]], task) -> list[dict]:
    """Each ordering's margin a - b averaged over the depths run, with the binomial standard
    error at the observed accuracies; untestable on data other than `cfg.prediction_data`."""
    out = []
    for (a, b), field in CLAIMS.items():
        margins = [accuracy_difference(table[depth][a], table[depth][b], len(task.y_test)) for depth in table]
        mean = sum(m for m, _ in margins) / len(margins)
        se = math.sqrt(sum(e * e for _, e in margins)) / len(margins)
        out.append(getattr(cfg, field).check(mean, se, untestable=other_data(cfg.prediction_data, task.name)))
    return out


def orderings(table: dict[int, dict[str, float]]) -> list[dict]:
    """For each pair (a, b) and depth: does a > b hold in the paper and here?"""
    rows = []
    for a, b in ORDERINGS:
        for depth in sorted(table):
            paper = PAPER[depth]
            rows.append({"ordering": f"{a} > {b}", "depth": depth,
                         "paper": "yes" if paper[COLUMNS.index(a)] > paper[COLUMNS.index(b)] else "no",
                         "here": "yes" if table[depth][a] > table[depth][b] else "no",
                         "margin here (points)": round(100 * (table[depth][a] - table[depth][b]), 2)})
    return rows


@register("cntk-table", "Arora et al. 2019 / lecture 22: CNN vs CNTK, vanilla and GAP, depths 3-21",
          config=Config, devices=("cpu", "cuda"))
def run(folder: RunFolder, cfg: Config, *, seed: int, device: torch.device | str, data: str = "digits",
        train_size: int | None = None, test_size: int | None = None, scheduler: str | None = None,
        workers: int | None = None) -> dict:
    """Every (depth, column) cell, the orderings against the paper's, the report."""
    check_scheduler(scheduler, workers)   # before any work
    if cfg.solver not in ("cholesky", "cg"):
        raise ValueError(f"solver must be 'cholesky' or 'cg', got {cfg.solver!r}")
    task = image_task(data, train_size, test_size, seed=seed, defaults=(cfg.train_size, cfg.test_size))
    stores = C.kernel_stores(folder, task, cfg)
    metrics: list[dict] = []
    table: dict[int, dict[str, float]] = {}   # depth -> column -> test accuracy
    for depth in cfg.depths:
        for column in COLUMNS:
            acc, details = cell(task, column, depth, cfg, stores, seed=seed, scheduler=scheduler,
                                workers=workers, device=device)
            table.setdefault(depth, {})[column] = acc
            metrics.append({"depth": depth, "column": column, "test_accuracy": acc,
                            "paper_cifar10_accuracy": PAPER[depth][COLUMNS.index(column)] / 100, **details})
    rows = [{"depth": d, **{c: round(100 * table[d][c], 2) for c in COLUMNS},
             **{f"paper {c}": PAPER[d][i] for i, c in enumerate(COLUMNS)}} for d in table]
    folder.write_csv("metrics.csv", metrics)
    folder.write_csv("table.csv", rows)
    folder.write_text("table.md", markdown_table(rows, ["depth", *COLUMNS]) + "\n")
    figure = _figure(folder, table, task.name)
    folder.config.update({"data": data, "task": task.description, "train_size": len(task.y_train),
                          "test_size": len(task.y_test), "scheduler": scheduler or "local",
                          "kernel_stores": RunFolder.STORES})
    folder.claims += claims(cfg, table, task)
    folder.write_text("report.md", _report(task, cfg, rows, orderings(table), metrics, figure, folder.claims))
    return {"test_accuracy_percent": {d: {c: round(100 * table[d][c], 2) for c in COLUMNS} for d in table},
            "below_chance": below_chance(table, task.n_classes)}


def below_chance(table: dict[int, dict[str, float]], n_classes: int) -> list[str]:
    """The cells whose test accuracy is below chance (1 / classes): a model that did not
    learn, flagged in the report rather than shown as a result."""
    return [f"{column} depth {depth}" for depth, row in table.items() for column, accuracy in row.items()
            if accuracy < 1 / n_classes]


def _figure(folder: RunFolder, table: dict, data_name: str) -> str:
    fig, ax = plt.subplots(figsize=(6.4, 5.0))
    depths = sorted(table)
    for i, column in enumerate(COLUMNS):
        color = f"C{i}"
        ax.plot(depths, [100 * table[d][column] for d in depths], "o-", color=color,
                label=f"{column} ({data_name})")
        ax.plot(list(DEPTHS), [PAPER[d][i] for d in DEPTHS], "x--", color=color, alpha=0.5,
                label=f"{column} (paper, CIFAR-10)")
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(list(DEPTHS), [str(d) for d in DEPTHS])
    ax.set_xlabel("depth (conv layers + 1)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("CNN vs CNTK, vanilla and global average pooling")
    ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    ax.grid(alpha=0.3)
    return folder.save_figure("accuracy_vs_depth", fig)


def _report(task, cfg, rows, order_rows, metrics, figure, claims) -> str:
    """report.md: the claims (orderings), the table beside the paper's, the protocol."""
    stderr = 100 * math.sqrt(0.25 / len(task.y_test))
    held = [r for r in order_rows if r["paper"] == r["here"]]
    train_rows = [{"depth": depth, **{m["column"]: round(100 * m["train_accuracy"], 2)
                                      for m in metrics if m["depth"] == depth}}
                  for depth in dict.fromkeys(m["depth"] for m in metrics)]
    kernel_time = sum(m.get("kernel_seconds", 0.0) for m in metrics)
    cnn_time = sum(m.get("cnn_seconds", 0.0) for m in metrics)
    failed = below_chance({r["depth"]: {c: r[c] / 100 for c in COLUMNS} for r in rows}, task.n_classes)
    lines = [
        "# CNN vs CNTK (Arora et al. 2019; lecture 22)", "",
        claims_table(claims), "",
        f"Data: {task.description}. Test accuracy in %, one run (seed); the claims' standard errors are "
        f"binomial at the observed accuracies (at most ±{stderr:.1f} points per accuracy, at 50%).", "",
        markdown_table(rows, ["depth", *COLUMNS]), "",
        *([f"**Warning: below chance ({100 / task.n_classes:.0f}%), i.e. not learned under this "
           f"protocol: {', '.join(failed)}.** Do not read these cells as results.", ""] if failed else []),
        "The paper's numbers (CIFAR-10, 50000 training images; the table of lecture 22):", "",
        markdown_table(rows, ["depth", *[f"paper {c}" for c in COLUMNS]]), "",
        f"![accuracy vs depth]({figure})", "",
        "## Protocol", "",
        f"- Architectures: depth L = conv layers + 1; [Conv({cfg.channels} channels for the CNNs, "
        "3x3, SAME, W_std = sqrt 2, b_std = 0) + ReLU] x (L-1), then Flatten (V) or GlobalAvgPool "
        "(GAP), then Dense(10); NTK parameterization.",
        "- CNTK columns: infinite-width NTK (ntklab's Conv/Flatten/GlobalAvgPool recursions, checked "
        "against neural-tangents), kernel regression on one-hot labels 0.9 / -0.1 with no ridge "
        "(f = K(x, X) K(X, X)^-1 Y), arg-max, as in the paper's code. CNTK-GAP uses the paper's "
        "\"fix\" option: first and last layers not trained (their parameters are out of the NTK).",
        f"- CNN columns: the same architectures at finite width, all layers trained by mini-batch "
        f"SGD (batch {cfg.batch_size}, {cfg.epochs} epochs) on ntklab's loss ||f - y||^2 / (2 |y|) "
        f"with learning rate |y| / lambda_max (the function-space step 1/lambda_max; lambda_max of "
        f"the training set's empirical NTK at initialization, by power iteration) "
        f"with the same shifted one-hot targets; no batch norm, augmentation or weight decay; "
        f"float32; the accuracy after the last step (no early stopping on the test set). "
        f"**Not the paper's CNN protocol**: its training hyperparameters are not in ntklab's "
        f"sources, so this one is ours.",
        "- Preprocessing: pixels scaled to [0, 1], then per-channel standardisation with the "
        "training set's mean and std (the paper's; no ZCA).",
        f"- Kernels through the tiled engine: zarr stores in `{RunFolder.STORES}/` inside this "
        f"run folder (tile {cfg.tile_size}); a killed run resumes them when the same command "
        f"is run again.",
        f"- Time: {kernel_time:.0f} s kernels, {cnn_time:.0f} s CNN training.",
        "",
        "## Which of the paper's orderings hold here", "",
        f"{len(held)} of {len(order_rows)} (ordering, depth) cells agree with the paper. "
        "Margins within about two standard errors are not resolved by this test set.", "",
        markdown_table(order_rows, ["ordering", "depth", "paper", "here", "margin here (points)"]),
        "",
        "Training accuracy (%) at the end (kernel regression interpolates, so the CNTK columns "
        "are 100 unless a ridge was needed; a CNN below 100 has not fitted its training set):", "",
        markdown_table(train_rows, ["depth", *COLUMNS]), "",
        "Details per cell (kernel regression ridge, CNN step size and final loss, times) are in "
        "`metrics.csv`.", ""]
    return "\n".join(lines)
