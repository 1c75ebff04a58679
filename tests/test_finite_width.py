"""NTK fluctuations of finite MLPs scale with depth/width (Roberts, Yaida & Hanin)."""
import math

import numpy as np
import pytest
import torch

import ntklab as nk
from ntklab.fits import power_law
from ntklab.studies import finite_width as F


def _inputs():
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return x / x.norm(dim=1, keepdim=True) * math.sqrt(8)


@pytest.mark.slow
def test_relative_variance_of_the_ntk_grows_like_depth_over_width():
    x = _inputs()
    points = [(1, 16), (1, 64), (4, 16), (4, 64), (2, 32)]
    stats = {p: F.ntk_statistics(nk.mlp(*p, **F.CRITICAL_RELU), x, 64) for p in points}
    ratio = np.array([L / n for L, n in points])
    variance = np.array([stats[p]["relative_variance"] for p in points])
    slope, _ = power_law(ratio, variance)
    assert 0.7 < slope < 1.4, (slope, variance)
    # the same L/n at different (L, n) gives the same fluctuations, within Monte Carlo error
    same = [stats[(1, 16)]["relative_variance"], stats[(4, 64)]["relative_variance"]]
    assert abs(same[0] - same[1]) < 0.5 * max(same)
    # and the mean is the infinite-width NTK within its Monte Carlo error
    for p in points:
        assert stats[p]["mean_deviation"] < 4 * stats[p]["mean_deviation_se"] + 1e-3


def test_statistics_need_two_seeds():
    with pytest.raises(ValueError, match="seeds must be >= 2"):
        F.ntk_statistics(nk.mlp(1, 8, **F.CRITICAL_RELU), _inputs(), 1)
