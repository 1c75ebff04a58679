"""Input validation in one place (scikit-learn style): every public entry point
converts user arrays through these helpers, so bad input fails early with a
message that names the argument and says how to fix it."""
from __future__ import annotations

import math
import numbers
import os
import re
from typing import Any

import numpy as np
import torch

from . import transforms

DEFAULT_DTYPE = torch.float64
DEFAULT_MAX_MEMORY = 2 ** 30
"""The one default of `max_memory` (1 GiB) in ntklab: every function that takes
`max_memory` (`Serial.kernel`, `kernels.compute_kernel`, `empirical_ntk`,
`monte_carlo_kernel`, `train`, ...) has the default None, which `parse_memory` turns
into this bound on the working memory beyond the result."""
_UNITS = {"": 1, "B": 1, "KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9, "TB": 10 ** 12,
          "KIB": 2 ** 10, "MIB": 2 ** 20, "GIB": 2 ** 30, "TIB": 2 ** 40}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`None` means CPU (for functions that make tensors from no input, e.g. the
    experiments; functions that take inputs follow them, see `input_device`); `"auto"`
    means CUDA when available; anything else is passed to `torch.device` (an
    unavailable CUDA device is a clear error)."""
    if device is None:
        return torch.device("cpu")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device={device!r} is not a torch device; use 'cpu', 'cuda', 'cuda:1' "
                         f"or 'auto'") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for but CUDA is not available; "
                         "use device='cpu' or device='auto'")
    return dev


def input_device(x: Any, device: str | torch.device | None = None) -> torch.device:
    """The device policy of functions that take inputs (`device=None` follows the inputs):
    `device` when given, else the device of `x` when it is a torch tensor, else torch's
    default device (where `torch.as_tensor` puts numpy, list and scalar input)."""
    if device is not None:
        return resolve_device(device)
    return x.device if isinstance(x, torch.Tensor) else torch.get_default_device()


def input_dtype(x: Any, dtype: torch.dtype | None, other: Any = None) -> torch.dtype:
    """The dtype policy of kernels: `dtype` when given, else the promotion of the inputs'
    dtypes (`x` and, when given, `other`), where a floating torch tensor counts with its own
    dtype and anything else (numpy, integer and list inputs) as float64: float32 with float32
    is float32, float32 with float64 (or numpy) is float64, never silently the lower one."""
    if dtype is not None:
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"dtype must be a floating torch dtype such as torch.float64, got {dtype!r}")
        return dtype
    inputs = (x,) if other is None else (x, other)
    dtypes = [t.dtype if isinstance(t, torch.Tensor) and t.is_floating_point() else DEFAULT_DTYPE
              for t in inputs]
    return dtypes[0] if len(dtypes) == 1 else torch.promote_types(*dtypes)


def as_matrix(x: Any, name: str, *, dtype: torch.dtype = DEFAULT_DTYPE,
              device: str | torch.device | None = None, min_rows: int = 1) -> torch.Tensor:
    """Convert `x` to a finite 2-D tensor `[N, d]` of `dtype` on `device`, with at least
    `min_rows` rows (0: may be empty)."""
    t = as_tensor(x, name, dtype=dtype, device=device, allow_empty=min_rows == 0)
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


def as_images(x: Any, name: str, *, dtype: torch.dtype = DEFAULT_DTYPE,
              device: str | torch.device | None = None) -> torch.Tensor:
    """Convert `x` to a finite image batch `[N, C, H, W]` (NCHW, torch's layout) or volume batch
    `[N, C, D, H, W]`."""
    t = as_tensor(x, name, dtype=dtype, device=device)
    if t.ndim not in (4, 5):
        hint = (f"; a single image is {name}[None]" if t.ndim == 3 else
                "; reshape flat pixels with x.reshape(N, C, H, W)" if t.ndim == 2 else "")
        raise ValueError(f"{name} must be a batch of images [N, C, H, W] (NCHW) or volumes "
                         f"[N, C, D, H, W], got a "
                         f"{t.ndim}-D array of shape {tuple(t.shape)}{hint}")
    if t.shape[-1] in (1, 3, 4) and t.shape[1] > 4:
        last, first, axes = (("NHWC", "NCHW images", "0, 3, 1, 2") if t.ndim == 4 else
                             ("NDHWC", "NCDHW volumes", "0, 4, 1, 2, 3"))
        raise ValueError(f"{name} of shape {tuple(t.shape)} looks channels-last ({last}, "
                         f"{t.shape[-1]} channels); ntklab takes {first}: pass "
                         f"{name}.transpose({axes}) (numpy) or {name}.permute({axes})")
    return t


def as_inputs(x: Any, name: str, *, images: bool, sequences: bool = False,
              dtype: torch.dtype = DEFAULT_DTYPE, device: str | torch.device | None = None
              ) -> torch.Tensor:
    """Images `[N, C, H, W]` or volumes `[N, C, D, H, W]` when `images` or `x` is 4-D or 5-D, token
    sequences `[N, T, C]` when `sequences` or `x` is 3-D, else a matrix `[N, d]`."""
    if images or np.ndim(x) in (4, 5):
        return as_images(x, name, dtype=dtype, device=device)
    if sequences or np.ndim(x) == 3:
        return as_sequences(x, name, dtype=dtype, device=device)
    return as_matrix(x, name, dtype=dtype, device=device)


def as_sequences(x: Any, name: str, *, dtype: torch.dtype = DEFAULT_DTYPE,
                 device: str | torch.device | None = None) -> torch.Tensor:
    """Convert `x` to a finite batch of token sequences `[N, T, C]` (batch first, channels
    last, as `nn.MultiheadAttention(batch_first=True)`)."""
    t = as_tensor(x, name, dtype=dtype, device=device)
    if t.ndim != 3:
        hint = f"; a single sequence is {name}[None]" if t.ndim == 2 else ""
        raise ValueError(f"{name} must be a batch of token sequences [N, T, C] (batch first, "
                         f"channels last), got a {t.ndim}-D array of shape {tuple(t.shape)}{hint}")
    return t


def as_tensor(x: Any, name: str, *, dtype: torch.dtype = DEFAULT_DTYPE,
              device: str | torch.device | None = None, allow_empty: bool = False) -> torch.Tensor:
    """Convert numpy/torch/sequence `x` to a finite tensor (no copy when possible); empty only
    with `allow_empty`."""
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
    if t.numel() == 0 and not allow_empty:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")
    finite = torch.isfinite(transforms.values(t))   # readable under torch.func transforms too
    if not finite.all():
        bad = int((~finite).sum())
        raise ValueError(f"{name} contains {bad} NaN/inf value(s); remove or impute them first")
    return t


def check_same_features(x1: torch.Tensor, x2: torch.Tensor, name1: str = "x1",
                        name2: str = "x2") -> None:
    if x1.shape[1:] != x2.shape[1:]:
        raise ValueError(f"{name1} and {name2} must have the same feature shape, got "
                         f"{tuple(x1.shape[1:])} and {tuple(x2.shape[1:])}")


def hyperparameter(value: Any, name: str, *, allow_zero: bool = False) -> float | torch.Tensor:
    """`positive(value)`, or a 0-dim floating torch tensor with a valid value, kept as is so
    that kernels can be differentiated with respect to it (e.g. `W_std=torch.tensor(1.5,
    requires_grad=True)`)."""
    if isinstance(value, torch.Tensor):
        if value.ndim != 0 or not value.is_floating_point():
            raise ValueError(f"{name} must be a number or a 0-dim floating tensor, got a tensor "
                             f"of shape {tuple(value.shape)} and dtype {value.dtype}")
        positive(float(value.detach()), name, allow_zero=allow_zero)
        return value
    return positive(value, name, allow_zero=allow_zero)


def _finite_real(value: Any) -> bool:
    """A real number other than a bool, finite as a float (`10**400` overflows: not finite)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def positive(value: Any, name: str, *, allow_zero: bool = False) -> float:
    """A finite real number > 0 (or >= 0 with `allow_zero`)."""
    if not _finite_real(value):
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


def record_steps(record: Any, steps: int) -> list[int]:
    """The steps at which a GD run records (the one meaning of `record` in ntklab): an
    int `n` -> about `n` steps spaced geometrically in [1, steps], plus 0 and `steps`;
    a sequence -> exactly those steps (each within [0, steps])."""
    if isinstance(record, (numbers.Integral, np.integer)) and not isinstance(record, bool):
        count = positive_int(int(record), "record")
        grid = np.unique(np.round(np.geomspace(1, max(steps, 1), count)).astype(int))
        return sorted({0, steps, *map(int, grid)})
    try:
        values = sorted({int(s) for s in record})
    except (TypeError, ValueError) as err:
        raise ValueError(f"record must be a count of steps or a list of steps, got {record!r}") from err
    if not values or values[0] < 0 or values[-1] > steps:
        raise ValueError(f"record must be a count or steps within [0, steps={steps}], got {record!r}")
    return values


def available_memory(device: torch.device) -> int:
    """Bytes that can still be allocated on `device`: free GPU memory, or the operating
    system's MemAvailable (Linux; the physical memory elsewhere)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_result_fits(shape: tuple[int, ...], count: int, dtype: torch.dtype, device: torch.device,
                      advice: str) -> None:
    """Refuse, before any work, a result (`count` arrays of `shape`) larger than the memory
    available on `device`."""
    needed = count * math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    available = available_memory(device)
    if needed > available:
        raise ValueError(f"the result alone needs {needed / 2 ** 30:.1f} GiB ({count} x "
                         f"{' x '.join(map(str, shape))} {str(dtype).replace('torch.', '')}) but "
                         f"{available / 2 ** 30:.1f} GiB are available on {device}; {advice}")


def parse_memory(value: int | float | str | None, name: str = "max_memory") -> int:
    """Bytes from an int or a string such as "512MB", "4GiB" (None -> `DEFAULT_MAX_MEMORY`,
    1 GiB)."""
    if value is None:
        return DEFAULT_MAX_MEMORY
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", value)
        if not match or match.group(2).upper() not in _UNITS:
            raise ValueError(f"{name} must be a number of bytes or a string like '4GB' or "
                             f"'512MiB', got {value!r}")
        value = float(match.group(1)) * _UNITS[match.group(2).upper()]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number of bytes, got {value!r}")
    if value < 2 ** 20:
        raise ValueError(f"{name}={value!r} bytes is below 1 MiB; give it in bytes, "
                         f"e.g. max_memory='2GiB'")
    return int(value)
