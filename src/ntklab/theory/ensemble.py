"""The mean over initializations of a finite-width MLP trained by gradient flow, at first order in
1/n, from the leading statistics of its NTK hierarchy (Roberts, Yaida & Hanin 2022, PDLT ch. ∞:
the ensemble of trained networks at order 1/n).

Gradient flow on L = ½ Σ_a (z_a - y_a)² with unit rate for the flow time t (below; ntklab's time
t' with learning rate η on ||z - y||²/(2N) is t = η t'/N, `ntklab.conventions`) moves a network
with NTK Ĥ, dNTK dĤ and ddNTK ddĤ at initialization to z = z_F + z₁ + O(1/n²)
(`nk.nearly_kernel_flow`, module `ntk_hierarchy`):

    z_F,δ(t) = z_δ(0) - G_t(Ĥ)_δa (z_a(0) - y_a),   G_t(H) = H_δA H_AA⁻¹ (I - e^{-H_AA t}),

(A the N training points, δ the M test points) and z₁ the linear response to the dNTK and ddNTK,
a polynomial of degree three in the residual z_A(0) - y. Over the ensemble of initializations,
with Ĥ = Θ + Θ¹/n + δĤ (`nk.finite_width`: Θ, Θ¹ and Cov[δĤ] = (A + B + B)/n):

    E[z_F,δ(t)] = G_t(Θ) y + DG_t(Θ)[Θ¹/n] y + ½ D²G_t(Θ)[Cov δĤ] y + O(1/n²),

since every term odd in z(0) averages to zero exactly (flipping the readout's signs maps z → -z
and keeps Ĥ); the three terms are `kernel` (the infinite-width prediction), `ntk_shift` and
`ntk_fluctuation` below, the derivatives of G_t by `torch.func` through `matrix_exp`. For z₁ the
NTK may be taken at Θ and the network's tensors enter only through E[dĤ_bδa z_e] (the dNTK's
correlation with the outputs, `nk.dntk_statistics`; E[dĤ] = E[dĤ z z] = 0 by the same sign flip)
and E[ddĤ_cbδa] (`nk.ddntk_statistics`), the higher moments factoring into these and
E[z_a z_b] = K_ab at leading order. So E[z₁] is z₁ of the surrogate hierarchy

    ntk = Θ,  output = u,  dNTK_bδa = Σ_ef E[dĤ_bδa z_e] (K_AA⁻¹)_ef u_f,  ddNTK = E[ddĤ],

averaged over u ~ N(0, K_AA): exactly, as z₁ is cubic in u, by the symmetric 2N-point rule
u = ±√N L e_i (L Lᵀ = K_AA), which integrates every Gaussian moment up to order three. The two
sources are returned apart (`dntk`, `ddntk`); each of the four corrections is of order 1/n.

Derivation ours (the book's chapter ∞ is not at hand). Checked against Monte Carlo of real
networks (docs/theory/finite_width.md, `ntklab run ensemble-mean`): the kernel part agrees at
n = 32-256; z₁ agrees at early times, while at t = 2/λ_min a gap of 2-4 standard errors remains up
to n = 256: the NTK's fluctuation inside z₁, an O(1/n²) term with a large coefficient (measured),
so at late times the first order needs n well above 100. Smooth activations only, as
`nk.dntk_statistics`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.func import hessian, jvp

from .._core.validation import as_matrix
from ..arch.serial import Serial
from .dntk import ddntk_statistics, dntk_statistics
from .finite_width import finite_width
from ..conventions import flow_times
from .hierarchy import NTKHierarchy, flow_in_book_time


@dataclass(frozen=True)
class EnsembleMean:
    """E over initializations of a width-n MLP's test outputs under gradient flow, [T, M] per
    part (module docstring): `mean` = `kernel` + `correction`, the correction the sum of four
    parts of order 1/n (at another width n' each scales by n / n').

    Attributes
    ----------
    times : Tensor [T]
    width : int
        n, the last hidden layer's width.
    kernel : Tensor [T, M]
        G_t(Θ) y, the infinite-width (NTK) prediction.
    ntk_shift : Tensor [T, M]
        DG_t(Θ)[Θ¹/n] y, from the NTK's 1/n mean shift.
    ntk_fluctuation : Tensor [T, M]
        ½ D²G_t(Θ)[Cov δĤ] y, from the NTK's fluctuations.
    dntk, ddntk : Tensor [T, M]
        E[z₁] from the dNTK and from the ddNTK.
    """

    times: torch.Tensor
    width: int
    kernel: torch.Tensor
    ntk_shift: torch.Tensor
    ntk_fluctuation: torch.Tensor
    dntk: torch.Tensor
    ddntk: torch.Tensor

    @property
    def correction(self) -> torch.Tensor:
        """The 1/n correction to the infinite-width prediction, [T, M]."""
        return self.ntk_shift + self.ntk_fluctuation + self.dntk + self.ddntk

    @property
    def mean(self) -> torch.Tensor:
        """E[z(t)] at the test points to first order in 1/n, [T, M]."""
        return self.kernel + self.correction


def kernel_solution(ntk: torch.Tensor, y: torch.Tensor, t: float) -> torch.Tensor:
    """G_t(H) y = H_δA H_AA⁻¹ (I - e^{-H_AA t}) y at the test rows δ of ntk [D, N]."""
    n_train = len(y)
    ntk_train = ntk[:n_train]
    decay = torch.eye(n_train, dtype=y.dtype) - torch.linalg.matrix_exp(-t * ntk_train)
    return ntk[n_train:] @ torch.linalg.solve(ntk_train, decay @ y)


def _kernel_parts(theta, shift, covariance, y, times):
    """G_t(Θ) y, DG_t[shift] y and ½ D²G_t[covariance] y per time, each [T, M]."""
    parts = []
    for t in times:
        def solution(ntk, t=float(t)):
            return kernel_solution(ntk, y, t)
        value, first = jvp(solution, (theta,), (shift,))[:2]   # no aux: (value, tangent)
        second = 0.5 * torch.einsum("mijkl,ijkl->m", hessian(solution)(theta), covariance)
        parts.append(torch.stack([value, first, second]))
    return torch.stack(parts).unbind(1)


def _first_order_parts(theta, nngp_train, dntk_correlation, ddntk_mean, y, times):
    """E[z₁] from the dNTK and from the ddNTK, [T, M] each: the surrogate hierarchy's z₁ averaged
    over the symmetric 2N-point rule for u ~ N(0, K_AA) (module docstring)."""
    n_train, n_test = len(y), len(theta) - len(y)
    scaled = math.sqrt(n_train) * torch.linalg.cholesky(nngp_train).T          # rows √N L e_i
    points = torch.cat([scaled, -scaled])
    dntk_per_point = torch.einsum("bdae,ef,kf->kbda", dntk_correlation,
                                  torch.linalg.inv(nngp_train), points)
    parts = []
    for term in ("dntk", "ddntk"):
        total = 0.0
        for u, dntk in zip(points, dntk_per_point, strict=True):
            surrogate = NTKHierarchy(output=torch.cat([u, u.new_zeros(n_test)]), ntk=theta,
                                     dntk=dntk, ddntk=ddntk_mean)
            flow = flow_in_book_time(surrogate, y, times, terms=(term,))
            total = total + flow["nearly_kernel"] - flow["kernel"]
        parts.append(total / len(points))
    return parts


def ensemble_mean_flow(net: Serial, x_train, y_train, x_test, times: Sequence[float], *,
                       learning_rate: float = 1.0) -> EnsembleMean:
    """`nk.ensemble_mean_flow(net, x_train, y_train, x_test, times)`: the mean over
    initializations of the MLP `net` trained by gradient flow on (x_train, y_train), at the
    test points and times, to first order in 1/n: the infinite-width prediction plus the
    corrections from the NTK's mean shift and fluctuations and from the dNTK and ddNTK
    (module docstring for the formulas).

    The finite-width counterpart of neural-tangents' `predict.gradient_descent_mse_ensemble`
    (its mean, in the same units: loss ||z - y||² / (2N), time t in steps of size learning_rate, so
    `kernel` equals that prediction's mean at the same t and learning_rate).

    Cost: `nk.finite_width`, `nk.dntk_statistics` and `nk.ddntk_statistics` over the N + M
    points (the last dominates: about 30 s for five points on one core), then 8N linear ODEs.

    Parameters
    ----------
    net : Serial
        An MLP `nk.serial(Dense, activation, ..., Dense)` in the NTK parameterization with a
        smooth activation (tanh, erf, GELU, ...) and one output.
    x_train : tensor or array [N, d]
    y_train : tensor or array [N]
    x_test : tensor or array [M, d]
    times : sequence of float
        Positive, increasing training times in steps of size learning_rate (`ntklab.conventions`).
    learning_rate : float
        On ||z - y||² / (2N); the book's unit rate on ½ Σ is learning_rate = N.

    Returns
    -------
    EnsembleMean
        Its parts [T, M]; `mean` their sum.

    Raises
    ------
    ValueError
        For mismatched targets, a non-smooth activation, and as `nk.finite_width` for other
        networks or inputs.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> net = nk.mlp(1, 64, activation=nk.Tanh())
    >>> x = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.6, 0.2, 0.5]], dtype=torch.float64)
    >>> ensemble = nk.ensemble_mean_flow(net, x[:2], torch.tensor([1.0, 0.5]), x[2:], [2.0, 20.0])
    >>> ensemble.kernel.ravel()                       # infinite width, at t = 2 and 20 (τ = t/N = 1, 10)
    tensor([0.2559, 0.7171], dtype=torch.float64)
    >>> (64 * ensemble.correction).ravel()            # n x the 1/n correction
    tensor([-0.0723, -0.0550], dtype=torch.float64)
    """
    x_train = as_matrix(x_train, "x_train")
    x_test = as_matrix(x_test, "x_test")
    y = torch.as_tensor(y_train, dtype=torch.float64).reshape(-1)
    if len(y) != len(x_train):
        raise ValueError(f"y_train has {len(y)} values for {len(x_train)} training points; "
                         "pass one target per row of x_train")
    taus = flow_times(times, learning_rate, len(y))
    x = torch.cat([x_train, x_test])
    n_train = len(x_train)
    stats = finite_width(net, x)
    width = stats.widths[-1]
    columns = slice(None), slice(0, n_train)
    theta = stats.ntk[-1][columns]
    kernel, ntk_shift, ntk_fluctuation = _kernel_parts(
        theta, stats.ntk_shift[-1][columns] / width,
        stats.ntk_covariance[:, :n_train, :, :n_train], y, taus)
    dntk_correlation = dntk_statistics(net, x).output_correlation[:n_train, :, :n_train, :n_train]
    ddntk_mean = ddntk_statistics(net, x).output_mean[:n_train, :n_train, :, :n_train]
    dntk, ddntk = _first_order_parts(theta, stats.nngp[-1][:n_train, :n_train], dntk_correlation,
                                     ddntk_mean, y, taus)
    return EnsembleMean(times=torch.as_tensor(times, dtype=torch.float64).reshape(-1), width=width, kernel=kernel,
                        ntk_shift=ntk_shift,
                        ntk_fluctuation=ntk_fluctuation, dntk=dntk, ddntk=ddntk)
