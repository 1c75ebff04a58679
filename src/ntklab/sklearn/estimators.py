"""The estimators: `NTKRegressor`, `NNGPRegressor`, `NTKClassifier` (see the package docstring)."""
from __future__ import annotations

import numbers
from typing import cast

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.model_selection import KFold, check_cv
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .._core.validation import positive, positive_int
from ..arch import Serial
from ..kernels import RandomFeatures
from ..predict import conjugate_gradients, feature_regression, nystrom_regression
from .gp import (WeightedFlow, fit_hyperparameters, log_marginal_likelihood,
                 resolve_architecture, weighted_scale)


def resolve_input_shape(input_shape) -> tuple[int, ...] | None:
    """None, or the shape of one sample as a tuple of 1 to 3 positive ints."""
    if input_shape is None:
        return None
    sizes = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else ()
    if not (1 <= len(sizes) <= 3 and all(isinstance(n, numbers.Integral) and not isinstance(n, bool)
                                         and int(n) > 0 for n in sizes)):
        raise ValueError("input_shape must be None or the shape of one sample as 1 to 3 positive "
                         f"ints, e.g. (C, H, W) = (3, 32, 32) for images, got {input_shape!r}")
    return tuple(int(n) for n in sizes)


def sample_weights(sample_weight, n: int) -> np.ndarray:
    """`sample_weight` as float64 [n] (None: ones; a number: that weight for all), finite,
    >= 0 and not all 0; ValueError naming it otherwise."""
    if sample_weight is None:
        return np.ones(n)
    try:
        weights = np.asarray(sample_weight, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"sample_weight must be None, a number or one number per sample: {err}") from None
    weights = np.full(n, float(weights)) if weights.ndim == 0 else weights
    if weights.shape != (n,):
        raise ValueError(f"sample_weight must hold one weight per sample, shape ({n},), got shape "
                         f"{weights.shape}")
    if not (np.isfinite(weights).all() and (weights >= 0).all()):
        raise ValueError("sample_weight must be finite and >= 0 (a sample of weight 0 is left out)")
    if not (weights > 0).any():
        raise ValueError("sample_weight is zero for every sample; give at least one sample a "
                         "positive weight")
    return weights


def weighted_scaling(y: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean and standard deviation of each column of y [n, m] (a zero deviation is
    taken as 1, as GaussianProcessRegressor's normalize_y)."""
    mean = np.average(y, axis=0, weights=weights)
    std = np.sqrt(np.average((y - mean) ** 2, axis=0, weights=weights))
    return mean, np.where(std > 0, std, 1.0)


class _InfiniteNetwork(BaseEstimator):
    """Shared eager fit: `fit` computes the training kernel, solves for the dual coefficients
    and keeps only what predictions need (the training inputs, their weights and the dual
    coefficients: O(n d) memory; a covariance recomputes the training kernel)."""

    _kernel = "ntk"

    def __init__(self, architecture=None, *, diag_reg=1e-4, t=None, learning_rate=1.0,
                 input_shape=None):
        self.architecture = architecture
        self.diag_reg = diag_reg
        self.t = t
        self.learning_rate = learning_rate
        self.input_shape = input_shape

    def _rows(self, X, *, reset: bool):
        """X with samples of several axes flattened to rows [n, values per sample] (for
        scikit-learn's validation); at fit (`reset`) sets `sample_shape_`, at predict checks it."""
        if reset:
            self.sample_shape_ = resolve_input_shape(self.input_shape)
        if (X.ndim if hasattr(X, "ndim") else np.asarray(X).ndim) <= 2:
            return X
        X = np.asarray(X)
        shape, expected = X.shape[1:], self.sample_shape_
        if reset and expected is None:
            self.sample_shape_ = shape
        elif shape != expected:
            if reset:
                why = f"is given input_shape={expected}"
            elif expected is None:
                why = (f"was fitted on vectors of {self.n_features_in_} features (for images, fit "
                       f"on [N, C, H, W] arrays or give input_shape=(C, H, W))")
            else:
                why = f"was fitted on samples of shape {expected}"
            fix = "" if expected is None else (f"; pass X as [N, {', '.join(map(str, expected))}] "
                                               f"or as flat rows [N, {np.prod(expected)}]")
            raise ValueError(f"X has samples of shape {shape}, but {type(self).__name__} {why}{fix}")
        return X.reshape(len(X), -1)

    def _samples(self, rows: np.ndarray) -> np.ndarray:
        """Validated rows as the architecture's inputs [n, *sample_shape_], a float64 copy (never
        the caller's array, which may be read-only or change later)."""
        x = np.array(rows, dtype=np.float64)
        return x if self.sample_shape_ is None else x.reshape(len(x), *self.sample_shape_)

    def _fit_data(self, X, y, sample_weight, **checks):
        """`validate_data` at fit, on the flattened samples (sets `sample_shape_`), and the
        sample weights."""
        X, y = validate_data(self, self._rows(X, reset=True), y, dtype=np.float64, **checks)
        if self.sample_shape_ is not None and np.prod(self.sample_shape_) != X.shape[1]:
            raise ValueError(f"input_shape={self.sample_shape_} holds {np.prod(self.sample_shape_)} "
                             f"features per sample, but X has {X.shape[1]}; give the shape of one "
                             f"sample, e.g. (C, H, W) for images")
        return X, y, sample_weights(sample_weight, len(X))

    def _test_inputs(self, X) -> torch.Tensor:
        """Validated prediction inputs [n, *sample_shape_] (either layout)."""
        check_is_fitted(self, ("dual_coef_", "coef_"), all_or_any=any)
        return torch.from_numpy(self._samples(validate_data(self, self._rows(X, reset=False),
                                                            reset=False, dtype=np.float64)))

    def _times(self) -> torch.Tensor | None:
        """`t` as the flow's times `[1]`, None for t=None (trained to convergence)."""
        if self.t is None:
            return None
        if not (isinstance(self.t, numbers.Real) and float(self.t) >= 0):   # NaN: not >= 0
            raise ValueError(f"t must be None (trained to convergence) or a time >= 0, got {self.t!r}")
        return torch.tensor([float(self.t)], dtype=torch.float64)

    def _hyperparameters(self, x: torch.Tensor, targets: torch.Tensor,
                         weights: torch.Tensor) -> tuple[Serial, float]:
        """(architecture_, diag_reg_): the given ones (the regressors may fit them)."""
        return (resolve_architecture(self.architecture),
                positive(self.diag_reg, "diag_reg", allow_zero=True))

    def _fit_network(self, X: np.ndarray, targets: np.ndarray,
                     weights: np.ndarray) -> tuple[torch.Tensor, WeightedFlow]:
        """Fit to `targets` [n, m] the samples of positive weight; sets `architecture_`,
        `diag_reg_`, `X_fit_`, `sample_weight_`, `dual_coef_`; returns their training kernel
        and its flow."""
        times, keep = self._times(), weights > 0
        self.X_fit_, self.sample_weight_ = self._samples(X[keep]), weights[keep]
        x, w = torch.from_numpy(self.X_fit_), torch.from_numpy(self.sample_weight_)
        y = torch.from_numpy(np.ascontiguousarray(targets[keep], dtype=np.float64))
        self.architecture_, self.diag_reg_ = self._hyperparameters(x, y, w)
        k = self._kernel_matrix(x)
        flow = self._flow(k, w, y.shape[1])
        self.dual_coef_ = flow.solve(y, times).numpy()
        return k, flow

    def _flow(self, k: torch.Tensor, weights: torch.Tensor, outputs: int) -> WeightedFlow:
        return WeightedFlow(k, weights, diag_reg=self.diag_reg_, learning_rate=self.learning_rate,
                            outputs=outputs)

    def _kernel_matrix(self, x1: torch.Tensor, x2: torch.Tensor | None = None,
                       get: str | None = None) -> torch.Tensor:
        """The architecture's kernel `get` (default: this estimator's) between `x1` and `x2`."""
        # one name in `get`: Serial.kernel returns that kernel's tensor (its annotation,
        # Kernel | Tensor, does not tell one name from several)
        return cast(torch.Tensor, self.architecture_.kernel(x1, x2, get=get or self._kernel))

    def _fit_inputs(self) -> torch.Tensor:
        return torch.from_numpy(self.X_fit_)

    def _mean(self, X) -> np.ndarray:
        return self._kernel_matrix(self._test_inputs(X), self._fit_inputs()).numpy() @ self.dual_coef_


class _Regressor(RegressorMixin, _InfiniteNetwork):
    def __init__(self, architecture=None, *, diag_reg=1e-4, t=None, learning_rate=1.0,
                 input_shape=None, normalize_y=False, optimizer=None, n_restarts_optimizer=0,
                 random_state=None, solver="cholesky", n_components=None, rtol=1e-6,
                 max_iterations=None):
        super().__init__(architecture, diag_reg=diag_reg, t=t, learning_rate=learning_rate,
                         input_shape=input_shape)
        self.normalize_y = normalize_y
        self.optimizer = optimizer
        self.n_restarts_optimizer = n_restarts_optimizer
        self.random_state = random_state
        self.solver = solver
        self.n_components = n_components
        self.rtol = rtol
        self.max_iterations = max_iterations

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True   # y [n, outputs]: one kernel, several targets
        return tags

    def fit(self, X, y, sample_weight=None):
        """Fit to targets `y` [n] or [n, outputs] (normalized first with `normalize_y`), with
        per-sample weights (`sample_weight`: integer weights = repeated samples; 0 = left out);
        with `optimizer`, W_std, b_std and diag_reg are fitted first."""
        self._check_solver()
        for stale in FITTED_BY_SOLVER:   # a refit with another solver
            self.__dict__.pop(stale, None)
        self.solver_ = self.solver
        X, y, weights = self._fit_data(X, y, sample_weight, y_numeric=True, multi_output=True)
        y = np.asarray(y, dtype=np.float64)
        self._single_output = y.ndim == 1
        y = y[:, None] if self._single_output else y
        keep = weights > 0
        self.y_train_mean_, self.y_train_std_ = (
            weighted_scaling(y[keep], weights[keep]) if self.normalize_y
            else (np.zeros(y.shape[1]), np.ones(y.shape[1])))
        targets = (y - self.y_train_mean_) / self.y_train_std_
        if self.solver != "cholesky":
            self._fit_large(X[keep], targets[keep], weights[keep])
            return self
        k, _ = self._fit_network(X, targets, weights)
        w = torch.from_numpy(self.sample_weight_)
        self.log_marginal_likelihood_value_ = float(log_marginal_likelihood(
            k, torch.from_numpy(targets[keep]), w, self.diag_reg_))
        self.noise_variance_ = self.diag_reg_ * float(weighted_scale(k, w)) * self.y_train_std_ ** 2
        return self

    def _check_solver(self) -> None:
        """`solver` and its parameters, refused before any work when they do not fit together."""
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {', '.join(map(repr, SOLVERS))}, got {self.solver!r}")
        if self.solver == "cholesky":
            return
        for name, given in (("t", self.t), ("optimizer", self.optimizer)):
            if given is not None:
                raise ValueError(f"solver={self.solver!r} solves the t=None predictor with fixed hyperparameters, "
                                 f"but {name}={given!r} was given; use solver='cholesky' for it")
        if self.n_components is not None:
            positive_int(self.n_components, "n_components")
        positive(self.rtol, "rtol")
        if self.max_iterations is not None:
            positive_int(self.max_iterations, "max_iterations")

    def _fit_large(self, X: np.ndarray, targets: np.ndarray, weights: np.ndarray) -> None:
        """Fit with `solver` 'cg', 'nystrom' or 'features' (samples of positive weight only)."""
        x = torch.from_numpy(self._samples(X))
        y, w = torch.from_numpy(np.ascontiguousarray(targets)), torch.from_numpy(weights)
        self.architecture_, self.diag_reg_ = super()._hyperparameters(x, y, w)
        seed = int(check_random_state(self.random_state).randint(2 ** 31 - 1))
        components = self.n_components or DEFAULT_COMPONENTS[self.solver]
        if self.solver == "cg":
            self.X_fit_, self.sample_weight_ = self._samples(X), weights
            root = w.sqrt()[:, None]
            k = self._kernel_matrix(x)
            result = conjugate_gradients(root * k * root.T, root * y, rank=min(components, len(x)),
                                         diag_reg=self.diag_reg_ * float(weighted_scale(k, w)),
                                         diag_reg_absolute_scale=True, rtol=self.rtol,
                                         max_iterations=self.max_iterations, seed=seed, progress=False)
            self.dual_coef_ = (root * result.solution).numpy()
            self.n_iter_, self.relative_residual_ = result.iterations, result.relative_residual.numpy()
        elif self.solver == "nystrom":
            nystrom = nystrom_regression(self.architecture_, x, y, centers=min(components, len(x)),
                                         diag_reg=self.diag_reg_, get=self._kernel, sample_weight=w, seed=seed,
                                         progress=False)
            centers = nystrom.center_index.numpy()
            self.X_fit_, self.sample_weight_ = self._samples(X[centers]), weights[centers]
            self.dual_coef_ = nystrom.alpha.numpy()
        else:
            self.features_ = RandomFeatures(self.architecture_, x[0].numel(), features=components,
                                            get=self._kernel, seed=seed)
            model = feature_regression(lambda batch: self.features_(batch.reshape(len(batch), -1)), x, y,
                                       diag_reg=self.diag_reg_, sample_weight=w, progress=False)
            self.coef_, self.relative_residual_ = model.weights.numpy(), model.relative_residual.numpy()

    def _hyperparameters(self, x, targets, weights):
        """The given hyperparameters, or with `optimizer` those of maximal marginal likelihood."""
        if self.optimizer is None:
            return super()._hyperparameters(x, targets, weights)
        if self.optimizer not in ("lbfgs", "fmin_l_bfgs_b"):
            raise ValueError(f"optimizer must be None (fixed hyperparameters) or 'lbfgs' (W_std, "
                             f"b_std and diag_reg fitted by the marginal likelihood), got "
                             f"{self.optimizer!r}")
        if self.t is not None:
            raise ValueError(f"optimizer fits the hyperparameters of the Gaussian process, the "
                             f"t=None predictor; t={self.t!r} was given: pass t=None, or "
                             f"optimizer=None to keep fixed hyperparameters at a finite time")
        restarts = self.n_restarts_optimizer
        if not (isinstance(restarts, numbers.Integral) and not isinstance(restarts, bool)
                and restarts >= 0):
            raise ValueError(f"n_restarts_optimizer must be an int >= 0, got {restarts!r}")
        return fit_hyperparameters(
            resolve_architecture(self.architecture), x, targets, weights, get=self._kernel,
            diag_reg=positive(self.diag_reg, "diag_reg", allow_zero=True), n_restarts=int(restarts),
            rng=check_random_state(self.random_state))

    def predict(self, X, return_std=False, return_cov=False):
        """Mean prediction at time t, shaped like y ([n] or [n, outputs]); with `return_std`
        also its standard deviation (the same shape), with `return_cov` its covariance ([n, n],
        or [n, n, outputs] for several outputs), as GaussianProcessRegressor."""
        if return_std and return_cov:
            raise ValueError("at most one of return_std and return_cov can be True "
                             "(as in GaussianProcessRegressor)")
        x = self._test_inputs(X)
        if (return_std or return_cov) and self.solver_ != "cholesky":
            raise ValueError(f"return_std and return_cov need the training kernel's factorization: fit with "
                             f"solver='cholesky' (this estimator was fitted with solver={self.solver_!r})")
        mean = (self.features_(x.reshape(len(x), -1)).numpy() @ self.coef_ if self.solver_ == "features"
                else self._kernel_matrix(x, self._fit_inputs()).numpy() @ self.dual_coef_)
        mean = mean * self.y_train_std_ + self.y_train_mean_
        if return_std or return_cov:
            cov = self._covariance(x).numpy()
            spread = (np.sqrt(np.clip(np.diag(cov), 0.0, None))[:, None] * self.y_train_std_
                      if return_std else cov[:, :, None] * self.y_train_std_ ** 2)
        if self._single_output:
            mean = mean[:, 0]
            spread = spread[..., 0] if return_std or return_cov else None
        return (mean, spread) if return_std or return_cov else mean

    def _covariance(self, x: torch.Tensor) -> torch.Tensor:
        """Covariance [n_test, n_test] of the normalized predictions at `x` (from the
        recomputed training kernel)."""
        raise NotImplementedError


SOLVERS = ("cholesky", "cg", "nystrom", "features")
DEFAULT_COMPONENTS = {"cg": 100, "nystrom": 1000, "features": 1024}
FITTED_BY_SOLVER = ("dual_coef_", "coef_", "features_", "n_iter_", "relative_residual_",
                    "log_marginal_likelihood_value_", "noise_variance_")
"""`n_components=None`: the rank of CG's Nystrom preconditioner, the Nystrom centers (at most n), the random
features per ReLU layer."""

ATTRIBUTES = """
    Attributes
    ----------
    X_fit_ : ndarray [n, ...]
        The training inputs of positive weight (a float64 copy).
    sample_weight_ : ndarray [n]
        Their weights (ones without `sample_weight`).
    dual_coef_ : ndarray [n, outputs]
        `f(x) = K(x, X_fit_) dual_coef_` (for the normalized targets), K this estimator's kernel.
    architecture_ : Serial
        The architecture used (with the fitted W_std, b_std under `optimizer`).
    diag_reg_ : float
        The ridge used (the fitted one under `optimizer`).
    sample_shape_ : tuple or None
        The shape of one sample when it has several axes.
    n_features_in_ : int"""

REGRESSOR_ATTRIBUTES = ATTRIBUTES + """
    y_train_mean_, y_train_std_ : ndarray [outputs]
        The (weighted) mean and standard deviation of y with `normalize_y`, else 0 and 1.
    log_marginal_likelihood_value_ : float
        `log N(y | 0, K + diag_reg_ s W^-1)` of the normalized targets (summed over outputs), s the
        weighted mean of diag K: the marginal likelihood of the t=None Gaussian process.
    noise_variance_ : ndarray [outputs]
        `diag_reg_ s y_train_std_^2`, that process's noise variance for a sample of weight 1.
        `predict`'s std is the latent function's (as GaussianProcessRegressor's with `alpha`):
        an interval for new observations uses `sqrt(std^2 + noise_variance_)`.
    solver_ : str
        The solver of the fit.  With "nystrom", `X_fit_`, `sample_weight_` and `dual_coef_` are those of the
        centers; with "features", `features_` (the feature map) and `coef_` [D, outputs] replace them
        (`f(x) = features_(x) coef_`).
    n_iter_, relative_residual_ : int, ndarray [outputs]
        CG's iterations and its final relative residual ("cg"; "features": the residual of the normal
        equations)."""

REGRESSOR_PARAMETERS = """
    Parameters
    ----------
    architecture : Serial or str, optional
        An ntklab description or its `--arch` string (default: a 2-hidden-layer ReLU MLP,
        W_std=1.5, b_std=0.05).
    diag_reg : float
        Ridge relative to the (weighted) mean of the kernel's diagonal (the noise variance of the
        Gaussian process, as a fraction of the prior variance); the start under `optimizer`.
    t : float, optional
        Training time (None: t = infinity).
    learning_rate : float
    input_shape : tuple of int, optional
        The shape of one sample, e.g. (C, H, W), when X holds flat rows of images
        (X [N, C, H, W] declares it by itself).
    normalize_y : bool
        Subtract the mean of y and divide by its standard deviation before fitting; predictions,
        standard deviations and covariances are scaled back (as GaussianProcessRegressor).
    optimizer : None or "lbfgs"
        "lbfgs" (or GaussianProcessRegressor's name, "fmin_l_bfgs_b"): fit W_std, b_std (tied
        across the Dense layers, see `ArchitectureKernel`) and diag_reg by maximizing the log
        marginal likelihood (L-BFGS-B on their logarithms, gradients by autograd through the
        kernel; needs t=None and an architecture of Dense layers and activations).  None: the
        given values.
    n_restarts_optimizer : int
        Further L-BFGS-B runs from log-uniform random starts in `gp.BOUNDS`; the best wins.
    random_state : int, RandomState or None
        For those starts, and the random draws of the solvers 'cg', 'nystrom' and 'features'.
    solver : {"cholesky", "cg", "nystrom", "features"}
        How the t=None predictor is solved (as `Ridge`'s `solver`).  "cholesky": the training kernel is
        factorized (O(n^3); every option).  "cg": the kernel is computed in memory and solved by conjugate
        gradients with a Nystrom preconditioner of rank `n_components` (`nk.predict.conjugate_gradients`).
        "nystrom": kernel ridge regression on `n_components` centers (`nk.predict.nystrom_regression`:
        O(n m^2), never the n x n kernel).  "features": ridge on `n_components` random features per ReLU
        layer (`nk.kernels.RandomFeatures`, `nk.predict.feature_regression`: O(n D^2); Dense + Relu networks
        only).  The three approximate or iterative solvers need t=None and optimizer=None, and give no
        `return_std`/`return_cov`, `log_marginal_likelihood_value_` or `noise_variance_`.
    n_components : int, optional
        The preconditioner's rank ("cg", default 100), the centers ("nystrom", default 1000, at most n), the
        random features per layer ("features", default 1024).
    rtol : float
        CG's relative residual at which it stops.
    max_iterations : int, optional
        CG's iterations (default max(n, 1000))."""


class NTKRegressor(_Regressor):
    """Regression with the NTK of an infinitely wide network trained by gradient
    descent for time `t` (None: to convergence): the mean of
    `nk.predict.gradient_descent_mse_ensemble(get="ntk")`; `predict(X, return_std=True |
    return_cov=True)` also gives that ensemble's covariance at time t (from the NNGP and the NTK).
    `sample_weight` weights the samples' squared errors (integer weights = repeated samples).

    Examples
    --------
    >>> import numpy as np
    >>> from ntklab.sklearn import NTKRegressor
    >>> X = np.random.default_rng(0).normal(size=(30, 3))
    >>> model = NTKRegressor(diag_reg=1e-6).fit(X, np.sin(X[:, 0]))
    >>> mean, std = model.predict(X[:5], return_std=True)
    >>> mean.shape, std.shape
    ((5,), (5,))
    """

    _kernel = "ntk"

    def _covariance(self, x):
        """The ensemble's covariance at time t (`gradient_descent_mse_ensemble`): with T_t(x) =
        A_t Theta(X, x) (`WeightedFlow`), K(x, x') + T_t(x)^T K(X, X) T_t(x') - Theta(x, X) A_t
        K(X, x') - (the same, transposed)."""
        x_fit, times = self._fit_inputs(), self._times()
        train = self.architecture_.kernel(x_fit, get=("nngp", "ntk"))
        cross = self.architecture_.kernel(x, x_fit, get=("nngp", "ntk"))
        flow = self._flow(train.ntk, torch.from_numpy(self.sample_weight_), self.dual_coef_.shape[1])
        transfer = flow.solve(cross.ntk.T, times)
        mixed = cross.ntk @ flow.solve(cross.nngp.T, times)
        return (self._kernel_matrix(x, get="nngp") + transfer.T @ train.nngp @ transfer
                - mixed - mixed.T)


class NNGPRegressor(_Regressor):
    """Regression with the NNGP kernel: the posterior of the infinitely wide network's
    Gaussian process prior (t=None; diag_reg s / w_i is the noise variance of sample i, s the
    weighted mean of diag K), or its last layer trained for time t (Lee et al. 2019).

    `predict(X, return_std=True | return_cov=True)` returns the posterior standard
    deviation / covariance as well, like `GaussianProcessRegressor`:
        cov(x, x') = K(x, x') - K(x, X) A_2t K(X, x'),   A_2t as `gp.WeightedFlow` at rate 2 lr
    (K(x, x') - K(x, X) (K + diag_reg s W^-1)^-1 K(X, x') for t=None), times `y_train_std_^2`.

    Examples
    --------
    >>> import numpy as np
    >>> from ntklab.sklearn import NNGPRegressor
    >>> X = np.random.default_rng(0).normal(size=(30, 3))
    >>> gp = NNGPRegressor(diag_reg=1e-2).fit(X, np.sin(X[:, 0]))
    >>> mean, std = gp.predict(X[:5], return_std=True)
    >>> mean.shape, std.shape
    ((5,), (5,))
    """

    _kernel = "nngp"

    def _covariance(self, x):
        x_fit = self._fit_inputs()
        cross = self._kernel_matrix(x, x_fit)
        flow = self._flow(self._kernel_matrix(x_fit), torch.from_numpy(self.sample_weight_),
                          self.dual_coef_.shape[1])
        return self._kernel_matrix(x) - cross @ flow.solve(cross.T, self._times(), doubled=True)


class NTKClassifier(ClassifierMixin, _InfiniteNetwork):
    """Classification by NTK regression on one-hot labels, the protocol of the NTK
    literature (Arora et al. 2019; Lee et al. 2019): targets 0.9 for the class and
    -0.1 for the others (one-hot shifted by -0.1), prediction = arg max of the
    regression output.  For two classes `decision_function` is the difference of
    the two outputs (positive for `classes_[1]`).

    `predict_proba` is `softmax(scores / temperature_)`, the scores those of `decision_function`
    (one per class): temperature scaling (Guo et al. 2017), a one-parameter Platt scaling
    that keeps the arg max, so that `predict` is the most probable class.  `temperature_`
    minimizes the (weighted) log loss of the cross-validated scores of the training set (`cv`
    folds, each solved on the training kernel already computed: no kernel is evaluated again).
    For a calibration map with more freedom, wrap the classifier in
    `CalibratedClassifierCV(NTKClassifier(), method="sigmoid")`.

    Parameters
    ----------
    architecture : Serial or str, optional
        An ntklab description or its `--arch` string (default: a 2-hidden-layer ReLU MLP).
    diag_reg : float
        Ridge relative to the (weighted) mean diagonal.
    t : float, optional
        Training time (None: t = infinity).
    learning_rate : float
    input_shape : tuple of int, optional
        The shape of one sample, e.g. (C, H, W), when X holds flat rows of images
        (X [N, C, H, W] declares it by itself).
    cv : int, cross-validation generator or iterable of (train, test) splits
        The folds of the calibration (an int: that many shuffled folds, seed 0, at most one per
        sample).

    Examples
    --------
    >>> import numpy as np
    >>> from ntklab.sklearn import NTKClassifier
    >>> X = np.random.default_rng(0).normal(size=(40, 2))
    >>> y = (X[:, 0] > 0).astype(int)
    >>> clf = NTKClassifier(diag_reg=1e-3).fit(X, y)
    >>> clf.score(X, y) > 0.9
    True
    >>> clf.predict_proba(X[:3]).sum(axis=1)
    array([1., 1., 1.])
    """

    _kernel = "ntk"

    def __init__(self, architecture=None, *, diag_reg=1e-4, t=None, learning_rate=1.0,
                 input_shape=None, cv=5):
        super().__init__(architecture, diag_reg=diag_reg, t=t, learning_rate=learning_rate,
                         input_shape=input_shape)
        self.cv = cv

    def fit(self, X, y, sample_weight=None):
        """Fit to class labels `y`: kernel regression on one-hot targets centred at 0.1, with
        per-sample weights (`sample_weight`); then the calibration's temperature."""
        X, y, weights = self._fit_data(X, y, sample_weight)
        check_classification_targets(y)
        binarizer = LabelBinarizer().fit(np.asarray(y)[weights > 0])
        self.classes_ = binarizer.classes_
        if len(self.classes_) < 2:
            raise ValueError(f"NTKClassifier needs samples of at least 2 classes; y holds only "
                             f"1 class ({self.classes_[0]!r}) among the samples of positive weight")
        one_hot = (self.classes_[None, :] == np.asarray(y)[:, None]).astype(np.float64)
        k, _ = self._fit_network(X, one_hot - 0.1, weights)
        self.temperature_ = self._temperature(k, X, one_hot, weights)
        return self

    def _splits(self, X: np.ndarray):
        if isinstance(self.cv, numbers.Integral) and not isinstance(self.cv, bool):
            if self.cv < 2:
                raise ValueError(f"cv must be an int >= 2, a cross-validation generator or "
                                 f"(train, test) splits, got {self.cv!r}")
            return KFold(min(int(self.cv), len(X)), shuffle=True, random_state=0).split(X)
        return check_cv(self.cv).split(X)

    def _temperature(self, k: torch.Tensor, X: np.ndarray, one_hot: np.ndarray,
                     weights: np.ndarray) -> float:
        """The temperature minimizing the weighted log loss of the `cv` scores; `k` is the
        kernel between the samples of positive weight (the folds index all samples)."""
        kept = np.flatnonzero(weights > 0)
        position = np.full(len(X), -1)
        position[kept] = np.arange(len(kept))
        w, targets = weights[kept], one_hot[kept] - 0.1
        scores, scored = np.zeros_like(targets), np.zeros(len(kept), dtype=bool)
        for train, test in self._splits(X):
            train, test = (position[i][position[i] >= 0] for i in (np.asarray(train), np.asarray(test)))
            if len(train) and len(test):
                flow = self._flow(k[train][:, train], torch.from_numpy(w[train]), targets.shape[1])
                coef = flow.solve(torch.from_numpy(targets[train]), self._times())
                scores[test] = (k[test][:, train] @ coef).numpy()
                scored[test] = True
        labels = np.argmax(one_hot[kept], axis=1)[scored]
        scores, w = scores[scored], w[scored]

        def log_loss(log_t: float) -> float:
            log_p = log_softmax(scores / np.exp(log_t), axis=1)
            return -float(np.sum(w * log_p[np.arange(len(labels)), labels]))

        if not scored.any():
            return 1.0
        return float(np.exp(minimize_scalar(log_loss, bounds=np.log([1e-3, 1e3]),
                                            method="bounded").x))

    def decision_function(self, X):
        """Scores: the margin of class 1 over class 0 for two classes, else one column per class."""
        scores = self._mean(X)
        return scores[:, 1] - scores[:, 0] if len(self.classes_) == 2 else scores

    def predict_proba(self, X):
        """Class probabilities [n, classes]: softmax of the scores divided by `temperature_`."""
        return softmax(self._mean(X) / self.temperature_, axis=1)

    def predict(self, X):
        """The class with the highest regression score."""
        scores = self._mean(X)
        return self.classes_[np.argmax(scores, axis=1)]


NTKRegressor.__doc__ = f"{NTKRegressor.__doc__}{REGRESSOR_PARAMETERS}\n{REGRESSOR_ATTRIBUTES}\n"
NNGPRegressor.__doc__ = f"{NNGPRegressor.__doc__}{REGRESSOR_PARAMETERS}\n{REGRESSOR_ATTRIBUTES}\n"
NTKClassifier.__doc__ = f"""{NTKClassifier.__doc__}{ATTRIBUTES}
    classes_ : ndarray
        The class labels (of the samples of positive weight).
    temperature_ : float
        The calibration's temperature (in [1e-3, 1e3]).
"""
