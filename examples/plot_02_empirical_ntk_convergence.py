"""
A finite network's empirical NTK converges to the analytic one
==============================================================

``net.module`` builds the finite network of the same description; ``nk.empirical_ntk`` is its
tangent kernel Θ = J Jᵀ at initialization. As the width n grows, Θ approaches the analytic
infinite-width NTK with fluctuations of order n^-1/2 (Jacot et al. 2018).
"""
import os

import matplotlib.pyplot as plt
import numpy as np
import torch

import ntklab as nk

FAST = os.environ.get("NTKLAB_DOCS_FAST") == "1"
widths = [32, 128, 512] if FAST else [32, 128, 512, 2048]
seeds = 2 if FAST else 4
x = torch.randn(16, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def architecture(width):
    return nk.serial(nk.Dense(width, W_std=1.5, b_std=0.1), nk.Relu(),
                     nk.Dense(width, W_std=1.5, b_std=0.1), nk.Relu(), nk.Dense(1, W_std=1.5))


analytic = architecture(1).kernel(x, get="ntk")          # the width does not enter the kernel
errors = np.array([[float((nk.empirical_ntk(architecture(n).module(5, seed=s, dtype=torch.float64), x)
                           - analytic).norm() / analytic.norm()) for s in range(seeds)]
                   for n in widths])
slope = np.polyfit(np.log(widths), np.log(errors.mean(1)), 1)[0]
print(f"relative error against width: slope {slope:.2f} (theory -0.5)")

# %%
fig, ax = plt.subplots(figsize=(5, 3.6))
ax.loglog(np.repeat(widths, seeds), errors.ravel(), "o", alpha=0.6, label="one initialization")
ax.loglog(widths, errors.mean(1)[0] * (np.array(widths) / widths[0]) ** -0.5, "k--", label="n^-1/2")
ax.set_xlabel("width n")
ax.set_ylabel("‖Θ_empirical - Θ‖ / ‖Θ‖")
ax.set_title(f"empirical NTK → analytic NTK (slope {slope:.2f})")
ax.legend()
fig.tight_layout()
