"""
The nearly-kernel expansion of a quadratic model
================================================

Roberts, Yaida & Hanin (ch. 11): a model quadratic in its parameters, with feature-learning
strength ε, trained by gradient descent. Its kernel prediction is off by O(ε); the nearly-kernel
prediction, built from the kernel and the meta kernel alone, by O(ε²).
"""
import matplotlib.pyplot as plt
import numpy as np
import torch

from ntklab.lab.spectrum import inverse_largest_eigenvalue
from ntklab.lab.studies import quadratic as Q

g = torch.Generator().manual_seed(0)
x = torch.randn(46, 3, generator=g, dtype=torch.float64)
y = (torch.sin(x[:, 0]) + 0.5 * x[:, 1] * x[:, 2])[:, None]
x_train, y_train, x_test = x[:6], y[:6], x[6:]
epsilons = np.array([0.005, 0.01, 0.02, 0.04, 0.08])
kernel_error, nearly_error = [], []
for eps in epsilons:
    model = Q.random_model(3, 30, float(eps), seed=2)
    eta = inverse_largest_eigenvalue(model.kernel(x_train, x_train))
    W = Q.train_gd(model, x_train, y_train, learning_rate=eta, steps=3000)[-1]
    trained = model.output(W, x_test)
    prediction = Q.nearly_kernel_prediction(model, x_train, y_train, x_test, algorithm="gd",
                                            learning_rate=eta)
    kernel_error.append(float((trained - prediction["kernel"]).abs().max()))
    nearly_error.append(float((trained - prediction["nearly_kernel"]).abs().max()))
slopes = [np.polyfit(np.log(epsilons), np.log(e), 1)[0] for e in (kernel_error, nearly_error)]
print(f"slopes: kernel {slopes[0]:.2f} (theory 1), nearly-kernel {slopes[1]:.2f} (theory 2)")

# %%
fig, ax = plt.subplots(figsize=(5.5, 3.8))
ax.loglog(epsilons, kernel_error, "o-", label=f"kernel prediction (slope {slopes[0]:.2f})")
ax.loglog(epsilons, nearly_error, "s-", label=f"nearly-kernel prediction (slope {slopes[1]:.2f})")
ax.set_xlabel("ε")
ax.set_ylabel("max |z_trained - prediction|")
ax.set_title("GD on a quadratic model")
ax.legend()
fig.tight_layout()
