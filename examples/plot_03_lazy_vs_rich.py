"""
Lazy and rich training, with kernel tracking
============================================

``nk.train`` trains any torch model and records, along the way, how far its empirical NTK has
moved from initialization (``kernel_change``), how far its weights moved, and the distance to its
linearization trained alongside. A wide network trains lazily (its kernel hardly moves); a narrow
one learns features (lectures 21-22; Chizat, Oyallon & Bach 2019).
"""
import os

import matplotlib.pyplot as plt
import torch

import ntklab as nk

FAST = os.environ.get("NTKLAB_DOCS_FAST") == "1"
steps = 150 if FAST else 600
g = torch.Generator().manual_seed(0)
x_train = torch.randn(40, 4, generator=g, dtype=torch.float64)
y_train = torch.sin(2 * x_train[:, :1]) * x_train[:, 1:2]
x_test = torch.randn(100, 4, generator=g, dtype=torch.float64)

histories = {}
for width in (32, 2048):
    model = nk.mlp(1, width, W_std=2 ** 0.5, b_std=0.1).module(4, seed=0, dtype=torch.float64)
    histories[width] = nk.train(model, x_train, y_train, steps=steps, learning_rate=1.0,
                                x_test=x_test, record=15, progress=False)
    print(width, {k: round(v, 4) for k, v in histories[width].rows[-1].items()
                  if k in ("train_loss", "kernel_change", "weight_change")})

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
for width, history in histories.items():
    axes[0].plot(history.steps, history.column("kernel_change"), "o-", label=f"width {width}")
    axes[1].plot(history.steps, history.column("train_loss"), "o-", label=f"width {width}")
axes[0].set_ylabel("‖Θ_t - Θ_0‖ / ‖Θ_0‖")
axes[0].set_title("the kernel moves less when the network is wider")
axes[1].set_ylabel("training loss")
axes[1].set_yscale("log")
axes[1].set_title("both fit the data")
for ax in axes:
    ax.set_xlabel("GD step")
    ax.legend()
fig.tight_layout()
