"""Gradient descent on the coefficients alpha of f = K alpha (lecture 21), or the same
loss descended in function space, recording alpha_t and f_t."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .._core.validation import as_targets, as_tensor, one_of, positive, positive_int, record_steps
from .linalg import square_kernel


@dataclass
class GradientDescentPath:
    """Iterates of kernel gradient descent, recorded at `steps`.

    alpha: [T, N, K]; f_train = K alpha_t: [T, N, K]; f_test = K_test alpha_t:
    [T, N_test, K] (None without `k_test_train`); loss = ||K alpha - y||^2 / (2 |y|): [T];
    learning_rate: the step on that loss (ntklab's convention).

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> k = torch.tensor([[2.0, 1.0], [1.0, 4.0]], dtype=torch.float64)
    >>> y = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    >>> path = nk.predict.gradient_descent_alpha(k, y, steps=5, record=[0, 5])
    >>> path.alpha.shape, path.loss.shape
    (torch.Size([2, 2, 1]), torch.Size([2]))
    """

    steps: torch.Tensor
    alpha: torch.Tensor
    f_train: torch.Tensor
    f_test: torch.Tensor | None
    loss: torch.Tensor
    learning_rate: float
    space: str


def gradient_descent_alpha(k_train_train, y_train, *, steps: int, learning_rate: float | None = None,
                           k_test_train=None, space: str = "alpha", alpha0=None,
                           record: int | Sequence[int] = 20) -> GradientDescentPath:
    """Gradient descent on the coefficients alpha of f = K alpha for the loss
    L(alpha) = ||K alpha - y||^2 / (2 |y|) (ntklab's convention, see the module
    docstring; the lecture's g = ||K alpha - y||^2 is 2 |y| L), with c = learning_rate / |y|:

    space="alpha":    alpha <- alpha - c K (K alpha - y)                 (lecture 21)
                      so f_{t+1}(x) - f_t(x) = -c sum_i (f_t - y)_i H(x, x_i)
                      with the tangent kernel in alpha, H(x, x') = sum_j K(x, x_j) K(x_j, x').
    space="function": alpha <- alpha - c (K alpha - y), gradient descent on
                      f = <w, Phi(.)> in feature space, so the change is exactly
                      -c sum_i (f_t - y)_i K(x, x_i) (the MSE dynamics of `train`).
    Both converge to alpha* = K^-1 y for positive definite K (and "alpha" for
    any invertible symmetric K).  `record`: a count of geometrically spaced steps
    or a list of steps (as in `train`).  `learning_rate=None` takes the fastest
    stable constant step, 2 |y| / (l_max^2 + l_min^2) resp. 2 |y| / (l_max + l_min),
    from K's eigenvalues l (absolute values for "alpha").

    Parameters
    ----------
    k_train_train, y_train : tensors
    steps : int
    learning_rate : float, optional
    k_test_train : tensor, optional
    space : {"alpha", "function"}
    alpha0 : tensor, optional
    record : int or sequence of int

    Returns
    -------
    GradientDescentPath

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> theta = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    >>> y = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    >>> path = nk.predict.gradient_descent_alpha(theta, y, steps=200, record=[0, 200])
    >>> float((path.f_train[-1] - y).abs().max()) < 1e-8
    True
    """
    k = square_kernel(k_train_train, "k_train_train")
    y, vector = as_targets(y_train, k.shape[0], "y_train", k.dtype, k.device)
    space = one_of(space, "space", ("alpha", "function"))
    steps = positive_int(steps, "steps")
    size = y.numel()
    if learning_rate is None:
        evals = torch.linalg.eigvalsh(k)
        if space == "alpha":
            mags = evals.abs()
            learning_rate = 2.0 * size / float(mags.max() ** 2 + mags.min() ** 2)
        else:
            if float(evals[0]) <= 0:
                raise ValueError("space='function' needs a positive definite k_train_train; "
                                 "use space='alpha' for indefinite kernels")
            learning_rate = 2.0 * size / float(evals[-1] + evals[0])
    eta = positive(learning_rate, "learning_rate")
    rate = eta / size
    k_td = None
    if k_test_train is not None:
        k_td = as_tensor(k_test_train, "k_test_train", dtype=k.dtype, device=k.device)
        if k_td.ndim != 2 or k_td.shape[1] != k.shape[0]:
            raise ValueError(f"k_test_train must have shape [N_test, {k.shape[0]}], got "
                             f"{tuple(k_td.shape)}")
    alpha = torch.zeros_like(y) if alpha0 is None else as_targets(
        alpha0, k.shape[0], "alpha0", k.dtype, k.device)[0].clone()

    recorded = record_steps(record, steps)
    wanted, snapshots = set(recorded), []
    for step in range(steps + 1):
        if step in wanted:
            snapshots.append(alpha.clone())
        if step == steps:
            break
        residual = k @ alpha - y
        alpha -= rate * (k @ residual if space == "alpha" else residual)
    alphas = torch.stack(snapshots)
    f_train = k @ alphas
    loss = (f_train - y).square().sum((1, 2)) / (2 * size)
    f_test = None if k_td is None else k_td @ alphas
    if vector:
        alphas, f_train = alphas[..., 0], f_train[..., 0]
        f_test = None if f_test is None else f_test[..., 0]
    return GradientDescentPath(torch.tensor(recorded), alphas, f_train, f_test, loss, eta, space)
