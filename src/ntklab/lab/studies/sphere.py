"""Learning single-index targets on the sphere, degree by degree.

Inputs x uniform on the sphere of radius sqrt(d) in R^d; targets
f*(x) = sum_k a_k Y_k(u . x / sqrt(d)) with Y_k the unit-norm zonal harmonic of degree k about a
random direction u (`ntklab.theory.spectral.zonal_harmonic`, E[Y_k^2] = 1), so the part of degree k
has energy a_k^2 and is one eigenfunction of every dot-product kernel. A predictor's **learned
fraction** of degree k is its coefficient on Y_k over a_k, <f, Y_k> / a_k, estimated on fresh test
points (mean of f(x) Y_k(x) / a_k with its standard error): 1 when that part is learned, 0 when
not; for kernel ridge regression its expectation is eigenlearning's L_k."""
from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch

from ..._core.validation import DEFAULT_DTYPE, positive, positive_int
from ...theory.spectral import check_sphere_dimension, gegenbauer_quadrature, zonal_harmonic
import ntklab as nk


def sphere_points(n: int, d: int, *, generator: torch.Generator, dtype: torch.dtype = DEFAULT_DTYPE) -> torch.Tensor:
    """n points uniform on the sphere of radius sqrt(d) in R^d ([n, d])."""
    x = torch.randn(positive_int(n, "n"), positive_int(d, "d"), generator=generator, dtype=dtype)
    return math.sqrt(d) * x / x.norm(dim=1, keepdim=True)


@dataclass(frozen=True)
class ZonalTarget:
    """f*(x) = sum_k coefficients[k] Y_k(u . x / sqrt(d)) (module docstring)."""

    u: torch.Tensor                   # [d], unit norm
    coefficients: Mapping[int, float]

    def __post_init__(self) -> None:
        if self.u.ndim != 1 or len(self.u) < 3 or abs(float(self.u.norm()) - 1) > 1e-12:
            raise ValueError(f"u must be a unit vector of d >= 3 entries (the zonal harmonics live on the sphere "
                             f"in R^d, d >= 3), got shape {tuple(self.u.shape)} and norm {float(self.u.norm()):.6g}")

    @property
    def d(self) -> int:
        """The input dimension."""
        return len(self.u)

    def cosine(self, x: torch.Tensor) -> torch.Tensor:
        """u . x / |x| for x on the sphere of radius sqrt(d)."""
        return x @ self.u / math.sqrt(self.d)

    def part(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """The unit-norm degree-k harmonic Y_k(u . x / sqrt(d)) ([N])."""
        return zonal_harmonic(self.d, k, self.cosine(x))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """f*(x) [N] for x [N, d]."""
        total = torch.zeros(len(x), dtype=x.dtype, device=x.device)
        for k, a in self.coefficients.items():
            total = total + a * self.part(k, x)
        return total


def single_index_target(d: int, degrees: tuple[int, ...], *, seed: int, dtype: torch.dtype = DEFAULT_DTYPE
                        ) -> ZonalTarget:
    """Equal parts of the given degrees about a random direction, unit norm: a_k = 1/sqrt(#degrees)."""
    generator = torch.Generator().manual_seed(seed)
    u = torch.randn(check_sphere_dimension(d), generator=generator, dtype=dtype)
    return ZonalTarget(u / u.norm(), {int(k): 1 / math.sqrt(len(degrees)) for k in degrees})


def sample(target: ZonalTarget, n: int, *, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x uniform on the sphere, y = f*(x) + eps with eps uniform on {-noise, +noise}."""
    noise = positive(noise, "noise", allow_zero=True)
    generator = torch.Generator().manual_seed(seed)
    x = sphere_points(n, target.d, generator=generator, dtype=target.u.dtype)
    signs = torch.randint(0, 2, (n,), generator=generator).to(x.dtype).mul_(2).sub_(1)
    return x, target(x) + noise * signs


def kernel_ridge(net: nk.Serial, x: torch.Tensor, y: torch.Tensor, *, ridge: float, get: str = "ntk",
                 store: Path | None = None, centers: int = 4000, rtol: float = 1e-6,
                 ) -> tuple[Callable[[torch.Tensor], torch.Tensor], float]:
    """Kernel ridge regression f = k(., X) (K + delta I)^-1 y with delta = ridge * k(x, x) (the
    kernel's diagonal, the same for every point of the sphere), and delta.

    Without `store`: Cholesky of the dense K.  With `store` (a folder): K is computed into a float32
    kernel store there (its upper tiles, 2 n^2 bytes: 20 GB at n = 10^5) and the system
    solved by conjugate gradients streaming it (`StoredKernel`), preconditioned by the column Nystrom
    approximation on `centers` training points, to relative residual `rtol`; the store is removed
    afterwards.  Memory O(n centers)."""
    delta_of = positive(ridge, "ridge", allow_zero=True)
    if store is None:
        gram = net.kernel(x, get=get)
        delta = delta_of * float(gram.diagonal().mean())
        gram.diagonal().add_(delta)
        coefficients = torch.cholesky_solve(y[:, None], torch.linalg.cholesky(gram))[:, 0]
    else:
        stored = nk.kernels.compute_kernel(net, x, store=store, get=get, tile_size=4096, dtype=torch.float32,
                                           overwrite=True)    # refuses a folder that is not a kernel store
        try:
            operator = nk.kernels.StoredKernel(stored, get)
            delta = delta_of * float(operator.diagonal().mean())
            preconditioner = nk.predict.NystromPreconditioner.from_centers(net, x, centers=min(centers, len(x)),
                                                                           get=get)
            coefficients = nk.predict.conjugate_gradients(operator, y, diag_reg=delta, diag_reg_absolute_scale=True,
                                                          preconditioner=preconditioner, rtol=rtol).solution
        finally:
            shutil.rmtree(stored.path, ignore_errors=True)

    def predictor(x_new: torch.Tensor) -> torch.Tensor:
        return torch.cat([net.kernel(x_new[start:start + 1024], x, get=get) @ coefficients
                          for start in range(0, len(x_new), 1024)])
    return predictor, delta


def learned_fractions(predictor: Callable[[torch.Tensor], torch.Tensor], target: ZonalTarget, n_test: int,
                      *, seed: int, nodes: int = 32) -> tuple[dict[int, tuple[float, float]], tuple[float, float]]:
    """degree -> (learned fraction <f, Y_k> / a_k, its standard error), and the test loss
    E[(f - f*)^2] with its standard error, on n_test points.

    With x = sqrt(d) (t u + sqrt(1 - t^2) v), v uniform on the unit sphere orthogonal to u, the
    average over t is Gauss-Gegenbauer quadrature with `nodes` points (weight (1 - t^2)^{(d-3)/2},
    exact for the target's polynomials in t) and the one over v Monte Carlo on n_test // nodes
    directions: the standard errors are those of the v-averages."""
    t, weights = gegenbauer_quadrature(target.d, positive_int(nodes, "nodes"))
    t_ = torch.as_tensor(t, dtype=target.u.dtype)
    weights_ = torch.as_tensor(weights, dtype=target.u.dtype)
    generator = torch.Generator().manual_seed(seed)
    v = torch.randn(max(2, positive_int(n_test, "n_test") // nodes), target.d, generator=generator,
                    dtype=target.u.dtype)
    v = v - (v @ target.u)[:, None] * target.u
    v = v / v.norm(dim=1, keepdim=True)
    x = math.sqrt(target.d) * (t_[None, :, None] * target.u + torch.sqrt(1 - t_ ** 2)[None, :, None] * v[:, None, :])
    x = x.reshape(-1, target.d)
    prediction, truth = predictor(x).reshape(len(v), nodes), target(x).reshape(len(v), nodes)

    def averaged(values: torch.Tensor) -> tuple[float, float]:
        per_direction = (values * weights_).sum(1)
        return float(per_direction.mean()), float(per_direction.std() / math.sqrt(len(v)))
    fractions = {k: averaged(prediction * zonal_harmonic(target.d, k, t_) / a) for k, a in target.coefficients.items()}
    return fractions, averaged((prediction - truth).square())
