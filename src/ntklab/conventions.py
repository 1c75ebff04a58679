"""The one training convention of ntklab, neural-tangents' (Novak et al. 2020, `predict`):

    L(f) = ||f(X) - Y||^2 / (2 |Y|),      |Y| = y_train.size (samples x outputs),

`learning_rate` is the step of gradient descent on L, and time t counts steps (continuously;
it enters as learning_rate x t), so that gradient flow, the limit of small steps, moves the
outputs as

    df/dt = -(learning_rate / |Y|) Theta (f - Y).

`nk.train`, `nk.predict`, `nk.linearize` and the theory flows (`nk.nearly_kernel_flow`,
`nk.train_gradient_flow`, `nk.ensemble_mean_flow`) take times and learning rates in these
units (tests/test_conventions.py checks the flows against `nk.predict` and `nk.train`).
Derivations written for L = 1/2 sum (f - y)^2 with unit rate
(Roberts, Yaida & Hanin 2022; lecture 21's g(alpha) = ||K alpha - y||^2 up to its factor 2)
run in the flow time tau = t learning_rate / |Y| (`flow_times`): the book's unit rate on
1/2 sum is `learning_rate = |Y|` here.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ._core.validation import positive, positive_int


def mean_squared_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """ntklab's loss convention: ||f - y||^2 / (2 |y|)."""
    return 0.5 * (prediction - target).square().mean()


def prediction_times(t: Any) -> tuple[np.ndarray, tuple[int, ...]]:
    """Times at which a prediction is evaluated: a time or an array of times, finite and >= 0
    (infinity is `t=None`, which the callers handle), as a flat float64 array and its shape."""
    try:
        array = np.asarray(t, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"t must be a time >= 0 or an array of times (t=None for infinity), "
                         f"got {t!r}") from err
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise ValueError(f"t must be finite and >= 0 (t=None for infinite time), got {t}")
    return array.reshape(-1), array.shape


def flow_times(times: Any, learning_rate: float, y_size: int) -> np.ndarray:
    """The flow times tau = t learning_rate / |Y| of positive, strictly increasing training times
    `times` (an ODE integrated from 0 evaluates them in order), for flows written on
    1/2 sum (f - y)^2 with unit rate (module docstring)."""
    array, _ = prediction_times(times)
    if len(array) == 0 or array[0] <= 0 or np.any(np.diff(array) <= 0):
        raise ValueError(f"times must be positive and increasing, got {array.tolist()}")
    rate = positive(learning_rate, "learning_rate") / positive_int(y_size, "y_size")
    return array * rate
