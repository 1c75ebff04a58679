"""Finite-width fluctuations of the NTK of deep MLPs (Roberts, Yaida & Hanin 2022, "The
Principles of Deep Learning Theory", ch. 8-9: the amount of representation learning is set
by the depth-to-width ratio epsilon = L/n; Hanin & Nica 2020, "Finite depth and width
corrections to the neural tangent kernel").

Across S independent initializations of an ntklab MLP with L hidden layers of width n, the
empirical NTK's diagonal Theta(x, x) is random; its mean tends to the infinite-width NTK and its
fluctuations vanish as n -> infinity at fixed L.  At large but finite width the corrections are
computed, not fitted, by `nk.finite_width` (the book's 1/n recursions): for the bias-free ReLU
MLP at criticality Var Theta / (E Theta)^2 = (L/n)(11L + 7)/(3(L + 1)) -- set by L/n, with an
L-dependent coefficient (3 at L = 1 rising to 11/3) -- and no 1/n shift of the mean.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import torch
from torch.func import jvp
from tqdm.auto import tqdm

import ntklab as nk
from ..._core.validation import positive_int
from ...conventions import flow_times
from ...theory.ensemble import kernel_solution
from ...theory.finite_width import finite_width, mlp_layers, ntk_diagonal_samples
from ...kernels.empirical import empirical_ntk
from ...kernels.monte_carlo import monte_carlo_kernel
from ...theory.hierarchy import flow_in_book_time, ntk_hierarchy


CRITICAL_RELU = {"W_std": math.sqrt(2.0), "b_std": 0.0}
"""`nk.mlp(depth, width, **CRITICAL_RELU)`: ReLU MLPs at criticality (biases initialized at zero)."""
CRITICAL_TANH = {"W_std": 1.0, "b_std": 0.0, "activation": nk.Tanh()}
"""tanh MLPs at criticality (the K* = 0 class: C_W = 1/σ'(0)² = 1, C_b = 0; `nk.criticality`)."""
ORDERED_TANH = {"W_std": 0.8, "b_std": 0.0, "activation": nk.Tanh()}
"""tanh MLPs off criticality, in the ordered phase (C_W = 0.64 < 1: the kernel decays with depth),
where the 1/n shift of the NTK's mean, Θ¹, is large next to its fluctuations (Θ¹/Θ ≈ -0.38 n⁻¹
against a standard deviation 1.7 n^-1/2 at L = 4)."""


def variance_standard_error(sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sample variance (ddof 1) of each column and its standard error from the fourth central
    moment, sqrt((m4 - (S-3)/(S-1) var²)/S): Θ̂ is skewed at large L/n, where the Gaussian
    formula sqrt(2/(S-1)) var understates the error."""
    s = len(sample)
    centered = sample - sample.mean(0)
    var = (centered ** 2).sum(0) / (s - 1)
    m4 = (centered ** 4).mean(0)
    return var, np.sqrt(np.maximum(m4 - var ** 2 * (s - 3) / (s - 1), 0.0) / s)


def diagonal_point(arch: nk.Serial, x: torch.Tensor, count: int, *, seed: int = 0, device=None) -> dict:
    """`count` exact samples of Θ̂(x, x) at one input (`nk.ntk_diagonal_samples`) reduced to the two
    order-1/n observables scaled by the last hidden width n, each with its standard error
    (delta method: the sample mean of the influence function), beside their predictions
    (`nk.finite_width`), which do not depend on n:
      scaled_relative_variance  n Var Θ̂ / (E Θ̂)²          predicted n (A + 2B) / (n Θ²);
      scaled_mean_shift         n (E Θ̂ - Θ) / Θ            predicted Θ¹ / Θ."""
    x = torch.as_tensor(x, dtype=torch.float64).reshape(1, -1)
    sample = ntk_diagonal_samples(arch, x, count, seed=seed, device=device).numpy()
    infinite, predicted_variance, predicted_shift = (float(v[0]) for v in predicted_diagonal(arch, x))
    width, size = mlp_layers(arch)[0][-2].out, len(sample)
    mean = sample.mean()
    centered = sample - mean
    var = (centered ** 2).sum() / (size - 1)
    influence = (centered ** 2 - var) / mean ** 2 - 2 * var * centered / mean ** 3   # of Var / E²
    return {"width": width, "networks": size, "infinite_ntk": infinite,
            "scaled_relative_variance": width * var / mean ** 2,
            "scaled_relative_variance_se": width * influence.std() / math.sqrt(size),
            "predicted_scaled_relative_variance": width * predicted_variance,
            "scaled_mean_shift": width * (mean - infinite) / infinite,
            "scaled_mean_shift_se": width * math.sqrt(var / size) / infinite,
            "predicted_scaled_mean_shift": width * predicted_shift}


def fit_in_inverse_width(widths, values, se, terms: int = 3) -> tuple[np.ndarray, np.ndarray, float]:
    """Weighted least squares of values(n) = c_0 + c_1/n + ... + c_{terms-1}/n^(terms-1), each
    point weighted by 1/se²: the coefficients, their standard errors (from (XᵀWX)⁻¹, the se taken
    as known) and χ²/dof of the residuals (near 1 when the truncated series describes the
    data; nan without a degree of freedom). c_0 is the extrapolation to infinite width."""
    widths, values, se = (np.asarray(v, float) for v in (widths, values, se))
    if len(widths) < terms or not np.all(se > 0):
        raise ValueError(f"a fit with {terms} terms needs at least {terms} widths with positive standard "
                         f"errors, got {len(widths)}")
    design = (1 / widths[:, None]) ** np.arange(terms) / se[:, None]
    coefficients, *_ = np.linalg.lstsq(design, values / se, rcond=None)
    covariance = np.linalg.inv(design.T @ design)
    residual = values / se - design @ coefficients
    dof = len(widths) - terms
    return coefficients, np.sqrt(covariance.diagonal()), float(residual @ residual / dof) if dof else float("nan")


def predicted_diagonal(arch: nk.Serial, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per input x_a, from `nk.finite_width` of that input alone: the infinite-width Θ(x_a, x_a),
    the relative variance (A + 2B) / (n Θ²) and the relative mean shift Θ¹ / (n Θ)."""
    stats = [finite_width(arch, row) for row in torch.as_tensor(x, dtype=torch.float64)]
    infinite = np.array([float(s.ntk[-1]) for s in stats])
    return (infinite, np.array([float(s.ntk_relative_variance) for s in stats]),
            np.array([float(s.ntk_shift[-1]) / s.widths[-1] for s in stats]) / infinite)


COVARIANCE_ENTRIES = ((0, 0, 0, 0), (0, 1, 0, 1), (0, 0, 1, 1), (0, 0, 0, 1), (0, 1, 0, 2),
                      (0, 1, 2, 3), (1, 2, 2, 3), (0, 0, 2, 3))
"""(a, b, c, d) of Cov[Θ(x_a, x_b), Θ(x_c, x_d)]: one, two, three and four distinct inputs."""


def ntk_covariance_statistics(arch: nk.Serial, x: torch.Tensor, seeds: int, *,
                              first_seed: int = 0) -> list[dict]:
    """Cov[Θ̂(x_a, x_b), Θ̂(x_c, x_d)] of one output over `seeds` initializations (Monte Carlo,
    standard error of the mean of the centred products) beside `nk.finite_width`'s
    (A_(ab)(cd) + B_(ac)(bd) + B_(ad)(bc)) / n_L, for the COVARIANCE_ENTRIES that fit in x."""
    seeds = positive_int(seeds, "seeds")
    thetas = []
    monte_carlo_kernel(arch, x, n_samples=seeds, get="ntk", seed=first_seed, dtype=torch.float64,
                       each=lambda s, k: thetas.append(k["ntk"].numpy().copy()))
    centered = np.stack(thetas) - np.mean(thetas, 0)
    predicted = finite_width(arch, x).ntk_covariance.numpy()
    rows = []
    for a, b, c, d in (e for e in COVARIANCE_ENTRIES if max(e) < len(x)):
        product = centered[:, a, b] * centered[:, c, d]
        estimate, error = product.mean() * seeds / (seeds - 1), product.std(ddof=1) / math.sqrt(seeds)
        rows.append({"entry": f"Θ({a},{b}), Θ({c},{d})", "indices": (a, b, c, d),
                     "predicted": float(predicted[a, b, c, d]),
                     "monte_carlo": float(estimate), "se": float(error),
                     "z": float((estimate - predicted[a, b, c, d]) / error)})
    return rows


def _means(samples: dict[str, list]) -> dict[str, np.ndarray]:
    """Each named list of per-network samples as its mean and "<name>_se", the standard error."""
    out = {}
    for name, sample in samples.items():
        stacked = np.stack(sample)
        out[name], out[name + "_se"] = stacked.mean(0), stacked.std(0, ddof=1) / math.sqrt(len(stacked))
    return out


def hierarchy_moments(arch: nk.Serial, x: torch.Tensor, seeds: int, *, first_seed: int = 0,
                      ddntk: bool = True) -> dict[str, np.ndarray]:
    """Monte Carlo over `seeds` initializations of a single-output MLP, from each network's own
    hierarchy (`nk.ntk_hierarchy`) at the inputs x [N, d]: "dntk_output"[a,b,c,d] =
    E[dĤ(x_a,x_b,x_c) z(x_d)] (the dNTK-output correlation) and "ddntk"[a,b,c,d] =
    E[ddĤ(x_a,x_b,x_c,x_d)] (the ddNTK mean; skipped with ddntk=False), both O(1/n) (PDLT ch. 11:
    P, Q and R, S, T, U for one output), each with "<name>_se", the standard error of the mean.
    Smooth activations only: autodiff misses ReLU's kinks."""
    seeds = positive_int(seeds, "seeds")
    x = torch.as_tensor(x, dtype=torch.float64)
    samples: dict[str, list[np.ndarray]] = {"dntk_output": [], **({"ddntk": []} if ddntk else {})}
    for seed in range(first_seed, first_seed + seeds):
        hierarchy = ntk_hierarchy(arch.module(x.shape[1], seed=seed, dtype=torch.float64), x, x[:0],
                                  ddntk=ddntk)       # δ over the N training points
        samples["dntk_output"].append(torch.einsum("abc,d->abcd", hierarchy.dntk, hierarchy.output).numpy())
        if hierarchy.ddntk is not None:   # computed when ddntk
            samples["ddntk"].append(hierarchy.ddntk.numpy())
    return _means(samples)


def ensemble_samples(arch: nk.Serial, x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
                     times, seeds: int, *, learning_rate: float = 1.0, first_seed: int = 0,
                     first_order: bool = True) -> dict[str, np.ndarray]:
    """Monte Carlo over `seeds` initializations of a single-output MLP trained by gradient flow,
    for `nk.ensemble_mean_flow`: per network, [T, M] at the test points,

    - "kernel": G_t(Ĥ) y - DG_t(Θ)[Ĥ - Θ - Θ¹/n] y, the frozen-kernel solution of the network's own
      NTK Ĥ less its part odd in z(0) (mean exactly zero: flipping the readout's signs flips z(0)
      and keeps Ĥ) and less a control variate of mean O(1/n²) (Θ, Θ¹ of `nk.finite_width`);
      mean: `kernel + ntk_shift + ntk_fluctuation` + O(1/n²);
    - "first_order" (with first_order=True): z₁ of `nk.nearly_kernel_flow` less its dNTK part
      with z(0) set to zero (odd in the readout's signs, mean exactly zero); mean: `dntk + ddntk`.

    `times` and `learning_rate` as `nk.ensemble_mean_flow` (`ntklab.conventions`).
    Returns the means [T, M] and "<name>_se" their standard errors."""
    seeds = positive_int(seeds, "seeds")
    x = torch.cat([x_train, x_test]).to(torch.float64)
    y = torch.as_tensor(y_train, dtype=torch.float64).reshape(-1)
    n_train = len(y)
    taus = flow_times(times, learning_rate, n_train)
    stats = finite_width(arch, x)
    theta = stats.ntk[-1][:, :n_train]
    shift = stats.ntk_shift[-1][:, :n_train] / stats.widths[-1]
    solutions = [functools.partial(kernel_solution, y=y, t=float(t)) for t in taus]
    samples: dict[str, list[np.ndarray]] = {"kernel": [], **({"first_order": []} if first_order else {})}
    for seed in tqdm(range(first_seed, first_seed + seeds), desc="networks", unit="network", leave=False):
        model = arch.module(x.shape[1], seed=seed, dtype=torch.float64)
        if first_order:
            hierarchy = ntk_hierarchy(model, x[:n_train], x[n_train:])
            ntk = hierarchy.ntk
            flow = flow_in_book_time(hierarchy, y, taus)
            odd = flow_in_book_time(dataclasses.replace(hierarchy, output=torch.zeros_like(hierarchy.output)),
                                    y, taus, terms=("dntk",))
            samples["first_order"].append((flow["nearly_kernel"] - flow["kernel"]
                                           - odd["nearly_kernel"] + odd["kernel"]).numpy())
        else:
            ntk = empirical_ntk(model, x)[:, :n_train]
        samples["kernel"].append(torch.stack([
            solution(ntk) - jvp(solution, (theta,), (ntk - theta - shift,))[1] for solution in solutions]).numpy())
    return _means(samples)
