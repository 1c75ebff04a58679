"""Elementwise nonlinearities and their infinite-width kernel maps.

For a layer h = phi(z) with z ~ GP(0, K), the maps are (Neal 1996; Jacot et al. 2018)
    K'(x, x')     = E[phi(u) phi(v)],
    Theta'(x, x') = E[phi'(u) phi'(v)] Theta(x, x'),
with (u, v) ~ N(0, [[K(x,x), K(x,x')], [K(x,x'), K(x',x')]]).  Each activation
implements `dual(cov, var1, var2) -> (E[phi(u)phi(v)], E[phi'(u)phi'(v)])`
elementwise over a block of pairs; the closed forms are written in the
docstrings, each with its paper.  Activations
without a closed form (`Tanh`, `Sigmoid`, any `Elementwise(fn)`) use 2-D
Gauss-Hermite quadrature (`ntklab.arch.quadrature`).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from .._core import transforms
from .._core.validation import positive
from .buffers import in_place_ok, scratch
from .conv import flatten_state
from .fused import fusible
from .layer import Layer
from .state import KernelState


class ActivationModule(nn.Module):
    """Finite-width elementwise nonlinearity."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], name: str):
        super().__init__()
        self.fn, self.name = fn, name

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fn(z)

    def extra_repr(self) -> str:
        return self.name


class Activation(Layer[KernelState, KernelState]):
    """Base class: subclasses define `fn` (torch, elementwise) and `dual`, and declare `smooth`:
    phi is twice continuously differentiable, which the dNTK and ddNTK statistics (their
    phi'' terms) require; kinked activations (ReLU, abs, sign) are not."""

    smooth: bool = False
    in_place: bool = False   # has `dual_update_`, the in-place map of the pairs
    mask_rule = "elementwise"
    same_position_variances = True   # reads variances through KernelState.marginal/self_variances

    def fn(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dual(self, cov: torch.Tensor, var1: torch.Tensor, var2: torch.Tensor,
             need_dot: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(E[phi(u)phi(v)], E[phi'(u)phi'(v)]) for covariance `cov` and variances
        `var1`, `var2` broadcastable against `cov`."""
        raise NotImplementedError

    def build(self, in_shape, generator, dtype):
        return ActivationModule(self.fn, repr(self)), in_shape

    def kernel_map(self, k: KernelState) -> KernelState:
        """Requires Gaussian inputs (`k.is_gaussian`); the outputs are not Gaussian.  After
        `Flatten` of images or sequences it maps each position's pairs (`k.positions`) and
        averages them again (phi commutes with flattening)."""
        if not k.is_gaussian:
            raise ValueError(f"{self!r}: the input to an activation must be Gaussian (the output "
                             f"of nk.Dense or nk.Conv); put a Dense/Conv layer before it, e.g. "
                             f"nk.serial(nk.Dense(512), {self!r}, ...)")
        if k.positions is not None:
            return flatten_state(self.kernel_map(k.positions))
        pair = (k.nngp, *k.pair_variances(), k.ntk)
        if (self.in_place and not k.fused and in_place_ok(*pair)
                and torch.broadcast_shapes(pair[1].shape, pair[2].shape) == k.nngp.shape):
            nngp, ntk = self.dual_update_(*pair)
            var1, var2 = k.map_variances(lambda var: self.dual_update_(var, *k.self_variances(var), None)[0])
        else:
            nngp, ntk = dual_update(self, *pair, fused=k.fused)
            var1, var2 = k.map_variances(lambda var: self.dual(var, *k.self_variances(var), False)[0])
        return k.replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2, is_gaussian=False)

    def dual_update_(self, cov: torch.Tensor, var1: torch.Tensor, var2: torch.Tensor,
                     ntk: torch.Tensor | float | None) -> tuple[torch.Tensor, torch.Tensor | float | None]:
        """`dual_update` written over `cov` and `ntk` (both consumed), for the activations that
        declare `in_place`; eager, without autograd or `torch.func` (`buffers.in_place_ok`)."""
        raise NotImplementedError


@fusible
def dual_update(activation: Activation, cov, var1, var2, ntk):
    """`(E[phi(u)phi(v)], E[phi'(u)phi'(v)] ntk)`: the pair part of an activation's map (fused
    into one pass when compiled; eager, the NTK product is in place)."""
    nngp, dot = activation.dual(cov, var1, var2, need_dot=ntk is not None)
    if ntk is None:
        return nngp, None
    if isinstance(ntk, float) or torch.compiler.is_compiling():
        return nngp, dot * ntk
    return nngp, ntk.mul_(dot)


def _tiny(t: torch.Tensor) -> float:
    return torch.finfo(t.dtype).tiny


def arc_cosine_angle(cov, var1, var2):
    """theta = arccos(c / sqrt(v1 v2)) as atan2(sqrt(v1 v2 - c^2), c), and the root
    sqrt(v1 v2 - c^2) = sqrt(v1 v2) sin(theta).  Exactly 0 for identical inputs
    (c = v1 = v2), unlike arccos of a rounded ratio; pairs with a zero-variance
    input get theta = pi/2 (neural-tangents' convention)."""
    root = var1 * var2  # sub_ (not a fused addcmul): exactly 0 when cov = var1 = var2
    root = root.sub_(cov * cov) if root.shape == cov.shape else root - cov * cov
    if root.requires_grad or transforms.transformed(root):  # (torch.func may hide requires_grad)
        # sqrt(max(d, tiny)) [d > tiny]: exactly 0 at d <= 0, with gradient 0
        inside = root > _tiny(cov)  # there (the exact limit of the dual's derivatives at
        root = root.clamp_(min=_tiny(cov)).sqrt_().mul_(inside)  # correlation 1), never inf * 0
    else:
        root = root.clamp_(min=0.0).sqrt_()
    theta = torch.atan2(root, cov)
    if (torch.compiler.is_compiling() or transforms.transformed(cov, var1, var2)   # unreadable: always
            or not (var1.all() and var2.all())):   # eager: a cheap check on the variances
        theta = theta.masked_fill((root == 0) & (cov == 0), math.pi / 2)
    return theta, root


def arc_cosine_angle_(cov, var1, var2, root, theta) -> None:
    """`arc_cosine_angle` into the tensors `root` and `theta` of `cov`'s shape (`var1 var2`
    must broadcast to it), with the same operations in the same order: the same numbers."""
    torch.mul(var1, var2, out=root)
    root.sub_(torch.mul(cov, cov, out=theta)).clamp_(min=0.0).sqrt_()
    torch.atan2(root, cov, out=theta)
    if not (var1.all() and var2.all()):
        theta.masked_fill_((root == 0) & (cov == 0), math.pi / 2)


class ABRelu(Activation):
    """phi(x) = a min(x, 0) + b max(x, 0).  With theta = arccos(c / sqrt(v1 v2)):

        E[phi phi]   = (a-b)^2/(2 pi) sqrt(v1 v2) sin(theta) + [(a^2+b^2)/2 - (a-b)^2 theta/(2 pi)] c
        E[phi' phi'] = (a^2+b^2)/2 - (a-b)^2 theta / (2 pi)

    (arc-cosine kernel of Cho & Saul 2009; ReLU: a=0, b=1 gives
    sqrt(v1 v2)/(2 pi) (sin theta + (pi - theta) cos theta) and (pi - theta)/(2 pi)).

    Parameters
    ----------
    a, b : float
        Slopes for negative and positive inputs: phi(z) = a min(z, 0) + b max(z, 0).

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> x = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    >>> nk.serial(nk.Dense(1), nk.ABRelu(-0.5, 1.0)).kernel(x, get="nngp")
    tensor([[0.3125, 0.2311],
            [0.2311, 0.3125]], dtype=torch.float64)
    """

    in_place = True

    def __init__(self, a: float, b: float):
        self.a, self.b = float(a), float(b)

    def fn(self, z):
        return self.a * torch.clamp(z, max=0) + self.b * torch.clamp(z, min=0)

    def dual(self, cov, var1, var2, need_dot=True):
        theta, root = arc_cosine_angle(cov, var1, var2)
        slope = (self.a - self.b) ** 2 / (2 * math.pi)
        dot = theta.mul_(-slope).add_((self.a ** 2 + self.b ** 2) / 2)
        nngp = root.mul_(slope).addcmul_(dot, cov)
        return nngp, dot if need_dot else None

    def dual_update_(self, cov, var1, var2, ntk):
        """`dual` and the NTK product written over `cov` and `ntk`, the root and the angle in
        two scratch tensors (`buffers.scratch`) instead of new ones; the same numbers."""
        slope = (self.a - self.b) ** 2 / (2 * math.pi)
        with scratch(cov, 2) as (root, theta):
            arc_cosine_angle_(cov, var1, var2, root, theta)
            dot = theta.mul_(-slope).add_((self.a ** 2 + self.b ** 2) / 2)
            if isinstance(ntk, torch.Tensor):
                ntk.mul_(dot)
            elif ntk is not None:   # the identically zero NTK (0.0) becomes a tensor, as `dual_update`'s
                ntk = dot * ntk
            return cov.copy_(root.mul_(slope).addcmul_(dot, cov)), ntk


class Relu(ABRelu):
    """ReLU, phi(x) = max(x, 0).

    Examples
    --------
    >>> import math, torch, ntklab as nk
    >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)   # orthogonal, K = 1/2
    >>> k = nk.serial(nk.Dense(1), nk.Relu()).kernel(x, get="nngp")       # arc-cosine at θ = π/2
    >>> round(float(k[0, 1]) * 2 * math.pi, 10), round(float(k[0, 0]), 10)
    (0.5, 0.25)
    """

    def __init__(self):
        super().__init__(0.0, 1.0)

    def fn(self, z):
        return torch.relu(z)


class LeakyRelu(ABRelu):
    """phi(x) = alpha min(x, 0) + max(x, 0).

    Parameters
    ----------
    alpha : float
        The slope for negative inputs.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> x = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    >>> nk.serial(nk.Dense(1), nk.LeakyRelu(0.1)).kernel(x, get="nngp")
    tensor([[0.2525, 0.1672],
            [0.1672, 0.2525]], dtype=torch.float64)
    """

    def __init__(self, alpha: float = 0.01):
        super().__init__(positive(alpha, "alpha", allow_zero=True), 1.0)


class Abs(ABRelu):
    """phi(x) = |x|.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> x = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    >>> nk.serial(nk.Dense(1), nk.Abs()).kernel(x, get="nngp")
    tensor([[0.5000, 0.3775],
            [0.3775, 0.5000]], dtype=torch.float64)
    """

    def __init__(self):
        super().__init__(-1.0, 1.0)

    def fn(self, z):
        return torch.abs(z)


class Erf(Activation):
    """phi(x) = a erf(b x) + c (Williams 1997).  With s = 2 b^2 and
    P = (1 + s v1)(1 + s v2):

        E[phi phi]   = a^2 (2/pi) arcsin(s c' / sqrt(P)) + c^2
        E[phi' phi'] = a^2 b^2 (4/pi) / sqrt(P - s^2 c'^2)

    where c' is the input covariance.

    Parameters
    ----------
    a, b, c : float
        phi(z) = a erf(b z) + c.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> x = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    >>> nk.serial(nk.Dense(1), nk.Erf()).kernel(x, get="nngp")
    tensor([[0.3333, 0.1940],
            [0.1940, 0.3333]], dtype=torch.float64)
    """

    smooth = True

    def __init__(self, a: float = 1.0, b: float = 1.0, c: float = 0.0):
        self.a, self.b, self.c = float(a), positive(b, "b (input scale of Erf)"), float(c)

    def fn(self, z):
        return self.a * torch.erf(self.b * z) + self.c

    def dual(self, cov, var1, var2, need_dot=True):
        s = 2 * self.b ** 2
        prod = (1 + s * var1) * (1 + s * var2)
        scov = s * cov
        root = (prod - scov * scov).clamp_(min=_tiny(cov)).sqrt_()
        nngp = torch.atan2(scov, root).mul_(self.a ** 2 * 2 / math.pi).add_(self.c ** 2)
        dot = root.reciprocal_().mul_(self.a ** 2 * self.b ** 2 * 4 / math.pi) if need_dot else None
        return nngp, dot


class Sigmoid_like(Erf):  # noqa: N801 -- neural-tangents' name
    """neural-tangents' erf-based sigmoid, phi(x) = erf(x / 2.4020563531719796) / 2 + 1/2.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> x = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    >>> nk.serial(nk.Dense(1), nk.Sigmoid_like()).kernel(x, get="nngp")
    tensor([[0.2736, 0.2641],
            [0.2641, 0.2736]], dtype=torch.float64)
    """

    def __init__(self):
        super().__init__(a=0.5, b=1 / 2.4020563531719796, c=0.5)


class Sign(Activation):
    """Threshold activation phi(x) = sign(x):  E[phi phi] = 1 - 2 theta / pi.
    Its derivative is 0 almost everywhere, so (as in neural-tangents and in
    autograd of the finite network) the NTK is not propagated through it.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> x = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    >>> nk.serial(nk.Dense(1), nk.Sign()).kernel(x, get="nngp")
    tensor([[1.0000, 0.4097],
            [0.4097, 1.0000]], dtype=torch.float64)
    """

    def fn(self, z):
        return torch.sign(z)

    def dual(self, cov, var1, var2, need_dot=True):
        nngp = arc_cosine_angle(cov, var1, var2)[0].mul_(-2 / math.pi).add_(1.0)
        return nngp, torch.zeros_like(nngp) if need_dot else None
