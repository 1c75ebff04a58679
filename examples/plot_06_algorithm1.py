"""
Learning a low-dimensional target: Algorithm 1 against kernels
==============================================================

Damian, Lee & Soltanolkotabi (2022): for a target that depends on the input only through a few
directions, one gradient step on the first layer from a symmetric initialization, then a ridge
fit of the head (Algorithm 1), learns with far fewer samples than random features or NTK
regression, which must fit a degree-p polynomial in all d dimensions.
"""
import os

import matplotlib.pyplot as plt
import numpy as np

from ntklab.lab.studies import representation as R

FAST = os.environ.get("NTKLAB_DOCS_FAST") == "1"
d, p = 10, 4
sizes = [200, 800] if FAST else [200, 500, 1000, 2000]
m = 300 if FAST else 1000
target = R.paper_target(d, p, seed=0)
losses = {"Algorithm 1": [], "random features": [], "NTK regression": []}
for n in sizes:
    x, y = R.sample(target, n, seed=1)
    losses["Algorithm 1"].append(R.test_loss(R.algorithm1(x, y, m=m, seed=2), target, 2000, seed=3))
    losses["random features"].append(R.test_loss(R.random_features_ridge(x, y, m=m, seed=2), target, 2000, seed=3))
    losses["NTK regression"].append(R.test_loss(R.ntk_regression(x, y), target, 2000, seed=3))
print({k: np.round(v, 3).tolist() for k, v in losses.items()})

# %%
fig, ax = plt.subplots(figsize=(5.5, 3.8))
for name, values in losses.items():
    ax.plot(sizes, values, "o-", label=name)
ax.set_xscale("log")
ax.set_xlabel("training samples n")
ax.set_ylabel("test loss (zero predictor: 1)")
ax.set_title(f"d = {d}, degree p = {p}, width m = {m}")
ax.legend()
fig.tight_layout()
