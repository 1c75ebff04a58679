"""A wide network trains like its linearization, which trains like kernel regression with its
empirical NTK at initialization (Lee et al. 2019; Jacot et al. 2018).

Networks (NTK parameterization, 10 classes): one-hidden-layer ReLU MLPs of width n on
flattened images, and small CNNs of n channels (two 3x3 SAME convolutions + ReLU, global
average pooling).  `distances` trains one by full-batch gradient descent in ntklab's convention
(`ntklab.conventions`: the mean squared loss ||f - y||^2 / (2 |Y|), or cross-entropy) at the
learning rate |Y| / lambda_max(Theta_0) (function-space step 1 / lambda_max), with its
linearization (`nk.train` trains it alongside), and compares along training, on the test set,
the network with its linearization and the linearization with the function-space prediction
from the empirical NTK at initialization at the same time t = step (`kernel_prediction`).
"""
from __future__ import annotations

from typing import Callable

import torch

import ntklab as nk
from ..data import ImageTask
from ..spectrum import inverse_largest_eigenvalue

NETWORKS = {
    "mlp": lambda width, classes: nk.mlp(1, width, W_std=2 ** 0.5, b_std=0.1, out=classes),
    "cnn": lambda width, classes: nk.serial(nk.Conv(width, (3, 3), padding="SAME", W_std=2 ** 0.5, b_std=0.1),
                                            nk.Relu(), nk.Conv(width, (3, 3), padding="SAME", W_std=2 ** 0.5,
                                                               b_std=0.1),
                                            nk.Relu(), nk.GlobalAvgPool(), nk.Dense(classes, b_std=0.1)),
}
"""Architecture families: name -> (width or channels, classes) -> nk.Serial."""


def cross_entropy(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """-mean_i sum_c y_ic log softmax(f_i)_c (the loss neural-tangents' examples use)."""
    return -(torch.log_softmax(f, -1) * y).sum(-1).mean()


LOSSES = {"mse": nk.conventions.mean_squared_loss, "cross-entropy": cross_entropy}


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, 1)


def kernel_prediction(loss_name: str, theta_train: torch.Tensor, theta_test: torch.Tensor, y: torch.Tensor,
                      f0: torch.Tensor, f0_test: torch.Tensor, learning_rate: float, times: list[int]):
    """Test outputs [T, N_test, O] of function-space gradient flow with the full empirical NTK
    ([N, N, O, O] -> [N O, N O]: the outputs are flattened into the sample axis), in ntklab's
    time units (t = step)."""
    n, o = y.shape
    k = theta_train.permute(0, 2, 1, 3).reshape(n * o, n * o)
    k_test = theta_test.permute(0, 2, 1, 3).reshape(len(f0_test) * o, n * o)
    predictor: Callable[..., torch.Tensor | tuple[torch.Tensor, torch.Tensor]]
    if loss_name == "mse":
        predictor = nk.predict.gradient_descent_mse(k, _flat(y), learning_rate)
    else:
        # tolerance 1e-8: ample for distances compared at the 1e-3 level, and 400 time units of a
        # 3000-dimensional ODE stay fast
        def loss(f, target):
            return cross_entropy(f.reshape(n, o), target.reshape(n, o))
        predictor = nk.predict.gradient_descent(loss, k, _flat(y), learning_rate, rtol=1e-8, atol=1e-8)
    _, test = predictor([float(s) for s in times], _flat(f0), _flat(f0_test), k_test)
    assert test is not None   # k_test given
    return test.reshape(len(times), len(f0_test), o)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def distances(task: ImageTask, network: str, width: int, loss_name: str, *, steps: int, record: int,
              seed: int) -> list[dict]:
    """One network trained for `steps` steps: per recorded step, the relative distances on the
    test set between the network, its linearization and the kernel prediction, the training
    loss and the test error."""
    x, x_test = task.x_train, task.x_test
    if network == "mlp":
        x, x_test = x.flatten(1), x_test.flatten(1)
    y = torch.nn.functional.one_hot(task.y_train, task.n_classes).double()
    model = NETWORKS[network](width, task.n_classes).module(tuple(x.shape[1:]), seed=seed, dtype=torch.float64)
    learning_rate = y.numel() * inverse_largest_eigenvalue(model, x)
    with torch.no_grad():
        f0, f0_test = model(x), model(x_test)
    theta_train = nk.empirical_ntk(model, x, mode="full")
    theta_test = nk.empirical_ntk(model, x_test, x, mode="full")
    history = nk.train(model, x, y, steps=steps, learning_rate=learning_rate, loss=LOSSES[loss_name],
                       x_test=x_test, y_test=torch.nn.functional.one_hot(task.y_test, task.n_classes).double(),
                       record=record, track_kernel=False, progress=False)
    kernel = kernel_prediction(loss_name, theta_train, theta_test, y, f0, f0_test, learning_rate, history.steps)
    rows = []
    for i, (step, row) in enumerate(zip(history.steps, history.rows, strict=True)):
        f, f_lin = history.test_predictions[i], history.linear_test_predictions[i]
        rows.append({"network": network, "loss": loss_name, "width": width, "step": step,
                     "network_vs_linearized": _relative(f, f_lin),
                     "linearized_vs_kernel": _relative(f_lin, kernel[i]),
                     "network_vs_kernel": _relative(f, kernel[i]),
                     "train_loss": row["train_loss"], "test_error": row["test_error"]})
    return rows
