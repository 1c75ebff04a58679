"""Power-law fits used by the studies' reports: the theory predicts rates (n^-1/2, eps^2, L/n)."""
from __future__ import annotations

import numpy as np


def power_law(x, values) -> tuple[float, float]:
    """Least-squares fit of log(values) = log(c) + slope log(x) over the positive values:
    (slope, c)."""
    x, values = np.asarray(x, float), np.asarray(values, float)
    keep = (values > 0) & (x > 0)
    if keep.sum() < 2:
        raise ValueError(f"a power-law fit needs at least two positive points, got {int(keep.sum())}")
    slope, intercept = np.polyfit(np.log(x[keep]), np.log(values[keep]), 1)
    return float(slope), float(np.exp(intercept))


def power_law_slope(x, values) -> tuple[float, float]:
    """The slope of `power_law` with its standard error (scipy's linregress on the logs): for
    repeated measurements at each x (seeds), pass them all."""
    from scipy.stats import linregress
    x, values = np.asarray(x, float), np.asarray(values, float)
    keep = (values > 0) & (x > 0)
    if keep.sum() < 3:
        raise ValueError(f"a slope with an error needs at least three positive points, got {int(keep.sum())}")
    fit = linregress(np.log(x[keep]), np.log(values[keep]))
    return float(fit.slope), float(fit.stderr)
