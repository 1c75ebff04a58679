"""`ntklab run resnet-kernels` -- kernels of the architectures people actually train, beside
the plain CNTKs of Arora et al. (2019): a residual CNTK with global average pooling (a
WideResNet-style network, Novak et al. 2020's flagship example) and a Myrtle-style CNTK with
local average pooling (Shankar et al. 2020, "Neural kernels without tangents").

Columns (NTK parameterization, W_std = sqrt 2, b_std = 0, C channels irrelevant at infinite
width; kernel regression exactly as in `cntk-table`: one-hot targets 0.9 / -0.1, no ridge,
arg-max), at each depth L (conv layers + 1 of the plain CNTKs):
  * CNTK-V, CNTK-GAP: cntk-table's columns ([Conv 3x3 SAME, ReLU] x (L-1), Flatten or GAP,
    Dense; GAP with the paper's "fix");
  * ResNet-GAP: Conv, then residual blocks [ReLU, Conv, ReLU, Conv] + identity
    (`FanOut(2)`, `parallel(..., Identity())`, `FanInSum()`), split in two stages with
    AvgPool 2x2 stride 2 between, ReLU, GlobalAvgPool, Dense; (L-1)/2 blocks in all (at least 2);
  * Myrtle: [Conv, ReLU] stages each followed by AvgPool 2x2 stride 2 until the image is 2x2
    or smaller (L-1 conv layers spread over the stages), GlobalAvgPool, Dense.
Each architecture's NTK goes through the tiled engine (zarr stores, resumable). The default data
are the digits at random positions of a 12x12 canvas with pixel noise (`--data digits-shifted`): on
the centred 8x8 digits every column scores about 97 % and nothing can be told apart; `--data digits`
gives those, `--data cifar10:DIR` reads CIFAR-10 as `cntk-table` does.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import matplotlib.pyplot as plt
import torch

import ntklab as nk
from ..data import ImageTask, image_task
from ...kernels.engine import check_scheduler
from ..claims import Claim, accuracy_difference, other_data
from ..report import RunFolder, claims_table, markdown_table
from ..studies import cntk as C
from . import register

COLUMNS = ("CNTK-V", "CNTK-GAP", "ResNet-GAP", "Myrtle")


@dataclass(frozen=True)
class Config:
    """Settings of this experiment (the defaults are the full run)."""

    depths: tuple[int, ...] = (3, 5)       # depth 9 on 12x12 canvases: about an hour on 2 cores
    train_size: int = 200
    test_size: int = 120
    tile_size: int = 64
    prediction_data: str = "cifar10"   # the data the claims' predictions are for (the sources')
    local_pooling_gain: Claim = Claim(
        "Myrtle (local pooling) - CNTK-V test accuracy, points", 20.0, 10.0,
        "Shankar et al. 2020 (Myrtle kernels about 86-90% on CIFAR-10) against Arora et al. 2019 "
        "(CNTK-V 64-66%); the tolerance covers subsets and depths")
    gap_gain: Claim = Claim("CNTK-GAP - CNTK-V test accuracy, points", 10.29, 5.0,
                            "Arora et al. 2019, Table 1 (CIFAR-10): the mean margin over depths 3-21")

    @classmethod
    def quick(cls) -> "Config":
        """Small settings for tests and previews (seconds)."""
        return cls(depths=(5,), train_size=40, test_size=30, tile_size=32)


def architectures(depth: int, task: ImageTask) -> dict[str, nk.Serial]:
    """The four columns' architectures at `depth` for the task's image size and classes."""
    n_classes, size = task.n_classes, task.x_train.shape[-1]
    return {"CNTK-V": C.plain(depth, "V", channels=16, n_classes=n_classes),
            "CNTK-GAP": C.plain(depth, "GAP", channels=16, n_classes=n_classes, fix=True),
            "ResNet-GAP": C.resnet(depth, n_classes), "Myrtle": C.myrtle(depth, size, n_classes)}


@register("resnet-kernels", "Residual CNTK-GAP and Myrtle-style CNTK (local AvgPool) beside the plain "
          "CNTK-V / CNTK-GAP", config=Config, devices=("cpu", "cuda"))
def run(folder: RunFolder, cfg: Config, *, seed: int, device: torch.device | str, data: str = "digits-shifted",
        train_size: int | None = None, test_size: int | None = None, scheduler: str | None = None,
        workers: int | None = None) -> dict:
    """Kernel regression with each column's NTK at each depth; the table, the figure, the report."""
    check_scheduler(scheduler, workers)
    task = image_task(data, train_size, test_size, seed=seed, defaults=(cfg.train_size, cfg.test_size))
    stores = C.kernel_stores(folder, task, cfg)
    metrics: list[dict] = []
    table: dict[int, dict[str, float]] = {}   # depth -> column -> test accuracy
    for depth in cfg.depths:
        for column, net in architectures(depth, task).items():
            print(f"[resnet-kernels] depth {depth} {column}", file=sys.stderr, flush=True)
            acc, details = C.cntk_accuracy(task, net, stores, f"{task.name}-seed{seed}-{column}-depth{depth}",
                                           tile_size=cfg.tile_size, scheduler=scheduler, workers=workers,
                                           device=device)
            table.setdefault(depth, {})[column] = acc
            metrics.append({"depth": depth, "column": column, "test_accuracy": acc,
                            "architecture": repr(net), **details})
    rows = [{"depth": d, **{c: round(100 * table[d][c], 2) for c in COLUMNS}} for d in table]
    folder.write_csv("metrics.csv", metrics)
    folder.write_csv("table.csv", rows)
    folder.write_text("table.md", markdown_table(rows, ["depth", *COLUMNS]) + "\n")
    figure = _figure(folder, table, task.name, len(task.y_test))
    folder.config.update({"data": data, "task": task.description, "train_size": len(task.y_train),
                          "test_size": len(task.y_test), "kernel_stores": RunFolder.STORES})
    reason = other_data(cfg.prediction_data, task.name)
    for depth, row in table.items():
        for claim, column in ((cfg.local_pooling_gain, "Myrtle"), (cfg.gap_gain, "CNTK-GAP")):
            folder.claims.append(claim.check(*accuracy_difference(row[column], row["CNTK-V"], len(task.y_test)),
                                             label=f"depth {depth}", untestable=reason))
    folder.write_text("report.md", _report(task, cfg, rows, metrics, figure, folder.claims))
    return {"test_accuracy_percent": {d: {c: round(100 * table[d][c], 2) for c in COLUMNS} for d in table}}


def _figure(folder: RunFolder, table: dict, data_name: str, count: int) -> str:
    """Test accuracy per column and depth with binomial standard errors at the observed accuracy."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    depths = sorted(table)
    offset = 0.6 / len(COLUMNS)
    for i, column in enumerate(COLUMNS):
        accuracy = [table[d][column] for d in depths]
        ax.errorbar([j + (i - (len(COLUMNS) - 1) / 2) * offset for j in range(len(depths))],
                    [100 * a for a in accuracy], yerr=[100 * math.sqrt(a * (1 - a) / count) for a in accuracy],
                    fmt="o", capsize=3, label=column, color=f"C{i}")
    ax.set_xticks(range(len(depths)), [f"depth {d}" for d in depths])
    ax.set_xlim(-0.5, len(depths) - 0.5)
    ax.set_ylabel(f"test accuracy (%), {data_name}")
    ax.set_xlabel("network depth (conv layers + 1)")
    ax.set_title(f"NTK regression, four architectures ({count} test images, ±1 binomial s.e.)", fontsize=10)
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3, axis="y")
    return folder.save_figure("accuracy", fig)


def _report(task, cfg, rows, metrics, figure, claims) -> str:
    """report.md: the claims, the table, the architectures and the kernels' cost."""
    stderr = 100 * math.sqrt(0.25 / len(task.y_test))
    stores = f"{RunFolder.STORES}/ inside this run folder"
    times = [{"depth": d, **{m["column"]: round(m["kernel_seconds"], 1) for m in metrics if m["depth"] == d}}
             for d in cfg.depths]
    return "\n".join([
        "# Residual and local-pooling CNTKs beside the plain ones", "",
        claims_table(claims), "",
        f"Data: {task.description}. Test accuracy in %, kernel regression with each architecture's "
        f"infinite-width NTK (one-hot 0.9 / -0.1 targets, no ridge, arg-max, as in cntk-table); "
        f"the claims' standard errors are binomial at the observed accuracies (at most ±{stderr:.1f} points "
        "per accuracy, at 50%). Near 100% accuracy the architectures cannot be separated on this task.", "",
        markdown_table(rows, ["depth", *COLUMNS]), "",
        f"![accuracy]({figure})", "",
        "## Architectures", "",
        "- CNTK-V, CNTK-GAP: cntk-table's ([Conv 3x3 SAME, W_std sqrt 2, b_std 0, ReLU] x (L-1), "
        "Flatten or GlobalAvgPool, Dense; GAP with first and last layers fixed).",
        "- ResNet-GAP: Conv, residual blocks [ReLU, Conv, ReLU, Conv] + identity in two stages with "
        "AvgPool 2x2 stride 2 between, ReLU, GlobalAvgPool, Dense; max(2, (L-1)//2) blocks.",
        "- Myrtle: [Conv, ReLU] stages each followed by AvgPool 2x2 stride 2 until the image is at "
        "most 2x2 (L-1 conv layers spread over the stages), GlobalAvgPool, Dense.",
        "- The exact architecture of every cell is in `metrics.csv` (`architecture`, the --arch "
        "grammar: `ntklab kernel --arch` computes it).", "",
        "## Cost", "",
        f"Kernel seconds per cell (train and test kernels, tiled engine, stores in `{stores}`, "
        f"tile {cfg.tile_size}):", "",
        markdown_table(times, ["depth", *COLUMNS]), ""])
