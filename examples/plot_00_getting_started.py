"""
Getting started
===============

Install (a CPU build of torch first, then ntklab with the extras you need)::

    pip install torch                        # or the CUDA build of your choice
    pip install "ntklab[sklearn]"            # library + scikit-learn estimators
    pip install "ntklab[all]"                # + the tiled engine (zarr, Dask), experiments and CLI

Then, in five steps: one architecture gives a network and its infinite-width kernels; kernel
regression with an uncertainty band; the empirical NTK of a model of your own; and a kernel too large
to hold, computed into a store and solved from it.
"""
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch

import ntklab as nk

FAST = os.environ.get("NTKLAB_DOCS_FAST") == "1"
generator = torch.Generator().manual_seed(0)

# %%
# 1. One description, two objects
# -------------------------------
# ``nk.serial`` (neural-tangents' names) describes an architecture; ``.kernel`` gives its NNGP and NTK
# at infinite width, ``.module`` a finite-width ``torch.nn.Module`` of the same architecture.
net = nk.serial(nk.Dense(512, W_std=1.5, b_std=0.1), nk.Relu(), nk.Dense(1, W_std=1.5, b_std=0.1))
x = torch.randn(5, 3, generator=generator, dtype=torch.float64)
kernel = net.kernel(x)                       # Kernel(nngp=[5, 5], ntk=[5, 5])
model = net.module(in_shape=(3,), seed=0, dtype=torch.float64)
print(kernel.ntk.diagonal(), model(x).shape)

# %%
# 2. Kernel regression with an uncertainty band
# ---------------------------------------------
# The mean and covariance of infinitely many such networks trained by gradient descent on the
# squared loss to convergence (``t=None``; Lee et al. 2019).
x_train = torch.linspace(-3, 3, 16, dtype=torch.float64)[:, None]
y_train = torch.sin(2 * x_train)
x_test = torch.linspace(-4, 4, 200, dtype=torch.float64)[:, None]
predict = nk.predict.gradient_descent_mse_ensemble(net, x_train, y_train, diag_reg=1e-4)
mean, cov = predict(t=None, x_test=x_test, get="ntk", compute_cov=True)
std = cov.diagonal().clamp(min=0).sqrt()
fig, ax = plt.subplots(figsize=(6, 3.4))
ax.plot(x_test[:, 0], mean[:, 0], label="NTK ensemble mean")
ax.fill_between(x_test[:, 0], mean[:, 0] - 2 * std, mean[:, 0] + 2 * std, alpha=0.3, label="± 2 std")
ax.plot(x_train[:, 0], y_train[:, 0], "k.", label="training data")
ax.set_xlabel("x")
ax.legend(loc="lower right")
fig.tight_layout()

# %%
# 3. The empirical NTK of your own model
# --------------------------------------
# Any ``torch.nn.Module``: Theta(x, x') = sum over parameters of df(x)/dp df(x')/dp, by torch.func.
own = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1)).double()
theta = nk.empirical_ntk(own, x, progress=False)   # [5, 5]
print(theta.shape)

# %%
# 4. A kernel too large to hold: the tiled store, and solving from it
# -------------------------------------------------------------------
# ``compute_kernel`` writes the matrix tile by tile into a checksummed zarr store (resumable, on a
# Dask cluster if asked); ``StoredKernel`` streams its products K v so that conjugate gradients solve
# (K + lambda I) alpha = y without ever loading K.
n = 400 if FAST else 1000
x_big = torch.randn(n, 3, generator=generator, dtype=torch.float64)
y_big = torch.sin(x_big[:, :1])
with tempfile.TemporaryDirectory() as folder:
    store = nk.kernels.compute_kernel(net, x_big, store=Path(folder) / "k.zarr", get="ntk", tile_size=256,
                                      progress=False)
    result = nk.predict.conjugate_gradients(nk.kernels.StoredKernel(store, "ntk"), y_big, diag_reg=1e-3,
                                            rank=100, progress=False)
print(result.iterations, float(result.relative_residual.max()))
