"""
CNTK-GAP on digits with the tiled engine
========================================

The convolutional NTK with global average pooling (Arora et al. 2019) carries every pixel pair of
every pair of images. ``nk.kernels.compute_kernel`` writes it tile by tile into a zarr store —
resumable after a kill, each tile checked by a SHA-256 — and kernel regression on the one-hot
labels classifies the test images.
"""
import os
import tempfile

import matplotlib.pyplot as plt
import torch

import ntklab as nk
from ntklab.lab.data import digits_images

FAST = os.environ.get("NTKLAB_DOCS_FAST") == "1"
task = digits_images(60 if FAST else 200, 40 if FAST else 100, seed=0)
cnn = nk.serial(nk.Conv(64, (3, 3), padding="SAME", W_std=2 ** 0.5), nk.Relu(),
                nk.Conv(64, (3, 3), padding="SAME", W_std=2 ** 0.5), nk.Relu(),
                nk.GlobalAvgPool(), nk.Dense(1))
images = torch.cat([task.x_train, task.x_test])
with tempfile.TemporaryDirectory() as folder:
    store = nk.kernels.compute_kernel(cnn, images, store=f"{folder}/cntk.zarr", tile_size=50,
                                      get="ntk", progress=False)
    ntk = store.load("ntk")
n = len(task.x_train)
one_hot = torch.nn.functional.one_hot(task.y_train, task.n_classes).double()
prediction = nk.predict.kernel_regression(ntk[:n, :n], one_hot, ntk[n:, :n], diag_reg=1e-4)
accuracy = float((prediction.argmax(1) == task.y_test).double().mean())
print(f"CNTK-GAP test accuracy: {accuracy:.3f} on {len(task.y_test)} images")

# %%
order = torch.argsort(task.y_train)
fig, ax = plt.subplots(figsize=(4.5, 4))
image = ax.imshow(ntk[:n, :n][order][:, order], cmap="viridis")
ax.set_title(f"CNTK-GAP of {n} digits, sorted by label")
ax.set_xlabel("image")
ax.set_ylabel("image")
fig.colorbar(image, ax=ax)
fig.tight_layout()
