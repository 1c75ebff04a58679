"""
The kernel of a residual network
================================

Branching layers (``FanOut``, ``parallel``, ``Identity``, ``FanInSum``) describe residual blocks
as in neural-tangents' ``stax``. The same description gives the infinite-width kernel and a real
residual network; a Monte Carlo average of the finite network's empirical NNGP over
initializations approaches the analytic kernel.
"""
import os

import matplotlib.pyplot as plt

import ntklab as nk
from ntklab.lab.data import digits_images

FAST = os.environ.get("NTKLAB_DOCS_FAST") == "1"


def block(channels):
    """A residual block: two ReLU convolutions plus the identity."""
    return nk.serial(nk.FanOut(2),
                     nk.parallel(nk.serial(nk.Relu(), nk.Conv(channels, (3, 3), padding="SAME"),
                                           nk.Relu(), nk.Conv(channels, (3, 3), padding="SAME")),
                                 nk.Identity()),
                     nk.FanInSum())


resnet = nk.serial(nk.Conv(64, (3, 3), padding="SAME"), block(64),
                   nk.AvgPool((2, 2), strides=(2, 2)), block(64),
                   nk.Relu(), nk.GlobalAvgPool(), nk.Dense(1))
print(resnet)                                  # the --arch string, nested blocks included
images = digits_images(12, 1, seed=0).x_train
kernel = resnet.kernel(images)

# %%
# Monte Carlo over initializations of the finite residual network (64 channels).
samples = 8 if FAST else 32
mc = nk.monte_carlo_kernel(resnet, images, n_samples=samples, progress=False)
error = float((mc.nngp - kernel.nngp).norm() / kernel.nngp.norm())
print(f"Monte Carlo over {samples} networks vs the analytic NNGP: relative error {error:.3f}")

fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
for ax, matrix, title in zip(axes, (kernel.nngp, mc.nngp, kernel.ntk),
                             ("analytic NNGP", f"Monte Carlo NNGP ({samples} nets)", "analytic NTK"), strict=True):
    shown = ax.imshow(matrix, cmap="viridis")
    ax.set_title(title)
    ax.set_xlabel("image")
    fig.colorbar(shown, ax=ax)
axes[0].set_ylabel("image")
fig.tight_layout()
