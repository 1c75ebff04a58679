"""
NNGP and NTK regression with uncertainty bands
==============================================

One description, ``nk.serial(...)``, gives the infinite-width kernels of an MLP. The NNGP posterior
(Bayesian inference with the network prior) and the NTK ensemble (infinitely many infinitely wide
networks trained by gradient flow to convergence, Lee et al. 2019) predict a mean and a
covariance; we draw both with two-standard-deviation bands on a 1-D task.
"""
import os

import matplotlib.pyplot as plt
import torch

import ntklab as nk

FAST = os.environ.get("NTKLAB_DOCS_FAST") == "1"
torch.manual_seed(0)
x_train = torch.linspace(-3, 3, 12 if FAST else 24, dtype=torch.float64)[:, None]
y_train = torch.sin(2 * x_train) + 0.3 * x_train
x_test = torch.linspace(-4.5, 4.5, 200, dtype=torch.float64)[:, None]

net = nk.serial(nk.Dense(512, W_std=1.5, b_std=0.5), nk.Relu(),
                nk.Dense(512, W_std=1.5, b_std=0.5), nk.Relu(), nk.Dense(1, W_std=1.5, b_std=0.5))
kernel = net.kernel(x_train)          # Kernel(nngp, ntk) of the training set with itself
print(kernel.nngp.shape, kernel.ntk.shape)

# %%
# The predictive distributions at t = infinity (``t=None``), from one eigendecomposition.
predict = nk.predict.gradient_descent_mse_ensemble(net, x_train, y_train, diag_reg=1e-6)
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
for ax, get in zip(axes, ("nngp", "ntk"), strict=True):
    mean, cov = predict(t=None, x_test=x_test, get=get, compute_cov=True)
    std = cov.diagonal().clamp(min=0).sqrt()
    ax.plot(x_test[:, 0], mean[:, 0], label=f"{get.upper()} mean")
    ax.fill_between(x_test[:, 0], mean[:, 0] - 2 * std, mean[:, 0] + 2 * std, alpha=0.3,
                    label="± 2 std")
    ax.plot(x_train[:, 0], y_train[:, 0], "k.", label="training data")
    ax.set_title(f"{get.upper()} ensemble at t = ∞")
    ax.set_xlabel("x")
axes[0].set_ylabel("f(x)")
axes[0].legend(fontsize=8)
fig.tight_layout()
