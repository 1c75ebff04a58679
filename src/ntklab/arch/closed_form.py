"""Activations with closed-form Gaussian duals beyond the ReLU/erf families (neural-tangents'
`Sin`, `Cos`, `Rbf`, `Gaussian`, `Exp`, `ExpNormalized`, `Monomial`, `RectifiedMonomial`,
`Polynomial`, `Hermite`).

Each gives, for (u, v) ~ N(0, [[v1, c], [c, v2]]), the pair
    (E[phi(u) phi(v)], E[phi'(u) phi'(v)]);
by Price's theorem the second is d/dc of the first.  The formulas are in each docstring.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
from numpy.polynomial import hermite_e, polynomial

from .._core.validation import positive
from .activations import Activation, arc_cosine_angle


class Sin(Activation):
    """phi(x) = a sin(b x + c).  With S = (v1 + v2)/2:

        E[phi phi]   = a^2/2 (exp(-b^2 (S - cov)) - exp(-b^2 (S + cov)) cos 2c)
        E[phi' phi'] = a^2 b^2/2 (exp(-b^2 (S - cov)) + exp(-b^2 (S + cov)) cos 2c)

    Parameters
    ----------
    a, b, c : float
        phi(z) = a sin(b z + c).

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> x = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    >>> nk.serial(nk.Dense(1), nk.Sin()).kernel(x, get="nngp")
    tensor([[0.3161, 0.1847],
            [0.1847, 0.3161]], dtype=torch.float64)
    """

    smooth = True

    def __init__(self, a: float = 1.0, b: float = 1.0, c: float = 0.0):
        self.a, self.b, self.c = float(a), float(b), float(c)

    @property
    def phase(self) -> float:
        return self.c

    def fn(self, z):
        return self.a * torch.sin(self.b * z + self.phase)

    def dual(self, cov, var1, var2, need_dot=True):
        b2, half = self.b ** 2, (var1 + var2) / 2
        near, far = torch.exp(b2 * (cov - half)), torch.exp(-b2 * (cov + half)) * math.cos(2 * self.phase)
        nngp = (near - far) * (self.a ** 2 / 2)
        dot = (near + far) * (self.a ** 2 * b2 / 2) if need_dot else None
        return nngp, dot


class Cos(Sin):
    """phi(x) = a cos(b x + c) = a sin(b x + c + pi/2) (duals of `Sin`).

    Parameters
    ----------
    a, b, c : float
        phi(z) = a cos(b z + c).

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> x = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    >>> nk.serial(nk.Dense(1), nk.Cos()).kernel(x, get="nngp")
    tensor([[0.6839, 0.6340],
            [0.6340, 0.6839]], dtype=torch.float64)
    """

    @property
    def phase(self) -> float:
        return self.c + math.pi / 2


class Rbf(Activation):
    """phi(x) = sqrt(2) sin(sqrt(2 gamma) x + pi/4), whose dual is the RBF kernel
    E[phi phi] = exp(-gamma (v1 + v2 - 2 cov)); E[phi' phi'] = 2 gamma E[phi phi].

    Parameters
    ----------
    gamma : float
        phi(z) = sqrt(2) sin(sqrt(2 gamma) z + pi/4).

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> x = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    >>> nk.serial(nk.Dense(1), nk.Rbf()).kernel(x, get="nngp")
    tensor([[1.0000, 0.6703],
            [0.6703, 1.0000]], dtype=torch.float64)
    """

    smooth = True

    def __init__(self, gamma: float = 1.0):
        self.gamma = positive(gamma, "gamma")

    def fn(self, z):
        return math.sqrt(2) * torch.sin(math.sqrt(2 * self.gamma) * z + math.pi / 4)

    def dual(self, cov, var1, var2, need_dot=True):
        nngp = torch.exp(self.gamma * (2 * cov - var1 - var2))
        return nngp, 2 * self.gamma * nngp if need_dot else None


class Gaussian(Activation):
    """phi(x) = a exp(b x^2) (b < 1 / (2 max variance) for a finite kernel).  With
    D = sqrt((1 - 2 b v1)(1 - 2 b v2) - 4 b^2 cov^2):
        E[phi phi] = a^2 / D,  E[phi' phi'] = 4 a^2 b^2 cov / D^3.

    Parameters
    ----------
    a, b : float
        phi(z) = a exp(b z^2).

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> x = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    >>> nk.serial(nk.Dense(1), nk.Gaussian()).kernel(x, get="nngp")
    tensor([[0.5774, 0.5241],
            [0.5241, 0.5774]], dtype=torch.float64)
    """

    smooth = True

    def __init__(self, a: float = 1.0, b: float = -1.0):
        self.a, self.b = float(a), float(b)

    def fn(self, z):
        return self.a * torch.exp(self.b * z * z)

    def dual(self, cov, var1, var2, need_dot=True):
        det = ((1 - 2 * self.b * var1) * (1 - 2 * self.b * var2) - 4 * self.b ** 2 * cov * cov).sqrt()
        nngp = det.reciprocal() * self.a ** 2
        dot = 4 * self.a ** 2 * self.b ** 2 * cov / det ** 3 if need_dot else None
        return nngp, dot


class Exp(Activation):
    """phi(x) = a exp(b x):  E[phi phi] = a^2 exp(b^2 ((v1 + v2)/2 + cov)),
    E[phi' phi'] = b^2 E[phi phi].

    Parameters
    ----------
    a, b : float
        phi(z) = a exp(b z).

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> x = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    >>> nk.serial(nk.Dense(1), nk.Exp()).kernel(x, get="nngp")
    tensor([[2.7183, 2.2255],
            [2.2255, 2.7183]], dtype=torch.float64)
    """

    smooth = True

    def __init__(self, a: float = 1.0, b: float = 1.0):
        self.a, self.b = float(a), float(b)

    def fn(self, z):
        return self.a * torch.exp(self.b * z)

    def dual(self, cov, var1, var2, need_dot=True):
        nngp = torch.exp(self.b ** 2 * ((var1 + var2) / 2 + cov)) * self.a ** 2
        return nngp, self.b ** 2 * nngp if need_dot else None


class ExpNormalized(Activation):
    """The normalized Gaussian kernel of Shankar et al. (2020, "Neural kernels without
    tangents", p. 6), a kernel-only layer (no finite network, as in neural-tangents):
        K' = sqrt(v1 v2) exp(gamma (cov / sqrt(v1 v2) + shift)),   Theta' = gamma exp(...) Theta
    (`do_clip` clips the correlation to [-1, 1]).

    Parameters
    ----------
    gamma, shift : float
        The kernel's bandwidth and shift (above).
    do_clip : bool
        Clip the correlation to [-1, 1].

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> x = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    >>> nk.serial(nk.Dense(1), nk.ExpNormalized()).kernel(x, get="nngp")
    tensor([[0.5000, 0.3352],
            [0.3352, 0.5000]], dtype=torch.float64)
    """

    smooth = True

    def __init__(self, gamma: float = 1.0, shift: float = -1.0, do_clip: bool = False):
        self.gamma, self.shift, self.do_clip = float(gamma), float(shift), bool(do_clip)

    def build(self, in_shape, generator, dtype):
        raise ValueError(f"{self!r} is a kernel-only layer: it has no finite-width network "
                         f"(neural-tangents neither); use it with .kernel only")

    def dual(self, cov, var1, var2, need_dot=True):
        scale = (var1 * var2).clamp_min(1e-30).sqrt()
        ratio = cov / scale
        if self.do_clip:
            ratio = ratio.clamp(-1.0, 1.0)
        exp = torch.exp(self.gamma * (ratio + self.shift))
        return scale * exp, self.gamma * exp if need_dot else None


def _double_factorial(n: int) -> int:
    return math.prod(range(n, 0, -2)) if n > 0 else 1


def _monomial_moment(degree: int, cov, prod):
    """E[u^p v^p] for the bivariate normal: sum_k p!^2 / (k! ((p-k)/2)!^2 2^(p-k)) cov^k (v1 v2)^((p-k)/2),
    k = p, p-2, ... (Isserlis' theorem)."""
    out = 0.0
    for k in range(degree, -1, -2):
        half = (degree - k) // 2
        coef = math.factorial(degree) ** 2 / (math.factorial(k) * math.factorial(half) ** 2 * 2 ** (2 * half))
        out = out + coef * cov ** k * prod ** half
    return out


class Monomial(Activation):
    """phi(x) = x^degree:  E[u^p v^p] by Isserlis' theorem (`_monomial_moment`), and
    E[phi' phi'] = p^2 E[u^(p-1) v^(p-1)].

    Parameters
    ----------
    degree : int
        The polynomial degree (>= 0).

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> x = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    >>> nk.serial(nk.Dense(1), nk.Monomial(2)).kernel(x, get="nngp")
    tensor([[0.7500, 0.4300],
            [0.4300, 0.7500]], dtype=torch.float64)
    """

    smooth = True

    def __init__(self, degree: int):
        if isinstance(degree, bool) or not isinstance(degree, int) or degree < 0:
            raise ValueError(f"degree must be a non-negative integer, got {degree!r}")
        self.degree = degree

    def fn(self, z):
        return z ** self.degree

    def dual(self, cov, var1, var2, need_dot=True):
        prod, p = var1 * var2, self.degree
        nngp = _monomial_moment(p, cov, prod) * torch.ones_like(cov)
        dot = None
        if need_dot:
            dot = (p ** 2 * _monomial_moment(p - 1, cov, prod) if p else 0.0) * torch.ones_like(cov)
        return nngp, dot


@lru_cache(maxsize=32)
def _arc_cosine_polynomials(degree: int) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients (in x = cos theta) of P, Q with J_n(theta) = P(x) (pi - theta) + sin(theta) Q(x),
    the arc-cosine kernel function of Cho & Saul (2009),
    J_n = (-1)^n sin^(2n+1) theta (1/sin theta d/dtheta)^n ((pi - theta)/sin theta),
    by the recursion P' = -(1 - x^2) dP/dx - (2n + 1) x P, Q' = -P - 2n x Q - (1 - x^2) dQ/dx
    (then the sign (-1)^n)."""
    p, q = np.array([1.0]), np.array([0.0])
    one_minus_x2, x = np.array([1.0, 0.0, -1.0]), np.array([0.0, 1.0])
    for n in range(degree):
        p, q = (polynomial.polysub(-polynomial.polymul(one_minus_x2, polynomial.polyder(p)),
                                   (2 * n + 1) * polynomial.polymul(x, p)),
                polynomial.polysub(polynomial.polysub(-p, 2 * n * polynomial.polymul(x, q)),
                                   polynomial.polymul(one_minus_x2, polynomial.polyder(q))))
    sign = (-1) ** degree
    return sign * p, sign * q


def _rectified_moment(degree: int, cov, var1, var2):
    """E[relu(u)^n relu(v)^n] = (v1 v2)^(n/2) J_n(theta) / (2 pi) (Cho & Saul 2009)."""
    theta, root = arc_cosine_angle(cov, var1, var2)
    scale = (var1 * var2).sqrt()
    x = cov / scale.clamp_min(torch.finfo(cov.dtype).tiny)
    p, q = _arc_cosine_polynomials(degree)
    sin = root / scale.clamp_min(torch.finfo(cov.dtype).tiny)
    value = polynomial.polyval(x, p) * (math.pi - theta) + sin * polynomial.polyval(x, q)
    return value * scale ** degree / (2 * math.pi)


class RectifiedMonomial(Activation):
    """phi(x) = x^degree for x >= 0, else 0 (degree 0: the step, 1: ReLU).  Arc-cosine kernels
    (Cho & Saul 2009): E[phi phi] = (v1 v2)^(n/2) J_n(theta) / (2 pi) with J_n from its
    polynomial recursion (finite at every correlation), and E[phi' phi'] = n^2 times the
    degree n-1 kernel (0 for n = 0).  neural-tangents 0.6.5 differentiates J_n numerically
    and returns NaN for two such layers; this form stays finite.

    Parameters
    ----------
    degree : int
        The polynomial degree (>= 0).

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> x = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    >>> nk.serial(nk.Dense(1), nk.RectifiedMonomial(2)).kernel(x, get="nngp")
    tensor([[0.3750, 0.2088],
            [0.2088, 0.3750]], dtype=torch.float64)
    """

    def __init__(self, degree: int):
        if isinstance(degree, bool) or not isinstance(degree, int) or degree < 0:
            raise ValueError(f"degree must be a non-negative integer, got {degree!r}")
        self.degree = degree
        self.smooth = degree >= 3   # max(z, 0)^q is twice continuously differentiable for q >= 3

    def fn(self, z):
        return torch.relu(z) ** self.degree * (z >= 0)

    def dual(self, cov, var1, var2, need_dot=True):
        nngp = _rectified_moment(self.degree, cov, var1, var2)
        dot = None
        if need_dot:
            dot = (self.degree ** 2 * _rectified_moment(self.degree - 1, cov, var1, var2)
                   if self.degree else torch.zeros_like(nngp))
        return nngp, dot


class Polynomial(Activation):
    """phi(x) = sum_i coef[i] x^i.  Mehler's expansion in normalized Hermite polynomials:
    with rho = cov / sqrt(v1 v2) and r_l(v) = sum_i coef[2i+l] (2i+l)! / (2^i i! sqrt(l!)) v^((2i+l)/2),
        E[phi phi] = sum_l r_l(v1) r_l(v2) rho^l,
        E[phi' phi'] = sum_l l r_l(v1) r_l(v2) rho^(l-1) / sqrt(v1 v2).

    Parameters
    ----------
    coef : sequence of float
        Coefficients of 1, z, z^2, ...

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> x = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    >>> nk.serial(nk.Dense(1), nk.Polynomial([0.0, 1.0, 0.5])).kernel(x, get="nngp")
    tensor([[0.6875, 0.4075],
            [0.4075, 0.6875]], dtype=torch.float64)
    """

    smooth = True

    def __init__(self, coef: Sequence[float]):
        self.coef = tuple(float(c) for c in coef)

    def fn(self, z):
        return sum(c * z ** i for i, c in enumerate(self.coef)) * torch.ones_like(z)

    def _r(self, var: torch.Tensor, order: int) -> torch.Tensor:
        root, out = var.sqrt(), torch.zeros_like(var)
        for i in range((len(self.coef) - 1 - order) // 2 + 1):
            j = 2 * i + order
            out = out + self.coef[j] * math.factorial(j) / (
                2 ** i * math.factorial(i) * math.sqrt(math.factorial(order))) * root ** j
        return out

    def dual(self, cov, var1, var2, need_dot=True):
        scale = (var1 * var2).sqrt()
        rho = cov / scale
        nngp, dot = torch.zeros_like(cov), (torch.zeros_like(cov) if need_dot else None)
        for order in range(len(self.coef)):
            weight = self._r(var1, order) * self._r(var2, order)
            nngp = nngp + weight * rho ** order
            if need_dot and order:
                dot = dot + order * weight * rho ** (order - 1)
        return nngp, (dot / scale if need_dot else None)


class Hermite(Activation):
    """phi(x) = He_n(x) / sqrt(n!), the normalized probabilists' Hermite polynomial, for inputs
    of any variances.  With the generating function sum_n He_n(x) t^n / n! = exp(x t - t^2/2),
    E[exp(u s - s^2/2) exp(v t - t^2/2)] = exp(a s^2 + b t^2 + c s t) for
    (u, v) ~ N(0, [[v1, c], [c, v2]]), a = (v1 - 1)/2, b = (v2 - 1)/2; its s^n t^n coefficient gives::

        E[phi phi]   = n! sum_{i=0}^{floor(n/2)} (a b)^i c^(n-2i) / ((i!)^2 (n-2i)!),
        E[phi' phi'] = d/dc of it (Price's theorem)
                     = n! sum_{i: n-2i >= 1} (a b)^i c^(n-2i-1) / ((i!)^2 (n-2i-1)!).

    For unit variances (a = b = 0) these are neural-tangents' cov^n and n cov^(n-1); for other
    variances neural-tangents (0.6.5) returns those unit-variance formulas, which are not its
    network's kernel (see the migration page's "Where the numbers differ and why").

    Parameters
    ----------
    degree : int
        The polynomial degree (>= 0).

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> x = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    >>> nk.serial(nk.Dense(8), nk.LayerNorm(), nk.Hermite(2)).kernel(x, get="nngp")
    tensor([[1.0000, 0.3600],
            [0.3600, 1.0000]], dtype=torch.float64)

    Without the LayerNorm the variances are 2.25 |x|^2 / d, and the kernel is still the network's:

    >>> nk.serial(nk.Dense(8, W_std=1.5), nk.Hermite(2)).kernel(x, get="nngp")
    tensor([[1.2734, 0.4634],
            [0.4634, 1.2734]], dtype=torch.float64)
    """

    smooth = True

    def __init__(self, degree: int):
        if isinstance(degree, bool) or not isinstance(degree, int) or degree < 0:
            raise ValueError(f"degree must be a non-negative integer, got {degree!r}")
        self.degree = degree
        self._coef = hermite_e.herme2poly([0] * degree + [1]) / math.sqrt(math.factorial(degree))

    def fn(self, z):
        return sum(float(c) * z ** i for i, c in enumerate(self._coef)) * torch.ones_like(z)

    def _series(self, cov, ab, power: int):
        """n! sum_i (a b)^i cov^(power - 2i) / ((i!)^2 (power - 2i)!), i = 0 .. floor(power/2)."""
        out = torch.zeros_like(cov)
        for i in range(power // 2 + 1):
            coef = math.factorial(self.degree) / (math.factorial(i) ** 2 * math.factorial(power - 2 * i))
            out = out + coef * ab ** i * cov ** (power - 2 * i)
        return out

    def dual(self, cov, var1, var2, need_dot=True):
        ab = (var1 - 1) * (var2 - 1) / 4
        nngp = self._series(cov, ab, self.degree)
        dot = None
        if need_dot:
            dot = self._series(cov, ab, self.degree - 1) if self.degree else torch.zeros_like(cov)
        return nngp, dot


class Gabor(Activation):
    """phi(x) = exp(-x^2) sin(x) (neural-tangents' `stax.Gabor`, Novak et al. 2020).  Gaussian
    integrals of exponentials of quadratic forms give, with S = v1 + v2, D = 4 (v1 v2 - c^2),
    den = 2 S + D + 1 and E = exp(-(S + D + 2 c) / (2 den)):

        E[phi phi]   = E (exp(2 c / den) - 1) / (2 sqrt(den))
        E[phi' phi'] = E (A - B + exp(2 c / den) (A + B)) / (2 den^(5/2)),
                       A = 1 + 2 S + 4 (c^2 + v1 v2),  B = 4 c (D + 3 S + 2)

    (the second is d/dc of the first, Price's theorem).

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> x = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    >>> nk.serial(nk.Dense(1), nk.Gabor()).kernel(x, get="nngp")
    tensor([[0.0818, 0.0345],
            [0.0345, 0.0818]], dtype=torch.float64)
    """

    smooth = True

    def fn(self, z):
        return torch.exp(-z * z) * torch.sin(z)

    def dual(self, cov, var1, var2, need_dot=True):
        total, diff = var1 + var2, 4 * (var1 * var2 - cov * cov)
        den = 2 * total + diff + 1
        decay = torch.exp(-(total + diff + 2 * cov) / (2 * den))
        growth = torch.exp(2 * cov / den)
        nngp = decay * (growth - 1) / (2 * torch.sqrt(den))
        dot = None
        if need_dot:
            shared, odd = 1 + 2 * total + 4 * (cov * cov + var1 * var2), 4 * cov * (diff + 3 * total + 2)
            dot = decay * (shared - odd + growth * (shared + odd)) / (2 * den ** 2.5)
        return nngp, dot
