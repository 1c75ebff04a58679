"""Classical kernels for kernel regression (Schölkopf & Smola 2002): Gaussian, ball, linear, polynomial.

Each is a callable `k(x1, x2=None) -> Tensor [N1, N2]` (float64 by default), so
it plugs into `ntklab.predict` like an architecture's kernel.
"""
from __future__ import annotations

import torch

from .._core.validation import DEFAULT_DTYPE, as_matrix, check_same_features, positive, positive_int


class _PairwiseKernel:
    def __call__(self, x1, x2=None, *, dtype: torch.dtype = DEFAULT_DTYPE, device=None) -> torch.Tensor:
        x1 = as_matrix(x1, "x1", dtype=dtype, device=device)
        x2 = x1 if x2 is None else as_matrix(x2, "x2", dtype=dtype, device=x1.device)
        check_same_features(x1, x2)
        return self.matrix(x1, x2)

    def matrix(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(" + ", ".join(f"{k}={v!r}" for k, v in vars(self).items()) + ")"


class GaussianKernel(_PairwiseKernel):
    """K(x, y) = exp(-||x - y||^2 / r^2).

    Parameters
    ----------
    r : float
        Length scale: K(x, y) = exp(-||x - y||² / r²).

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> x = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    >>> nk.kernels.GaussianKernel(1.0)(x, x)
    tensor([[1.0000, 0.3679],
            [0.3679, 1.0000]], dtype=torch.float64)
    """

    def __init__(self, r: float = 1.0):
        self.r = positive(r, "r (Gaussian kernel length scale)")

    def matrix(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """The kernel matrix K(x1_i, x2_j), [N1, N2]."""
        return torch.cdist(x1, x2).square_().div_(-self.r ** 2).exp_()


class BallKernel(_PairwiseKernel):
    """K(x, y) = 1{||x - y|| < r}.  Not positive semi-definite in general (the
    Fourier transform of a ball's indicator changes sign), so interpolation with
    it needs `assume_psd=False`.

    Parameters
    ----------
    r : float
        Radius: K(x, y) = 1 if ||x - y|| < r else 0.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> x = torch.tensor([[0.0], [0.5], [2.0]], dtype=torch.float64)
    >>> nk.kernels.BallKernel(1.0)(x, x)
    tensor([[1., 1., 0.],
            [1., 1., 0.],
            [0., 0., 1.]], dtype=torch.float64)
    """

    def __init__(self, r: float = 1.0):
        self.r = positive(r, "r (ball kernel radius)")

    def matrix(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """The kernel matrix K(x1_i, x2_j), [N1, N2]."""
        return (torch.cdist(x1, x2) < self.r).to(x1.dtype)


class LinearKernel(_PairwiseKernel):
    """K(x, y) = <x, y> + c.

    Parameters
    ----------
    c : float
        K(x, y) = x·y + c.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> x = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    >>> nk.kernels.LinearKernel()(x, x)
    tensor([[ 5., 11.],
            [11., 25.]], dtype=torch.float64)
    """

    def __init__(self, c: float = 0.0):
        self.c = positive(c, "c (linear kernel offset)", allow_zero=True)

    def matrix(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """The kernel matrix K(x1_i, x2_j), [N1, N2]."""
        return (x1 @ x2.T).add_(self.c)


class PolynomialKernel(_PairwiseKernel):
    """K(x, y) = (<x, y> + c)^degree.

    Parameters
    ----------
    degree : int
    c : float
        K(x, y) = (x·y + c)^degree.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> x = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    >>> nk.kernels.PolynomialKernel(2)(x, x)
    tensor([[ 36., 144.],
            [144., 676.]], dtype=torch.float64)
    """

    def __init__(self, degree: int = 2, c: float = 1.0):
        self.degree = positive_int(degree, "degree")
        self.c = positive(c, "c (polynomial kernel offset)", allow_zero=True)

    def matrix(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """The kernel matrix K(x1_i, x2_j), [N1, N2]."""
        return (x1 @ x2.T).add_(self.c).pow_(self.degree)
