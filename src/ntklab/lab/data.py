"""Data: synthetic regression tasks and loaders for user arrays (.npy, .npz, .csv).

Everything is generated from an explicit `seed` (torch.Generator) so that runs
are reproducible."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._core.validation import DEFAULT_DTYPE, as_matrix, positive, positive_int


@dataclass
class RegressionTask:
    """A regression task: training and test inputs and targets, with a name and a description."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    description: str


def target_1d(x: torch.Tensor) -> torch.Tensor:
    """f*(x) = sin(2x) + 0.3 x."""
    return torch.sin(2 * x[:, 0]) + 0.3 * x[:, 0]


def regression_1d(n_train: int, *, seed: int, n_test: int = 400, low: float = -3.0,
                  high: float = 3.0, dtype: torch.dtype = DEFAULT_DTYPE) -> RegressionTask:
    """x_train ~ U[low, high] (sorted), noiseless y = sin(2x) + 0.3x; x_test a grid
    slightly wider than the training interval."""
    n_train, n_test = positive_int(n_train, "n_train"), positive_int(n_test, "n_test")
    g = torch.Generator().manual_seed(seed)
    x = (low + (high - low) * torch.rand(n_train, 1, generator=g, dtype=dtype)).sort(0).values
    margin = 0.1 * (high - low)
    grid = torch.linspace(low - margin, high + margin, n_test, dtype=dtype).reshape(-1, 1)
    return RegressionTask("1-D", x, target_1d(x), grid, target_1d(grid),
                          f"y = sin(2x) + 0.3x, x ~ U[{low}, {high}], {n_train} points")


def regression_sphere(n_train: int, d: int, *, seed: int, n_test: int = 200,
                      dtype: torch.dtype = DEFAULT_DTYPE) -> RegressionTask:
    """x uniform on the sphere of radius sqrt(d) in R^d, noiseless
    y = sin(x_1) + x_2 x_3 / 2 (a smooth target of degree > 1)."""
    n_train, d = positive_int(n_train, "n_train"), positive_int(d, "d")
    if d < 3:
        raise ValueError(f"d must be >= 3 for the sphere task (the target uses 3 coordinates), got {d}")
    g = torch.Generator().manual_seed(seed)

    def sample(n):
        x = torch.randn(n, d, generator=g, dtype=dtype)
        x = x / x.norm(dim=1, keepdim=True) * math.sqrt(d)
        return x, torch.sin(x[:, 0]) + 0.5 * x[:, 1] * x[:, 2]

    x_train, y_train = sample(n_train)
    x_test, y_test = sample(positive_int(n_test, "n_test"))
    return RegressionTask(f"{d}-D sphere", x_train, y_train, x_test, y_test,
                          f"y = sin(x1) + x2 x3 / 2, x uniform on the sphere of radius sqrt({d}) "
                          f"in R^{d}, {n_train} points")


def _digits_split(n_train: int, n_test: int, names: tuple[str, str], seed: int):
    """scikit-learn's bundled digits, a seeded permutation and the train/test slices of it."""
    from sklearn.datasets import load_digits

    n_train, n_test = positive_int(n_train, names[0]), positive_int(n_test, names[1])
    digits = load_digits()
    if n_train + n_test > len(digits.target):
        raise ValueError(f"{names[0]} + {names[1]} = {n_train + n_test} exceeds the "
                         f"{len(digits.target)} digits images")
    order = np.random.default_rng(seed).permutation(len(digits.target))
    return digits, order, slice(0, n_train), slice(n_train, n_train + n_test)


def digits_parity(n_train: int, *, seed: int, n_test: int = 256,
                  dtype: torch.dtype = DEFAULT_DTYPE) -> RegressionTask:
    """scikit-learn's bundled handwritten digits (8x8, 1797 images, no download):
    y = +1 for even digits, -1 for odd.  Pixels are centred and scaled by the
    training set's statistics, then each image is scaled to norm sqrt(64) (so
    ||x||^2 / d = 1, the scale the NTK parameterization assumes)."""
    digits, order, train, test = _digits_split(n_train, n_test, ("n_train", "n_test"), seed)
    x = digits.data[order].astype(np.float64)
    y = np.where(digits.target[order] % 2 == 0, 1.0, -1.0)
    mean, std = x[train].mean(0), x[train].std(0) + 1.0   # +1: constant border pixels
    x = (x - mean) / std
    x = x / np.linalg.norm(x, axis=1, keepdims=True) * math.sqrt(x.shape[1])
    def as_t(a):
        return torch.as_tensor(a, dtype=dtype)
    return RegressionTask("digits parity", as_t(x[train]), as_t(y[train]), as_t(x[test]),
                          as_t(y[test]), f"scikit-learn digits, y = +1 even / -1 odd, "
                          f"{n_train} training and {n_test} test images")


def load_matrix(path: str | Path, name: str, *, dtype: torch.dtype = DEFAULT_DTYPE) -> torch.Tensor:
    """A 2-D array `[N, d]` from a file (see `load_array`)."""
    return as_matrix(load_array(path, name), name, dtype=dtype)


def load_array(path: str | Path, name: str) -> np.ndarray:
    """Read an array from .npy, .npz (its single array, or the one named like
    the argument) or .csv (comma-separated, no header, 2-D).  Never unpickles."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{name}: file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz", ".csv"):
        raise ValueError(f"{name}: unsupported file type {suffix!r}; use .npy, .npz or .csv")
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".csv":
            return np.loadtxt(path, delimiter=",", ndmin=2)
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.keys())
            key = name if name in keys else keys[0] if len(keys) == 1 else None
            if key is None:
                raise ValueError(f"{name}: {path} holds several arrays {keys}; name one {name!r}")
            return archive[key]
    except ValueError as err:
        if str(err).startswith(f"{name}:"):
            raise
        pickled = "allow_pickle" in str(err) or "Object arrays" in str(err)
        reason = ("holds Python objects (pickled data), which ntklab never loads: save a numeric "
                  "array, e.g. np.save(path, x.astype(np.float64))" if pickled else f"cannot be read: {err}")
        raise ValueError(f"{name}: {str(path)!r} {reason}") from err


# ----------------------------------------------------------------------------- image classification

@dataclass
class ImageTask:
    """Images NCHW (standardised per channel with the training set's statistics) and
    integer labels."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int
    description: str


def _standardised(name, x_train, y_train, x_test, y_test, n_classes, description, dtype):
    """Arora et al. (2019)'s preprocessing after scaling pixels to [0, 1]: per-channel
    mean and standard deviation of the training images (no ZCA)."""
    mean = x_train.mean(axis=(0, 2, 3), keepdims=True)
    std = x_train.std(axis=(0, 2, 3), keepdims=True)
    as_t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=dtype)  # noqa: E731
    return ImageTask(name, as_t((x_train - mean) / std), torch.as_tensor(y_train, dtype=torch.long),
                     as_t((x_test - mean) / std), torch.as_tensor(y_test, dtype=torch.long),
                     n_classes, description)


def _subset(n_available: int, size: int | None, name: str, seed: int) -> np.ndarray:
    if size is None:
        return np.arange(n_available)
    size = positive_int(size, name)
    if size > n_available:
        raise ValueError(f"{name}={size} exceeds the {n_available} images available")
    return np.sort(np.random.default_rng(seed).permutation(n_available)[:size])


def digits_images(train_size: int, test_size: int, *, seed: int,
                  dtype: torch.dtype = DEFAULT_DTYPE) -> ImageTask:
    """scikit-learn's bundled digits as 1x8x8 images, 10 classes, a seeded random split."""
    digits, order, tr, te = _digits_split(train_size, test_size, ("train_size", "test_size"), seed)
    x = digits.images[order][:, None].astype(np.float64) / 16.0
    y = digits.target[order]
    return _standardised("digits", x[tr], y[tr], x[te], y[te], 10,
                         f"scikit-learn digits (1x8x8), {train_size} training and {test_size} "
                         f"test images (seed {seed})", dtype)


def digits_shifted(train_size: int, test_size: int, *, seed: int, canvas: int = 12, noise: float = 0.25,
                   dtype: torch.dtype = DEFAULT_DTYPE) -> ImageTask:
    """The digits placed at a random position of a `canvas` x `canvas` black image (each image its
    own uniform offset, 0 .. canvas - 8 along each axis) with Gaussian pixel noise of standard
    deviation `noise` (pixels in [0, 1] before it): a task that needs translation invariance, where
    global or local pooling can beat a CNTK-V (on the centred 8x8 digits every kernel is near 97 %)."""
    canvas, noise = positive_int(canvas, "canvas"), positive(noise, "noise", allow_zero=True)
    if canvas < 8:
        raise ValueError(f"canvas must be at least the digits' 8 pixels, got {canvas}")
    digits, order, tr, te = _digits_split(train_size, test_size, ("train_size", "test_size"), seed)
    rng = np.random.default_rng(seed + 1)
    count = tr.stop + (te.stop - te.start)
    images = np.zeros((count, 1, canvas, canvas))
    for i, (row, column) in enumerate(rng.integers(0, canvas - 7, size=(count, 2))):
        images[i, 0, row:row + 8, column:column + 8] = digits.images[order[i]] / 16.0
    images += noise * rng.standard_normal(images.shape)
    y = digits.target[order[:count]]
    return _standardised("digits-shifted", images[tr], y[tr], images[te], y[te], 10,
                         f"scikit-learn digits at random positions of a {canvas}x{canvas} canvas with pixel noise "
                         f"{noise}, {train_size} training and {test_size} test images (seed {seed})", dtype)


CIFAR10_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST = "test_batch.bin"
CIFAR10_RECORD = 1 + 3 * 32 * 32  # label byte, then 1024 red, 1024 green, 1024 blue (row-major)


def read_cifar10_binary(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 3, 32, 32] and labels [N] from one file of the CIFAR-10
    *binary* distribution (cifar-10-binary.tar.gz; never the pickled one)."""
    path = Path(path)
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % CIFAR10_RECORD:
        raise ValueError(f"{path} is not a CIFAR-10 binary batch: its size {raw.size} bytes is "
                         f"not a multiple of {CIFAR10_RECORD} (1 label + 3072 pixel bytes)")
    records = raw.reshape(-1, CIFAR10_RECORD)
    labels = records[:, 0]
    if labels.max() > 9:
        raise ValueError(f"{path}: label {int(labels.max())} outside 0..9; not a CIFAR-10 batch")
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def cifar10(directory: str | Path, train_size: int | None = None, test_size: int | None = None,
            *, seed: int = 0, dtype: torch.dtype = DEFAULT_DTYPE) -> ImageTask:
    """CIFAR-10 from the folder of its binary distribution (`data_batch_1.bin` ...
    `data_batch_5.bin`, `test_batch.bin`); `train_size`/`test_size` take seeded
    random subsets (None: all 50000 / 10000)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"--data cifar10:{directory}: no such folder; give the folder holding "
                         f"data_batch_1.bin ... test_batch.bin (cifar-10-binary.tar.gz, extracted)")
    missing = [f for f in (*CIFAR10_TRAIN, CIFAR10_TEST) if not (directory / f).is_file()]
    if missing:
        raise ValueError(f"--data cifar10:{directory} lacks {', '.join(missing)}; it needs the "
                         f"binary distribution (data_batch_1.bin ... data_batch_5.bin, "
                         f"test_batch.bin), not the Python pickles")
    train = [read_cifar10_binary(directory / f) for f in CIFAR10_TRAIN]
    x_train, y_train = np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train])
    x_test, y_test = read_cifar10_binary(directory / CIFAR10_TEST)
    tr = _subset(len(y_train), train_size, "train_size", seed)
    te = _subset(len(y_test), test_size, "test_size", seed + 1)
    return _standardised("cifar10", x_train[tr] / 255.0, y_train[tr], x_test[te] / 255.0,
                         y_test[te], 10, f"CIFAR-10 ({directory}), {len(tr)} training and "
                         f"{len(te)} test images", dtype)


DIGITS_TASKS = {"digits": digits_images, "digits-shifted": digits_shifted}


def image_task(data: str, train_size: int | None, test_size: int | None, *, seed: int,
               defaults: tuple[int, int], dtype: torch.dtype = DEFAULT_DTYPE) -> ImageTask:
    """`--data digits`, `--data digits-shifted` or `--data cifar10:DIR`."""
    if data in DIGITS_TASKS:
        return DIGITS_TASKS[data](defaults[0] if train_size is None else train_size,
                                  defaults[1] if test_size is None else test_size, seed=seed, dtype=dtype)
    if data.startswith("cifar10:"):
        return cifar10(data.split(":", 1)[1], train_size, test_size, seed=seed, dtype=dtype)
    raise ValueError(f"--data must be 'digits', 'digits-shifted' or 'cifar10:DIR', got {data!r}")
