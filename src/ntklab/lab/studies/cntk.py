"""Convolutional kernels against the networks they come from (lecture 22; Arora et al. 2019,
"On exact computation with an infinitely wide neural net"; Novak et al. 2020; Shankar et al.
2020, "Neural kernels without tangents").

Architectures (NTK parameterization, W_std = sqrt 2, b_std = 0; depth L = conv layers + 1):
  * `plain`: [Conv 3x3 SAME, ReLU] x (L - 1), Flatten ("V") or GlobalAvgPool ("GAP"), Dense;
    `fix` keeps the first and last layers out of the NTK (the paper's "fix" option for GAP);
  * `resnet`: Conv, residual blocks [ReLU, Conv, ReLU, Conv] + identity in two stages with
    AvgPool 2x2 stride 2 between, ReLU, GlobalAvgPool, Dense;
  * `myrtle`: [Conv, ReLU] stages each followed by AvgPool 2x2 stride 2 until the image is at
    most 2x2 (L - 1 conv layers spread over the stages), GlobalAvgPool, Dense.
`cntk_accuracy` does kernel regression with an architecture's infinite-width NTK exactly as
the paper's code (one-hot targets 0.9 / -0.1, f = K(x, X) K(X, X)^-1 Y with no ridge,
arg-max), the kernels through the tiled engine (resumable zarr stores); `cnn_accuracy` trains
the finite network by mini-batch SGD in ntklab's convention (`ntklab.conventions`:
L = ||f - y||^2 / (2 |Y|)) at the learning rate |Y| / lambda_max, i.e. the function-space step
1 / lambda_max of the empirical NTK of the training set at initialization.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from pathlib import Path

import torch

import ntklab as nk
from ..._core.validation import resolve_device
from ..data import ImageTask
from ..report import RunFolder
from ..spectrum import inverse_largest_eigenvalue

LABEL_ON, LABEL_OFF = 0.9, -0.1
"""Arora et al.'s shifted one-hot targets."""
W_STD = math.sqrt(2.0)


def plain(depth: int, readout: str, *, channels: int, n_classes: int, fix: bool = False) -> nk.Serial:
    """`depth - 1` SAME 3x3 conv + ReLU layers, then Flatten ("V") or GlobalAvgPool
    ("GAP") and a Dense readout; `fix` keeps the first and last layers out of the NTK."""
    if depth < 2:
        raise ValueError(f"depth must be >= 2 (conv layers + 1), got {depth}")
    layers = []
    for index in range(depth - 1):
        layers += [nk.Conv(channels, (3, 3), padding="SAME", W_std=W_STD, b_std=0.0,
                           trainable=not (fix and index == 0)), nk.Relu()]
    pool = nk.Flatten() if readout == "V" else nk.GlobalAvgPool()
    return nk.serial(*layers, pool, nk.Dense(n_classes, W_std=1.0, b_std=0.0, trainable=not fix))


def _conv() -> nk.Conv:
    return nk.Conv(16, (3, 3), padding="SAME", W_std=W_STD, b_std=0.0)


def resnet(depth: int, n_classes: int) -> nk.Serial:
    """Conv, max(2, (depth - 1) // 2) residual blocks in two stages with a stride-2 AvgPool
    between, ReLU, GAP, Dense."""
    blocks = max(2, (depth - 1) // 2)

    def block():
        return nk.serial(nk.FanOut(2), nk.parallel(nk.serial(nk.Relu(), _conv(), nk.Relu(), _conv()),
                                                   nk.Identity()), nk.FanInSum())
    first = blocks // 2
    return nk.serial(_conv(), *[block() for _ in range(first)], nk.AvgPool((2, 2), strides=(2, 2)),
                     *[block() for _ in range(blocks - first)], nk.Relu(), nk.GlobalAvgPool(),
                     nk.Dense(n_classes, W_std=1.0, b_std=0.0))


def myrtle(depth: int, image_size: int, n_classes: int) -> nk.Serial:
    """[Conv, ReLU] x k then AvgPool 2x2 / 2, stage after stage until the image is at most 2x2,
    the L - 1 conv layers spread evenly over the stages; GAP, Dense."""
    stages = max(1, int(math.log2(image_size)) - 1)
    per_stage = [(depth - 1) // stages + (i < (depth - 1) % stages) for i in range(stages)]
    layers: list[nk.Layer] = []
    for count in per_stage:
        for _ in range(max(1, count)):
            layers += [_conv(), nk.Relu()]
        layers.append(nk.AvgPool((2, 2), strides=(2, 2)))
    return nk.serial(*layers, nk.GlobalAvgPool(), nk.Dense(n_classes, W_std=1.0, b_std=0.0))


def one_hot(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """The shifted one-hot targets [N, classes]: LABEL_ON for the class, LABEL_OFF elsewhere."""
    y = torch.full((len(labels), n_classes), LABEL_OFF, dtype=torch.float64)
    y[torch.arange(len(labels)), labels] = LABEL_ON
    return y


def accuracy(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """The fraction of arg-max predictions equal to the labels."""
    return float((scores.argmax(1).cpu() == labels).double().mean())


def kernel_stores(folder: RunFolder, task: ImageTask, cfg) -> Path:
    """The folder of the run's kernel stores, `kernels/` inside the run folder: the stores of
    an interrupted run (or, with --overwrite, of the replaced run) are resumed only when
    they were made from the same images (SHA-256) and settings `cfg` (a dataclass), else it
    starts empty (see `RunFolder.stores`), so a changed configuration never meets a stale store."""
    digest = hashlib.sha256()
    for images in (task.x_train, task.x_test):
        digest.update(str((images.dtype, tuple(images.shape))).encode())
        digest.update(images.contiguous().cpu().numpy().tobytes())
    return folder.stores({"images_sha256": digest.hexdigest(), **dataclasses.asdict(cfg)})


def cntk_accuracy(task: ImageTask, arch: nk.Serial, stores: Path, name: str, *, tile_size: int,
                  scheduler: str | None, workers: int | None, device, solver: str = "cholesky",
                  cg_diag_reg: float = 1e-6) -> tuple[float, dict]:
    """Test accuracy of kernel regression with the NTK of `arch` (kernels through the tiled
    engine into `stores/NAME-train.zarr` and `-test.zarr`), and its details: the kernels'
    seconds, the ridge, training accuracy.  `solver="cholesky"`: the train kernel loaded and factorized
    with ridge 0 (the paper's), or 1e-10 when K(X, X) is numerically singular.  `solver="cg"`: neither
    kernel is ever loaded: conjugate gradients with products streaming the train store (ridge
    `cg_diag_reg`, randomized Nystrom preconditioner of rank 100, relative residual 1e-8), predictions
    streaming the test store; the details add the iterations and the residual."""
    start = time.perf_counter()
    common = dict(get="ntk", tile_size=tile_size, scheduler=scheduler, workers=workers, device=device,
                  progress=None)
    k_train = nk.kernels.compute_kernel(arch, task.x_train, store=stores / f"{name}-train.zarr", **common)
    k_test = nk.kernels.compute_kernel(arch, task.x_test, task.x_train, store=stores / f"{name}-test.zarr",
                                       **common)
    seconds = time.perf_counter() - start
    y = one_hot(task.y_train, task.n_classes)
    if solver == "cg":
        predicted, fitted, result = cg_predictions(k_train, k_test, y, diag_reg=cg_diag_reg)
        return accuracy(predicted, task.y_test), {
            "kernel_seconds": seconds, "diag_reg": cg_diag_reg, "train_accuracy": accuracy(fitted, task.y_train),
            "cg_iterations": result.iterations, "cg_residual": float(result.relative_residual.max())}
    k_tt, k_st = (torch.from_numpy(s.load("ntk")) for s in (k_train, k_test))
    ridge = 0.0
    try:
        alpha = nk.predict.solve(k_tt, y, diag_reg=ridge)
    except ValueError:  # numerically singular: the smallest ridge that factorizes
        ridge = 1e-10
        alpha = nk.predict.solve(k_tt, y, diag_reg=ridge)
    return accuracy(k_st @ alpha, task.y_test), {"kernel_seconds": seconds, "diag_reg": ridge,
                                                 "train_accuracy": accuracy(k_tt @ alpha, task.y_train)}


def cg_predictions(k_train: nk.kernels.KernelStore, k_test: nk.kernels.KernelStore, y: torch.Tensor, *,
                   diag_reg: float, rtol: float = 1e-8):
    """(K(test, X) alpha, K(X, X) alpha, the CG result) with alpha = (K + diag_reg mean(diag K) I)^-1 y by
    conjugate gradients streaming the train store (randomized Nystrom preconditioner of rank 100); the test
    store streamed too: neither matrix is loaded."""
    with nk.kernels.StoredKernel(k_train, "ntk") as operator:
        result = nk.predict.conjugate_gradients(operator, y, diag_reg=diag_reg, rank=min(100, len(y)), rtol=rtol)
        fitted = operator.matmul(result.solution)
    return _streamed_product(k_test, result.solution), fitted, result


def _streamed_product(store: nk.kernels.KernelStore, alpha: torch.Tensor) -> torch.Tensor:
    """K(test, train) alpha, one tile of the (rectangular) test store at a time."""
    out = torch.zeros(store.shape[0], alpha.shape[1], dtype=alpha.dtype)
    for rows, cols, values in store.blocks("ntk"):
        out[rows] += torch.from_numpy(values).to(alpha.dtype) @ alpha[cols]
    return out


def cnn_accuracy(task: ImageTask, arch: nk.Serial, *, epochs: int, batch_size: int, seed: int,
                 device) -> tuple[float, dict]:
    """Train the finite network of `arch` (float32) by mini-batch SGD on the shifted one-hot
    targets (module docstring); its test accuracy after the last step, and details."""
    device = resolve_device(device)
    start = time.perf_counter()
    model = arch.module(tuple(task.x_train.shape[1:]), seed=seed, dtype=torch.float32, device=device)
    x_train, x_test = task.x_train.float().to(device), task.x_test.float().to(device)
    y_train = one_hot(task.y_train, task.n_classes).float().to(device)
    learning_rate = y_train.numel() * inverse_largest_eigenvalue(model, x_train)
    steps = epochs * math.ceil(len(x_train) / batch_size)
    history = nk.train(model, x_train, y_train, steps=steps, learning_rate=learning_rate, batch_size=batch_size,
                       x_test=x_test, y_test=one_hot(task.y_test, task.n_classes).float().to(device), record=2,
                       track_kernel=False, linearized=False, seed=seed, progress=False)
    last = history.rows[-1]
    return 1.0 - last["test_error"], {"train_accuracy": 1.0 - last["train_error"],
                                      "learning_rate": learning_rate, "steps": steps,
                                      "final_train_loss": last["train_loss"],
                                      "cnn_seconds": time.perf_counter() - start}
