"""The spectral theory of kernel regression on the sphere: a network's NNGP/NTK as a dot-product
kernel, its eigenvalues per degree of spherical harmonics, and the eigenlearning prediction of
what kernel ridge regression learns from n samples.

**Eigenvalues** (Funk-Hecke). For inputs on the sphere of radius sqrt(d) in R^d, a fully connected
network's kernel depends on x . x' / d = t only: k(x, x') = kappa(t). Under the uniform measure its
integral operator is diagonal in the spherical harmonics; every harmonic of degree k has the
eigenvalue

    lambda_k = c_d int_{-1}^{1} kappa(t) P_k(t) (1 - t^2)^{(d-3)/2} dt,

where P_k = C_k^{((d-2)/2)} / C_k^{((d-2)/2)}(1) is the Gegenbauer (Legendre, in d dimensions)
polynomial with P_k(1) = 1, c_d normalises the weight to a probability, and the degree has
N(d, k) = C(d+k-1, k) - C(d+k-3, k-2) harmonics; kappa(t) = sum_k N(d, k) lambda_k P_k(t) and in
particular sum_k N(d, k) lambda_k = kappa(1) (the trace). The integral is computed by Gauss-Jacobi
quadrature with the weight (1 - t^2)^{(d-3)/2} (Smola, Ovari & Williamson 2001; Bach 2017; for
the NTK: Bietti & Mairal 2019, Geifman et al. 2020).

**Eigenlearning** (Bordelon, Canatar & Pehlevan 2020; Canatar, Bordelon & Pehlevan 2021; Simon,
Dickens, Karkada & DeWeese 2021, "The eigenlearning framework"). Kernel ridge regression
f = k(., X) (K + delta I)^-1 y on n samples learns, in expectation over the data, the fraction

    L_i = lambda_i / (lambda_i + kappa)      of each eigenfunction's coefficient,

where kappa > 0 solves sum_i L_i + delta / kappa = n; its test mean squared error is
E_0 (sum_i (1 - L_i)^2 v_i^2 + noise^2) with E_0 = n / (n - sum_i L_i^2) and v_i the target's
coefficients. Degrees above `max_degree` (eigenvalues far below kappa, learned fraction ~ 0)
enter only through their trace, which acts as an added ridge ("the tail as effective
regularisation", Canatar et al. 2021); the prediction refuses when the last computed degree is
still learned (the truncation would matter).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
from scipy import linalg, optimize, special

from .._core.validation import positive, positive_int
from ..arch import Serial

KERNELS = ("nngp", "ntk")


def check_sphere_dimension(d: int) -> int:
    """d, checked to be an integer >= 3 (the sphere in R^d has a Gegenbauer expansion)."""
    d = positive_int(d, "d")
    if d < 3:
        raise ValueError(f"d must be >= 3 for the Gegenbauer expansion on the sphere, got {d}")
    return d


def harmonic_count(d: int, k: int) -> int:
    """N(d, k): the number of spherical harmonics of degree k on the sphere in R^d."""
    if k == 0:
        return 1
    return math.comb(d + k - 1, k) - math.comb(d + k - 3, k - 2) if k >= 2 else d


def legendre(d: int, k: int, t) -> np.ndarray:
    """P_k(t) in d dimensions, normalised to P_k(1) = 1 (Gegenbauer C_k^{((d-2)/2)} / C_k(1))."""
    alpha = (check_sphere_dimension(d) - 2) / 2
    return special.eval_gegenbauer(k, alpha, np.asarray(t, float)) / special.eval_gegenbauer(k, alpha, 1.0)


def zonal_harmonic(d: int, k: int, cosine: torch.Tensor) -> torch.Tensor:
    """The unit-norm zonal harmonic of degree k about a direction u, sqrt(N(d, k)) P_k(u . x / |x|),
    at cosine = u . x / |x|: E[Y_k^2] = 1 under the uniform measure on the sphere."""
    values = legendre(d, k, cosine.detach().cpu().numpy()) * math.sqrt(harmonic_count(d, k))
    return torch.as_tensor(values, dtype=cosine.dtype, device=cosine.device)


@dataclass(frozen=True)
class SphereSpectrum:
    """The eigenvalues of a dot-product kernel on the sphere of radius sqrt(d) in R^d."""

    d: int
    eigenvalues: np.ndarray      # lambda_k, k = 0 .. max_degree
    multiplicities: np.ndarray   # N(d, k)
    trace: float                 # kappa(1) = k(x, x)

    @property
    def tail_trace(self) -> float:
        """The trace of the degrees above max_degree: kappa(1) - sum_k N(d, k) lambda_k (>= 0)."""
        return max(0.0, self.trace - float(self.multiplicities @ self.eigenvalues))


def gegenbauer_quadrature(d: int, nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss quadrature for the probability weight c_d (1 - t^2)^{(d-3)/2} on [-1, 1]: nodes and
    weights by Golub-Welsch (the eigenvalues of the Jacobi matrix of the Gegenbauer recurrence,
    off-diagonal sqrt(j (j + 2 a - 1) / (4 (j + a) (j + a - 1))) with a = (d - 2)/2; weights the
    squared first components), stable for any d (scipy's roots_jacobi fails for d in the hundreds)."""
    a = (check_sphere_dimension(d) - 2) / 2
    j = np.arange(1, nodes, dtype=float)
    off_diagonal = np.sqrt(j * (j + 2 * a - 1) / (4 * (j + a) * (j + a - 1)))
    t, vectors = linalg.eigh_tridiagonal(np.zeros(nodes), off_diagonal)
    weights = vectors[0] ** 2
    return t, weights / weights.sum()


def _cosine_pairs(d: int, cosines: np.ndarray, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One point x and points x'_j on the sphere of radius sqrt(d) with x . x'_j / d = cosines[j],
    along two orthonormal directions (e_1, e_2, or random ones with a generator)."""
    if generator is None:
        u, w = torch.zeros(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)
        u[0], w[1] = 1.0, 1.0
    else:
        basis = torch.linalg.qr(torch.randn(d, 2, generator=generator, dtype=torch.float64)).Q
        u, w = basis[:, 0], basis[:, 1]
    t = torch.as_tensor(cosines, dtype=torch.float64)
    others = t[:, None] * u + torch.sqrt((1 - t ** 2).clamp(min=0))[:, None] * w
    return math.sqrt(d) * u[None], math.sqrt(d) * others


def _kernel_row(net: Serial, x: torch.Tensor, others: torch.Tensor, get: str) -> np.ndarray:
    """k(x, others_j) for one point x, as float64 numpy."""
    with torch.no_grad():
        values = net.kernel(x, others, get=get)
    return torch.as_tensor(values)[0].double().cpu().numpy()


def sphere_spectrum(net: Serial, d: int, *, max_degree: int = 8, get: str = "ntk",
                    nodes: int = 400) -> SphereSpectrum:
    """lambda_k for k = 0 .. max_degree of the network's NNGP or NTK on the sphere of radius
    sqrt(d) in R^d (see the module docstring; Gauss-Jacobi quadrature with `nodes` points).

    The kernel must be a dot-product kernel there (true for fully connected networks); this is
    checked at a few random rotations and refused otherwise (e.g. a convolution's kernel)."""
    d, nodes = check_sphere_dimension(d), positive_int(nodes, "nodes")
    max_degree = positive_int(max_degree, "max_degree")
    if get not in KERNELS:
        raise ValueError(f"get must be one of {KERNELS}, got {get!r}")
    t, weights = gegenbauer_quadrature(d, nodes)
    x, others = _cosine_pairs(d, t, None)
    kappa = _kernel_row(net, x, others, get)
    trace = float(_kernel_row(net, x, x, get)[0])
    check_t = np.array([-0.9, -0.3, 0.2, 0.7, 1.0])
    reference = _kernel_row(net, *_cosine_pairs(d, check_t, None), get)
    rotated = _kernel_row(net, *_cosine_pairs(d, check_t, torch.Generator().manual_seed(0)), get)
    if not np.allclose(rotated, reference, rtol=1e-8, atol=1e-12 * abs(trace)):
        raise ValueError("the kernel is not a function of x . x' on the sphere (it changes under a rotation "
                         "of the inputs): sphere_spectrum needs a fully connected network (Dense first layer)")
    degrees = range(max_degree + 1)
    eigenvalues = np.array([float(np.sum(weights * kappa * legendre(d, k, t))) for k in degrees])
    multiplicities = np.array([float(harmonic_count(d, k)) for k in degrees])
    return SphereSpectrum(d, eigenvalues, multiplicities, trace)


@dataclass(frozen=True)
class Eigenlearning:
    """What kernel ridge regression with n samples learns (module docstring): kappa, the learned
    fraction L_k of each degree, E_0, the predicted test MSE against noisy test labels
    (`test_mse`, Simon et al.'s) and against the noiseless target (`generalization_error`
    = test_mse - noise^2, the excess risk)."""

    n: int
    kappa: float
    learnability: np.ndarray     # L_k, k = 0 .. max_degree
    e0: float
    test_mse: float              # E_0 (sum_k (1 - L_k)^2 v_k^2 + noise^2): against noisy labels
    generalization_error: float  # E[(f - f*)^2] = test_mse - noise^2


def eigenlearning(spectrum: SphereSpectrum, n: int, *, ridge: float = 0.0,
                  target_energy: Mapping[int, float] | None = None, noise: float = 0.0) -> Eigenlearning:
    """The eigenlearning prediction for n samples, ridge delta (added to the n x n kernel matrix:
    (K + delta I)^-1) and a target whose degree-k part has energy target_energy[k] (sum of its
    squared coefficients; degrees above max_degree are refused), label noise of variance noise^2."""
    n = positive_int(n, "n")
    ridge = positive(ridge, "ridge", allow_zero=True)
    noise = positive(noise, "noise", allow_zero=True)
    energy = np.zeros(len(spectrum.eigenvalues))
    for k, value in (target_energy or {}).items():
        if not 0 <= int(k) < len(energy):
            raise ValueError(f"target_energy has degree {k}, outside the spectrum's 0..{len(energy) - 1}: "
                             "compute the spectrum with a larger max_degree")
        energy[int(k)] = float(value)
    lam, count = np.clip(spectrum.eigenvalues, 0.0, None), spectrum.multiplicities
    effective_ridge = ridge + spectrum.tail_trace
    if effective_ridge <= 0 and n >= count[lam > 0].sum():
        raise ValueError(f"n = {n} samples are at least the {int(count[lam > 0].sum())} modes of the truncated "
                         "spectrum with no ridge and no tail: raise max_degree or give a ridge")

    def excess(log_kappa: float) -> float:
        kappa = math.exp(log_kappa)
        return float((count * lam / (lam + kappa)).sum() + effective_ridge / kappa - n)
    scale = spectrum.trace
    kappa = math.exp(optimize.brentq(excess, math.log(scale * 1e-300 ** 0.5), math.log(scale * 1e3 + effective_ridge),
                                     xtol=1e-14))
    learnability = lam / (lam + kappa)
    _check_truncation(lam, kappa, f"at n = {n}")
    e0 = n / (n - float((count * learnability ** 2).sum()))
    test_mse = e0 * (float(((1 - learnability) ** 2 * energy).sum()) + noise ** 2)
    return Eigenlearning(n, kappa, learnability, e0, test_mse, test_mse - noise ** 2)


def _check_truncation(lam: np.ndarray, kappa: float, where: str) -> None:
    """Refuse when one of the last two computed degrees is still learned (L > 5 %): the truncated
    degrees would then matter (two, since a kernel may have zero eigenvalues for every odd degree,
    as the bias-free ReLU NTK does for k >= 3)."""
    last = lam[-2:] / (lam[-2:] + kappa)
    if last.max() > 0.05:
        raise ValueError(f"degree {len(lam) - 2 + int(last.argmax())}, among the last computed, is still "
                         f"{last.max():.0%} learned {where}: the truncated degrees matter; compute the spectrum "
                         "with a larger max_degree")


def half_learned_samples(spectrum: SphereSpectrum, degree: int, *, ridge: float = 0.0) -> float:
    """The number of samples n at which eigenlearning learns half of a degree (L_k = 1/2,
    i.e. kappa = lambda_k): n = sum_i lambda_i / (lambda_i + lambda_k) + delta / lambda_k (the tail's
    trace included in delta), a real number."""
    lam, count = np.clip(spectrum.eigenvalues, 0.0, None), spectrum.multiplicities
    if not 0 <= degree < len(lam) or lam[degree] <= 0:
        raise ValueError(f"degree {degree} has no positive eigenvalue in this spectrum (0..{len(lam) - 1})")
    kappa = lam[degree]
    _check_truncation(lam, kappa, f"when degree {degree} is half learned")
    return float((count * lam / (lam + kappa)).sum() + (ridge + spectrum.tail_trace) / kappa)
