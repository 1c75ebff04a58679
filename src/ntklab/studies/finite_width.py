"""Finite-width fluctuations of the NTK of deep MLPs (Roberts, Yaida & Hanin 2022, "The
Principles of Deep Learning Theory", ch. 8-9: the amount of representation learning is set
by the depth-to-width ratio epsilon = L/n; Hanin & Nica 2020, "Finite depth and width
corrections to the neural tangent kernel").

Across S independent initializations of an ntklab MLP with L hidden layers of width n, the
empirical NTK Theta(x_a, x_b) at a few inputs is a random matrix; its mean tends to the
infinite-width NTK and its fluctuations vanish as n -> infinity at fixed L.  At large
but finite width the leading corrections are O(L/n): the relative variance
Var[Theta] / E[Theta]^2 grows proportionally to L/n, and so does the deviation of
E[Theta] from the infinite-width kernel (for ReLU nets, up to L-independent constants).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .. import arch as nk
from .._validation import positive_int
from ..kernels.monte_carlo import monte_carlo_kernel


CRITICAL_RELU = {"W_std": math.sqrt(2.0), "b_std": 0.0}
"""`nk.mlp(depth, width, **CRITICAL_RELU)`: ReLU MLPs at criticality (biases initialized at zero)."""


def ntk_statistics(arch: nk.Serial, x: torch.Tensor, seeds: int, *, first_seed: int = 0) -> dict:
    """Monte Carlo over `seeds` initializations of the NTK on the inputs `x`:
      relative_variance  Var[Theta(x, x)] / E[Theta(x, x)]^2 on the diagonal, averaged
                         over the inputs (Hanin & Nica's quantity; ~ L/n);
      mean_deviation     |E Theta(x_a, x_b) - Theta_inf(x_a, x_b)| / sqrt(Theta_inf(x_a, x_a)
                         Theta_inf(x_b, x_b)), averaged over all pairs (the 1/n shift of the mean);
    with standard errors from the sample."""
    seeds = positive_int(seeds, "seeds")
    if seeds < 2:
        raise ValueError("seeds must be >= 2 to estimate a variance")
    infinite = arch.kernel(x, get="ntk").numpy()
    mc = monte_carlo_kernel(arch, x, n_samples=seeds, get="ntk", seed=first_seed, dtype=torch.float64)
    mean, standard_error = mc.ntk.numpy(), mc.ntk_standard_error.numpy()
    variance = standard_error ** 2 * seeds                                  # sample variance (ddof 1)
    relative_variance = np.diag(variance) / np.diag(mean) ** 2
    scale = np.sqrt(np.outer(np.diag(infinite), np.diag(infinite)))
    deviation = np.abs(mean - infinite) / scale
    return {"relative_variance": float(relative_variance.mean()),
            "relative_variance_se": float(relative_variance.mean() * math.sqrt(2 / (seeds - 1))),
            "mean_deviation": float(deviation.mean()),
            "mean_deviation_se": float((standard_error / scale).mean())}
