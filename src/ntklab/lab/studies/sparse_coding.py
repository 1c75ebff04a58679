"""Sparse coding (Olshausen & Field 1996; dictionary learning, Mairal et al. 2009): is there a
"basis" v_1, ..., v_m in R^d in which every data point is sparse, x_i ~ sum_j alpha_j^(i) v_j
with at most k non-zero alpha_j^(i)?  Storing the codes and the dictionary costs kN + md numbers
instead of the dN of the raw data.

Planted model: m unit-norm atoms (Gaussian directions, m >= d allowed: overcomplete),
k-sparse codes with uniformly random supports and N(0, 1) values, plus Gaussian noise of
standard deviation `noise / sqrt(d)` per coordinate.  The dictionary is learned with
scikit-learn's `DictionaryLearning` (alternating lasso codes by coordinate descent and
dictionary updates, Mairal et al. 2009) and the codes are then taken by orthogonal
matching pursuit with k non-zeros; no solver is written here.  (MiniBatchDictionaryLearning
recovered only 20-65% of the atoms at these sizes in a trial, the batch solver all of them.)
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from ..._core.validation import positive, positive_int


@dataclass(frozen=True)
class SparseData:
    """Planted data: samples, the dictionary (unit atoms) and the k-sparse codes."""

    x: np.ndarray           # [N, d]
    dictionary: np.ndarray  # [m, d], unit rows
    codes: np.ndarray       # [N, m], k non-zeros per row


def planted(d: int, m: int, k: int, n: int, *, noise: float = 0.0, seed: int = 0) -> SparseData:
    """N samples x = sum_j alpha_j v_j + noise of m random unit atoms v_j in R^d, each with k
    non-zero N(0, 1) codes, noise of std `noise`/sqrt(d) per coordinate (relative size `noise`)."""
    d, m, k, n = (positive_int(v, name) for v, name in ((d, "d"), (m, "m"), (k, "k"), (n, "N")))
    if k > m:
        raise ValueError(f"k={k} non-zeros per code exceed the m={m} atoms; need k <= m")
    noise = positive(noise, "noise", allow_zero=True)
    rng = np.random.default_rng(seed)
    dictionary = rng.standard_normal((m, d))
    dictionary /= np.linalg.norm(dictionary, axis=1, keepdims=True)
    codes = np.zeros((n, m))
    support = np.argsort(rng.random((n, m)), axis=1)[:, :k]
    np.put_along_axis(codes, support, rng.standard_normal((n, k)), axis=1)
    x = codes @ dictionary + noise / np.sqrt(d) * rng.standard_normal((n, d))
    return SparseData(x, dictionary, codes)


def learn(x: np.ndarray, m: int, k: int, *, seed: int = 0, max_iter: int = 100,
          alpha: float = 0.1):
    """Fit a dictionary of m atoms (lasso penalty `alpha` while fitting) and k-sparse OMP
    codes; returns (atoms [m, d], codes [N, m])."""
    from sklearn.decomposition import DictionaryLearning
    from sklearn.exceptions import ConvergenceWarning

    model = DictionaryLearning(n_components=positive_int(m, "m"), alpha=alpha, max_iter=max_iter,
                               fit_algorithm="cd", random_state=seed, transform_algorithm="omp",
                               transform_n_nonzero_coefs=positive_int(k, "k"))
    with warnings.catch_warnings():  # the inner lasso's tolerance, not the dictionary's fit
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x)
    return model.components_, model.transform(x)  # fit_transform would return the lasso codes


def recovery(planted_atoms: np.ndarray, learned_atoms: np.ndarray) -> np.ndarray:
    """For each planted atom, max_j |cos(v, learned_j)| (1 = recovered up to sign)."""
    learned = learned_atoms / np.maximum(np.linalg.norm(learned_atoms, axis=1, keepdims=True), 1e-300)
    return np.abs(planted_atoms @ learned.T).max(axis=1)


def relative_error(x: np.ndarray, codes: np.ndarray, atoms: np.ndarray) -> float:
    """||X - codes atoms||_F / ||X||_F."""
    return float(np.linalg.norm(x - codes @ atoms) / np.linalg.norm(x))


def parameter_counts(d: int, m: int, k: int, n: int) -> dict[str, int]:
    """Numbers stored: raw data dN against k-sparse codes and dictionary kN + md."""
    return {"raw dN": d * n, "sparse kN + md": k * n + m * d}
