"""Kernel maps of any elementwise function by Gauss-Hermite quadrature.

E[phi(u) phi(v)] with (u, v) ~ N(0, [[v1, c], [c, v2]]) is written with
u = sqrt(v1) z1 and v = sqrt(v2) (rho z1 + sqrt(1 - rho^2) z2), rho = c / sqrt(v1 v2),
z1, z2 iid N(0, 1), and each 1-D Gaussian expectation is a probabilists'
Gauss-Hermite rule with `n_points` nodes (exact for polynomials of degree
< 2 n_points).  phi' comes from autograd of `fn`.  Converges exponentially for
smooth phi: at the default 256 nodes erf agrees with its closed form to 1e-15
and tanh with a 1024-node rule to 6e-10 for variances up to 4 (128 nodes: 2e-10
and 6e-7); steeper phi(sqrt(v) z), i.e. larger variances, need more nodes.  For kinked phi such as
ReLU it converges only algebraically: use the closed-form layers for those.
Cost: n_points^2 evaluations of phi per pair of inputs.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable

import numpy as np
import torch
from scipy.special import roots_hermitenorm

from .._core import transforms
from .._core.validation import positive_int
from .activations import Activation


@lru_cache(maxsize=16)
def _hermite_rule(n_points: int) -> tuple[np.ndarray, np.ndarray]:
    nodes, weights = roots_hermitenorm(n_points)  # stable for large n, unlike numpy's hermegauss
    return nodes, weights / weights.sum()


def _derivative(fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    """phi'(z) elementwise, keeping any graph `z` carries (a kernel differentiated with respect to
    its inputs or hyperparameters: phi'(z)'s own derivative is phi''(z) dz, so gradients of the
    NTK term E[phi'(u) phi'(v)] are exact).  By autograd of `fn`, or under torch.func
    transforms (where autograd.grad cannot run) by forward mode along ones (`torch.func.jvp`,
    10-25 % slower eager, measured)."""
    if transforms.transformed(z):
        return torch.func.jvp(fn, (z,), (torch.ones_like(z),))[1]
    with torch.enable_grad():
        differentiable = z.requires_grad
        z = z if differentiable else z.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(fn(z).sum(), z, create_graph=differentiable)
    return grad


class Elementwise(Activation):
    """Any elementwise torch function `fn`; kernel from the user's closed-form NNGP `dual`
    when given, else by Gauss-Hermite quadrature with `n_points` nodes per dimension.

    `dual(cov, var1, var2)` must return E[fn(u) fn(v)] for (u, v) ~ N(0, [[var1, cov],
    [cov, var2]]), elementwise on broadcastable tensors, written in torch; the NTK factor
    E[fn'(u) fn'(v)] is its derivative in `cov` (Price's theorem), taken by autograd (as
    neural-tangents' `stax.Elementwise(fn, nngp_fn)`).

    Example: `nk.Elementwise(torch.sin)`.  A named module-level function (such as
    `torch.sin`) identifies the layer exactly; a lambda or a local function does not,
    so a tiled kernel store will not resume it (see `Layer.identity`).

    Parameters
    ----------
    fn : callable
        Elementwise torch function phi.
    n_points : int
        Gauss-Hermite nodes per dimension (when `dual` is None).
    dual : callable, optional
        Closed-form NNGP map `dual(cov, var1, var2) -> E[phi(u) phi(v)]`; the NTK factor then comes
        from autograd (Price's theorem).
    smooth : bool
        Declares `fn` twice continuously differentiable (as tanh, sin), which the dNTK and ddNTK
        statistics need; autograd cannot tell (it returns 0 for relu''), so it is not assumed.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> swish = nk.Elementwise(lambda z: z * torch.sigmoid(z))              # kernel by quadrature
    >>> nk.serial(nk.Dense(64), swish, nk.Dense(1)).kernel(torch.randn(3, 2), get="nngp").shape
    torch.Size([3, 3])
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], n_points: int = 256,
                 dual: Callable[..., torch.Tensor] | None = None, smooth: bool = False):
        if not callable(fn):
            raise ValueError(f"fn must be a callable elementwise torch function, got {fn!r}")
        if dual is not None and not callable(dual):
            raise ValueError(f"dual must be a callable dual(cov, var1, var2) -> E[fn(u) fn(v)], "
                             f"got {dual!r}")
        self._fn, self._dual, self.smooth = fn, dual, bool(smooth)
        self.quadrature_points = 1 if dual is not None else positive_int(n_points, "n_points")

    def fn(self, z):
        return self._fn(z)

    def dual(self, cov, var1, var2, need_dot=True):
        if self._dual is not None:
            return self._closed_form(cov, var1, var2, need_dot)
        return self._quadrature(cov, var1, var2, need_dot)

    def _closed_form(self, cov, var1, var2, need_dot):
        """The user's `dual` and its derivative in `cov` (forward mode, as `_derivative`; a
        differentiated kernel keeps both in the graph)."""
        if not need_dot:
            return self._dual(cov, var1, var2), None
        point = cov.expand(torch.broadcast_shapes(cov.shape, var1.shape, var2.shape))
        return torch.func.jvp(lambda c: self._dual(c, var1, var2), (point,), (torch.ones_like(point),))

    def _quadrature(self, cov, var1, var2, need_dot):
        nodes, weights = (torch.as_tensor(a, dtype=cov.dtype, device=cov.device)
                          for a in _hermite_rule(self.quadrature_points))
        s1, s2 = torch.sqrt(var1), torch.sqrt(var2)
        rho = (cov / (s1 * s2).clamp_min(torch.finfo(cov.dtype).tiny)).clamp_(-1.0, 1.0)
        rest = torch.sqrt((1 - rho * rho).clamp_(min=torch.finfo(cov.dtype).tiny))
        shape = torch.broadcast_shapes(cov.shape, var1.shape, var2.shape)
        nngp = cov.new_zeros(shape)
        dot = cov.new_zeros(shape) if need_dot else None
        inner_nodes = nodes.reshape((-1,) + (1,) * len(shape))
        inner_weights = weights.reshape(inner_nodes.shape)
        for z1, w1 in zip(nodes, weights, strict=True):
            u = s1 * z1
            v = s2 * (rho * z1 + rest * inner_nodes)          # [n_points, *shape]
            nngp += w1 * self.fn(u) * (inner_weights * self.fn(v)).sum(0)
            if need_dot:
                dot += w1 * _derivative(self.fn, u) * (inner_weights * _derivative(self.fn, v)).sum(0)
        return nngp, dot


class Tanh(Elementwise):
    """tanh, by quadrature (no closed form).

    Parameters
    ----------
    n_points : int
        Gauss-Hermite nodes per dimension of the 2-D quadrature.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> x = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    >>> nk.serial(nk.Dense(1), nk.Tanh()).kernel(x, get="nngp")
    tensor([[0.2737, 0.1602],
            [0.1602, 0.2737]], dtype=torch.float64)
    """

    def __init__(self, n_points: int = 256):
        super().__init__(torch.tanh, n_points, smooth=True)


class Sigmoid(Elementwise):
    """Logistic sigmoid 1 / (1 + e^-x), by quadrature (no closed form);
    see `Sigmoid_like` for neural-tangents' closed-form erf approximation.

    Parameters
    ----------
    n_points : int
        Gauss-Hermite nodes per dimension of the 2-D quadrature.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> x = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    >>> nk.serial(nk.Dense(1), nk.Sigmoid()).kernel(x, get="nngp")
    tensor([[0.2754, 0.2652],
            [0.2652, 0.2754]], dtype=torch.float64)
    """

    def __init__(self, n_points: int = 256):
        super().__init__(torch.sigmoid, n_points, smooth=True)


class Gelu(Activation):
    """phi(x) = x Phi(x), the exact GELU, or with `approximate=True` its tanh approximation
    x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2 (Hendrycks & Gimpel 2016; torch's and jax's
    `gelu(approximate=...)`).  The exact GELU's kernel is the closed form of Tsuchida, Pearce,
    van der Heide, Roosta & Gallagher (2021, arXiv:2002.08517): with P = v1 v2,
    Q = (v1 + 1)(v2 + 1), D = sqrt(Q - c^2), A = arctan(c / D):

        E[phi phi]   = c/4 + [ (c^2 + P D^2) / (Q D) + c A ] / (2 pi)
        E[phi' phi'] = 1/4 + A/(2 pi) + c/(2 pi D) (1/D^2 + (1 - P)/Q + 1)

    The tanh approximation has no closed form: its kernel is the Gauss-Hermite quadrature of
    `Elementwise` with `n_points` nodes (neural-tangents' `Gelu(approximate=True)` runs the
    approximation in the finite network but returns the exact GELU's kernel).

    Parameters
    ----------
    approximate : bool
        The tanh approximation (kernel by quadrature) instead of the exact GELU (closed form).
    n_points : int
        Gauss-Hermite nodes per dimension for `approximate=True`.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> x = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    >>> nk.serial(nk.Dense(1), nk.Gelu()).kernel(x, get="nngp")
    tensor([[0.1896, 0.1149],
            [0.1149, 0.1896]], dtype=torch.float64)
    """

    smooth = True

    def __init__(self, approximate: bool = False, n_points: int = 256):
        if not isinstance(approximate, bool):
            raise ValueError(f"approximate must be True or False, got {approximate!r}")
        self.approximate = approximate
        self._quadrature = Elementwise(_tanh_gelu, n_points) if approximate else None
        self.quadrature_points = positive_int(n_points, "n_points") if approximate else 1

    def fn(self, z):
        return _tanh_gelu(z) if self.approximate else torch.nn.functional.gelu(z)

    def dual(self, cov, var1, var2, need_dot=True):
        if self._quadrature is not None:
            return self._quadrature.dual(cov, var1, var2, need_dot)
        prod, prod1 = var1 * var2, (var1 + 1) * (var2 + 1)
        d2 = prod1 - cov * cov
        d = torch.sqrt(d2)
        angle = torch.atan2(cov, d)
        nngp = ((cov * cov + prod * d2) / (prod1 * d) + cov * angle) / (2 * math.pi) + cov / 4
        dot = None
        if need_dot:
            dot = 0.25 + angle / (2 * math.pi) + cov / (2 * math.pi * d) * (1 / d2 + (1 - prod) / prod1 + 1)
        return nngp, dot


def _tanh_gelu(z: torch.Tensor) -> torch.Tensor:
    """GELU's tanh approximation (torch's `gelu(z, approximate="tanh")`)."""
    return torch.nn.functional.gelu(z, approximate="tanh")
