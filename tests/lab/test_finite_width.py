"""NTK fluctuations of finite MLPs scale with depth/width (Roberts, Yaida & Hanin)."""
import math

import pytest
import torch

import ntklab as nk
from ntklab.lab.studies import finite_width as F


def _inputs():
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return x / x.norm(dim=1, keepdim=True) * math.sqrt(8)


@pytest.mark.slow
def test_monte_carlo_agrees_with_the_predicted_fluctuations_and_mean():
    """The study's Monte Carlo against `nk.finite_width`'s order-1/n prediction, for ReLU and tanh
    at criticality: within 4 standard errors at each (L, n); the points deliberately include a
    fixed L/n at two depths, where the prediction differs by 13 % and the data must follow it."""
    x = _inputs()
    for family in (F.CRITICAL_RELU, F.CRITICAL_TANH):
        for depth, width in [(1, 16), (4, 64), (2, 32)]:
            stats = F.ntk_statistics(nk.mlp(depth, width, **family), x, 400)
            z = (stats["relative_variance"] - stats["predicted_relative_variance"]) / stats["relative_variance_se"]
            assert abs(z) < 4, (family, depth, width, stats)
            z_mean = (stats["mean_shift"] - stats["predicted_mean_shift"]) / stats["mean_shift_se"]
            assert abs(z_mean) < 4, (family, depth, width, stats)


def test_statistics_need_two_seeds():
    with pytest.raises(ValueError, match="seeds must be >= 2"):
        F.ntk_statistics(nk.mlp(1, 8, **F.CRITICAL_RELU), _inputs(), 1)
