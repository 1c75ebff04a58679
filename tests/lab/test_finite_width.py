"""The finite-width study: exact samples of Θ̂(x, x) reduced to n Var/E² and the mean shift,
extrapolated in 1/n, against the closed form of the ReLU NTK's fluctuations (Roberts, Yaida & Hanin;
an independent referee's L(11L + 7)/(3(L + 1)))."""
import math

import numpy as np
import pytest
import torch

import ntklab as nk
from ntklab.lab.studies import finite_width as F


def test_the_fit_recovers_known_coefficients_with_calibrated_errors():
    """Synthetic data c₀ + c₁/n + c₂/n² + noise of known s.e.: over 2000 draws c₀'s spread is the
    fit's stated s.e. (within 10 %) and mean χ²/dof is 1; a two-term fit of the same data is biased
    by many s.e. (negative control: the 1/n² term matters)."""
    widths = np.array([8, 16, 32, 64, 128])
    truth = 3.0 + 20.0 / widths + 100.0 / widths ** 2
    se = np.full(len(widths), 0.02)
    rng = np.random.default_rng(0)
    fits = [F.fit_in_inverse_width(widths, truth + se * rng.standard_normal(len(widths)), se) for _ in range(2000)]
    c0 = np.array([f[0][0] for f in fits])
    assert abs(c0.mean() - 3.0) < 4 * fits[0][1][0] / math.sqrt(len(fits))
    assert abs(c0.std() / fits[0][1][0] - 1) < 0.1
    assert abs(np.mean([f[2] for f in fits]) - 1) < 0.1
    coefficients, errors, chi2 = F.fit_in_inverse_width(widths, truth, se, terms=2)
    assert abs(coefficients[0] - 3.0) > 10 * errors[0] and chi2 > 10


def test_extrapolated_relu_coefficient_is_the_closed_form():
    """Critical ReLU, L = 2, 2×10⁵ networks at each n = 16..128: the extrapolated c₀ of n Var/E² is
    6.444 = L(11L + 7)/(3(L + 1)) within 4 s.e. (s.e. < 1 %), and the mean shift's c₀ is 0 within 4
    s.e.; the finite-width value at n = 16 is many s.e. above it (what the extrapolation removes)."""
    x = torch.ones(4, dtype=torch.float64)
    rows = [F.diagonal_point(nk.mlp(2, n, **F.CRITICAL_RELU), x, 200_000, seed=n) for n in (16, 32, 64, 128)]
    assert all(abs(r["predicted_scaled_relative_variance"] - 58 / 9) < 1e-9 for r in rows)
    widths = [r["width"] for r in rows]
    (c0, *_), (se, *_), _ = F.fit_in_inverse_width(widths, [r["scaled_relative_variance"] for r in rows],
                                                   [r["scaled_relative_variance_se"] for r in rows])
    assert abs(c0 - 58 / 9) < 4 * se and se < 0.01 * 58 / 9
    assert rows[0]["scaled_relative_variance"] - 58 / 9 > 10 * rows[0]["scaled_relative_variance_se"]
    (shift, *_), (shift_se, *_), _ = F.fit_in_inverse_width(widths, [r["scaled_mean_shift"] for r in rows],
                                                            [r["scaled_mean_shift_se"] for r in rows])
    assert abs(shift) < 4 * shift_se


def test_the_fit_needs_enough_widths():
    with pytest.raises(ValueError, match="at least 3 widths"):
        F.fit_in_inverse_width([16, 32], [1.0, 1.0], [0.1, 0.1])
