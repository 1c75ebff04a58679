"""Input validation in one place (scikit-learn style): every public entry point
converts user arrays through these helpers, so bad input fails early with a
message that names the argument and says how to fix it."""
from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch

DEFAULT_DTYPE = torch.float64


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`None` means CPU; `"auto"` means CUDA when available; anything else is
    passed to `torch.device` (an unavailable CUDA device is a clear error)."""
    if device is None:
        return torch.device("cpu")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for but CUDA is not available; "
                         "use device='cpu' or device='auto'")
    return dev


def as_matrix(x: Any, name: str, *, dtype: torch.dtype = DEFAULT_DTYPE,
              device: str | torch.device | None = None, min_rows: int = 1) -> torch.Tensor:
    """Convert `x` to a finite 2-D tensor `[N, d]` of `dtype` on `device`."""
    t = as_tensor(x, name, dtype=dtype, device=device)
    if t.ndim == 1:
        raise ValueError(f"{name} must be 2-D [N, d], got shape {tuple(t.shape)}; "
                         f"for N scalar inputs use {name}.reshape(-1, 1), "
                         f"for one d-dimensional input use {name}.reshape(1, -1)")
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, d], got a {t.ndim}-D array of shape "
                         f"{tuple(t.shape)}; flatten the trailing axes or add nk.Flatten()")
    if t.shape[0] < min_rows or t.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)}); it needs at least "
                         f"{min_rows} row(s) and one feature")
    return t


def as_tensor(x: Any, name: str, *, dtype: torch.dtype = DEFAULT_DTYPE,
              device: str | torch.device | None = None) -> torch.Tensor:
    """Convert numpy/torch/sequence `x` to a finite tensor (no copy when possible)."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        try:
            array = np.asarray(x)
            t = torch.as_tensor(array if array.flags.writeable else array.copy())
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name} must be a numeric array, got {type(x).__name__}") from err
    if not (t.is_floating_point() or t.dtype in (torch.int8, torch.int16, torch.int32,
                                                  torch.int64, torch.uint8, torch.bool)):
        raise ValueError(f"{name} must be real-valued, got dtype {t.dtype}")
    t = t.to(dtype=dtype, device=resolve_device(device) if device is not None else t.device)
    if t.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} contains {bad} NaN/inf value(s); remove or impute them first")
    return t


def check_same_features(x1: torch.Tensor, x2: torch.Tensor, name1: str = "x1",
                        name2: str = "x2") -> None:
    if x1.shape[1:] != x2.shape[1:]:
        raise ValueError(f"{name1} and {name2} must have the same feature shape, got "
                         f"{tuple(x1.shape[1:])} and {tuple(x2.shape[1:])}")


def positive(value: Any, name: str, *, allow_zero: bool = False) -> float:
    """A finite real number > 0 (or >= 0 with `allow_zero`)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return float(value)


def positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def one_of(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def as_targets(y: Any, n: int, name: str, dtype: torch.dtype, device) -> tuple[torch.Tensor, bool]:
    """y as [N, K] and whether it was given 1-D."""
    y = as_tensor(y, name, dtype=dtype, device=device)
    vector = y.ndim == 1
    y = y.reshape(-1, 1) if vector else y
    if y.ndim != 2 or y.shape[0] != n:
        raise ValueError(f"{name} must have shape [N] or [N, K] with N = {n} (the number of "
                         f"training points), got {tuple(y.shape)}")
    return y, vector
