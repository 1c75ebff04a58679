"""An ntklab architecture as a scikit-learn Gaussian-process kernel."""
from __future__ import annotations

from typing import cast

import numpy as np
import torch
from sklearn.gaussian_process.kernels import Hyperparameter, Kernel

from .gp import BOUNDS, resolve_architecture, tie_stds

DIAGONAL_BLOCK = 256
"""`ArchitectureKernel.diag` computes the kernel in blocks of this many samples."""


class ArchitectureKernel(Kernel):
    """The NNGP or NTK of an infinitely wide network as a
    `sklearn.gaussian_process.kernels.Kernel`, with hyperparameters W_std and b_std: the
    kernel of `architecture` with every Dense layer's W_std set to `W_std` and its b_std (where
    it has a bias) to `b_std` (tied, as `nk.mlp` makes them; the architecture may hold Dense
    layers and layers without W_std / b_std).  `__call__(X, eval_gradient=True)` returns the
    gradient with respect to log W_std and log b_std (scikit-learn's `theta`), computed by
    torch autograd through the kernel (two reverse passes), so `GaussianProcessRegressor` can
    tune them, e.g. `GaussianProcessRegressor(ArchitectureKernel() + WhiteKernel())`.

    At fixed hyperparameters, `GaussianProcessRegressor(ArchitectureKernel(net), alpha=diag_reg *
    mean(diag K), optimizer=None)` is `NNGPRegressor(net, diag_reg=diag_reg)`.

    Parameters
    ----------
    architecture : Serial or str, optional
        An ntklab architecture of vectors (default: the estimators', a 2-hidden-layer ReLU MLP).
    get : {"nngp", "ntk"}
    W_std, b_std : float
        The tied standard deviations (> 0).
    W_std_bounds, b_std_bounds : pair of floats or "fixed"
        Their range for the optimizer (default `gp.BOUNDS`).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.gaussian_process import GaussianProcessRegressor
    >>> from sklearn.gaussian_process.kernels import WhiteKernel
    >>> from ntklab.sklearn import ArchitectureKernel
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(20, 3))
    >>> y = np.sin(X[:, 0]) + 0.1 * rng.normal(size=20)
    >>> gp = GaussianProcessRegressor(ArchitectureKernel() + WhiteKernel()).fit(X, y)
    >>> bool(gp.kernel_.k1.W_std != 1.5)                  # tuned by the marginal likelihood
    True
    """

    def __init__(self, architecture=None, get="nngp", W_std=1.5, b_std=0.05,
                 W_std_bounds=BOUNDS["W_std"], b_std_bounds=BOUNDS["b_std"]):
        self.architecture = architecture
        self.get = get
        self.W_std = W_std
        self.b_std = b_std
        self.W_std_bounds = W_std_bounds
        self.b_std_bounds = b_std_bounds

    @property
    def hyperparameter_W_std(self) -> Hyperparameter:
        """W_std, searched in `W_std_bounds` on a log scale."""
        return Hyperparameter("W_std", "numeric", self.W_std_bounds)

    @property
    def hyperparameter_b_std(self) -> Hyperparameter:
        """b_std, searched in `b_std_bounds` on a log scale."""
        return Hyperparameter("b_std", "numeric", self.b_std_bounds)

    def _matrix(self, X, Y, W_std, b_std) -> torch.Tensor:
        if self.get not in ("nngp", "ntk"):
            raise ValueError(f"get must be 'nngp' or 'ntk', got {self.get!r}")
        net = tie_stds(resolve_architecture(self.architecture), W_std, b_std)
        x, y = (None if a is None else torch.as_tensor(np.array(a, dtype=np.float64)) for a in (X, Y))
        return cast(torch.Tensor, net.kernel(x, y, get=self.get))

    def __call__(self, X, Y=None, eval_gradient=False):
        """K(X, Y) [n_X, n_Y]; with `eval_gradient` (Y None) also dK/d theta [n_X, n_X, free
        hyperparameters], theta = (log W_std, log b_std) less the fixed ones."""
        if not eval_gradient:
            return self._matrix(X, Y, self.W_std, self.b_std).numpy()
        if Y is not None:
            raise ValueError("Gradient can only be evaluated when Y is None.")
        log_stds = torch.tensor(np.log([self.W_std, self.b_std]), dtype=torch.float64,
                                requires_grad=True)
        k = self._matrix(X, None, *log_stds.exp())
        # the Jacobian of K by two reverse passes: g(v) = (dK/dtheta)^T v is linear in v, and
        # dg_i/dv = dK/dtheta_i
        v = torch.zeros_like(k, requires_grad=True)
        (g,) = torch.autograd.grad(k, log_stds, grad_outputs=v, create_graph=True)
        free = [i for i, h in enumerate((self.hyperparameter_W_std, self.hyperparameter_b_std))
                if not h.fixed]
        columns = [torch.autograd.grad(g[i], v, retain_graph=True, allow_unused=True,
                                       materialize_grads=True)[0] if g[i].requires_grad
                   else torch.zeros_like(k) for i in free]
        gradient = torch.stack(columns, dim=-1) if columns else k.new_zeros((*k.shape, 0))
        return k.detach().numpy(), gradient.detach().numpy()

    def diag(self, X):
        """K(x, x) for each row of X (computed in blocks of `DIAGONAL_BLOCK` samples)."""
        return np.concatenate([np.diag(self(X[i:i + DIAGONAL_BLOCK]))
                               for i in range(0, len(X), DIAGONAL_BLOCK)])

    def is_stationary(self):
        """False: the kernel depends on the inputs, not only on their difference."""
        return False
