"""scikit-learn estimators for infinitely wide networks: NTK / NNGP regression and
NTK classification by one-hot regression.

They fit eagerly by the closed forms of `predict.gradient_descent_mse_ensemble`
(Lee et al. 2019; `predict.GradientFlow`): the mean prediction of an infinite ensemble of infinitely
wide networks with architecture `architecture`, trained by gradient flow on the
MSE for time `t` (`t=None`: to convergence, i.e. kernel (ridge) regression

    f(x) = Theta(x, X) (Theta(X, X) + diag_reg * mean(diag Theta) I)^-1 Y ).

`architecture` is an ntklab architecture (`nk.serial(...)`) or its string form
("Dense(512, W_std=1.5), Relu(), Dense(1)"), so it can be searched over with
`GridSearchCV`.  Inputs are validated by scikit-learn; kernels are float64.

Samples with more than one axis (images `[N, C, H, W]` for convolutional
architectures, sequences `[N, T, C]`) are taken as they are, or as flat rows
`[N, C*H*W]` when `input_shape=(C, H, W)` is given; either way `n_features_in_` is the
number of values per sample, and predictions accept either layout.
"""
from __future__ import annotations

import numbers
from typing import cast

import numpy as np
import torch

from ._core.extras import import_extra
from .arch import Serial, mlp
from .arch.spec import parse_architecture
from .predict import GradientFlow

import_extra("sklearn", "sklearn")   # without scikit-learn: one line saying which extra installs it
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin  # noqa: E402
from sklearn.preprocessing import LabelBinarizer  # noqa: E402
from sklearn.utils.multiclass import check_classification_targets  # noqa: E402
from sklearn.utils.validation import check_is_fitted, validate_data  # noqa: E402

__all__ = ["NNGPRegressor", "NTKClassifier", "NTKRegressor"]


def default_architecture() -> Serial:
    """Two hidden ReLU layers, NTK parameterization (the widths do not enter the kernels)."""
    return mlp(2, 512, W_std=1.5, b_std=0.05)


def resolve_architecture(architecture) -> Serial:
    if architecture is None:
        return default_architecture()
    if isinstance(architecture, str):
        return parse_architecture(architecture, argument="architecture")
    if isinstance(architecture, Serial):
        return architecture
    raise ValueError("architecture must be None, an ntklab architecture (nk.serial(...)) or a "
                     f"string such as 'Dense(512), Relu(), Dense(1)', got {architecture!r}")


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


class _InfiniteNetwork(BaseEstimator):
    """Shared eager fit: `fit` computes the training kernel, factorizes it and stores
    the dual coefficients; `predict` only applies them (scikit-learn's convention).

    Learned attributes: `sample_shape_` (None for vectors, else the shape of one sample,
    e.g. (C, H, W)); `X_fit_` [n, *sample shape]; `dual_coef_` [n, outputs] with
    f(x) = K(x, X_fit_) dual_coef_, where K is this estimator's kernel and
    dual_coef_ = G^-1 (I - e^{-lr G t / |Y|}) Y (G^-1 Y for t=None), G = K(X, X) +
    diag_reg mean(diag K) I (`predict.GradientFlow`)."""

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

    def _samples(self, rows: np.ndarray) -> torch.Tensor:
        """Validated rows as the architecture's inputs [n, *sample_shape_]."""
        x = torch.as_tensor(rows, dtype=torch.float64)
        return x if self.sample_shape_ is None else x.reshape(len(x), *self.sample_shape_)

    def _fit_data(self, X, y, **checks):
        """`validate_data` at fit, on the flattened samples; sets `sample_shape_`."""
        X, y = validate_data(self, self._rows(X, reset=True), y, dtype=np.float64, **checks)
        if self.sample_shape_ is not None and np.prod(self.sample_shape_) != X.shape[1]:
            raise ValueError(f"input_shape={self.sample_shape_} holds {np.prod(self.sample_shape_)} "
                             f"features per sample, but X has {X.shape[1]}; give the shape of one "
                             f"sample, e.g. (C, H, W) for images")
        return X, y

    def _test_inputs(self, X) -> torch.Tensor:
        """Validated prediction inputs [n, *sample_shape_] (either layout)."""
        check_is_fitted(self, "dual_coef_")
        return self._samples(validate_data(self, self._rows(X, reset=False), reset=False,
                                           dtype=np.float64))

    def _times(self) -> torch.Tensor | None:
        """`t` as the flow's times `[1]`, None for t=None (trained to convergence)."""
        if self.t is None:
            return None
        if not (isinstance(self.t, numbers.Real) and float(self.t) >= 0):   # NaN: not >= 0
            raise ValueError(f"t must be None (trained to convergence) or a time >= 0, got {self.t!r}")
        return torch.tensor([float(self.t)], dtype=torch.float64)

    def _fit_targets(self, X, Y) -> None:
        times = self._times()
        self.architecture_ = resolve_architecture(self.architecture)
        self.X_fit_ = self._samples(X)
        targets = torch.as_tensor(Y, dtype=torch.float64)
        targets = targets[:, None] if targets.ndim == 1 else targets
        self.flow_ = GradientFlow(self._kernel_matrix(self.X_fit_), targets.numel(),
                                  learning_rate=self.learning_rate, diag_reg=self.diag_reg)
        coef = self.flow_.solve(targets, times)
        self.dual_coef_ = (coef if times is None else coef[0]).numpy()

    def _kernel_matrix(self, x1: torch.Tensor, x2: torch.Tensor | None = None,
                       get: str | None = None) -> torch.Tensor:
        """The architecture's kernel `get` (default: this estimator's) between `x1` and `x2`."""
        # one name in `get`: Serial.kernel returns that kernel's tensor (its annotation,
        # Kernel | Tensor, does not tell one name from several)
        return cast(torch.Tensor, self.architecture_.kernel(x1, x2, get=get or self._kernel))

    def _cross_kernel(self, x: torch.Tensor) -> torch.Tensor:
        return self._kernel_matrix(x, self.X_fit_)

    def _mean(self, X) -> np.ndarray:
        return self._cross_kernel(self._test_inputs(X)).numpy() @ self.dual_coef_


class _Regressor(RegressorMixin, _InfiniteNetwork):
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True   # y [n, outputs]: one kernel, several targets
        return tags

    def fit(self, X, y):
        """Compute and factorize the training kernel; store `dual_coef_`."""
        X, y = self._fit_data(X, y, y_numeric=True, multi_output=True)
        y = np.asarray(y, dtype=np.float64)
        self._single_output = y.ndim == 1
        self._fit_targets(X, y)
        return self

    def predict(self, X):
        """Mean prediction at time t, shape [n] or [n, outputs] like y."""
        mean = self._mean(X)
        return mean[:, 0] if self._single_output else mean


class NTKRegressor(_Regressor):
    """Regression with the NTK of an infinitely wide network trained by gradient
    descent for time `t` (None: to convergence).  `diag_reg` is relative to the
    mean of the kernel's diagonal (neural-tangents' convention).

    Parameters
    ----------
    architecture : Serial or str, optional
        An ntklab description or its `--arch` string (default: a 2-hidden-layer ReLU MLP).
    diag_reg : float
        Ridge relative to the mean diagonal.
    t : float, optional
        Training time (None: t = infinity).
    learning_rate : float
    input_shape : tuple of int, optional
        The shape of one sample, e.g. (C, H, W), when X holds flat rows of images
        (X [N, C, H, W] declares it by itself).

    Examples
    --------
    >>> import numpy as np
    >>> from ntklab.sklearn import NTKRegressor
    >>> X = np.random.default_rng(0).normal(size=(30, 3))
    >>> model = NTKRegressor(diag_reg=1e-6).fit(X, np.sin(X[:, 0]))
    >>> model.predict(X[:5]).shape
    (5,)
    """

    _kernel = "ntk"


class NNGPRegressor(_Regressor):
    """Regression with the NNGP kernel: the posterior of the infinitely wide network's
    Gaussian process prior (t=None; `diag_reg` mean(diag K) is the noise variance), or
    its last layer trained for time t (Lee et al. 2019).

    `predict(X, return_std=True | return_cov=True)` returns the posterior standard
    deviation / covariance as well, like `GaussianProcessRegressor`:
        cov(x, x') = K(x, x') - K(x, X) G^-1 (I - e^{-2 lr G t / |Y|}) K(X, x')
    (K(x, x') - K(x, X) G^-1 K(X, x') for t=None), the same for every output.

    Parameters
    ----------
    architecture : Serial or str, optional
        An ntklab description or its `--arch` string (default: a 2-hidden-layer ReLU MLP).
    diag_reg : float
        Ridge relative to the mean diagonal.
    t : float, optional
        Training time (None: t = infinity).
    learning_rate : float
    input_shape : tuple of int, optional
        The shape of one sample, e.g. (C, H, W), when X holds flat rows of images
        (X [N, C, H, W] declares it by itself).

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

    def predict(self, X, return_std=False, return_cov=False):
        """The posterior mean at `X`; with `return_std` its standard deviation, with `return_cov`
        its covariance (as GaussianProcessRegressor)."""
        if return_std and return_cov:
            raise ValueError("at most one of return_std and return_cov can be True "
                             "(as in GaussianProcessRegressor)")
        x = self._test_inputs(X)
        k_cross = self._cross_kernel(x)                                  # [n_test, n]
        mean = k_cross.numpy() @ self.dual_coef_
        mean = mean[:, 0] if self._single_output else mean
        if not (return_std or return_cov):
            return mean
        times = self._times()
        explained = self.flow_.solve(k_cross.T, times, doubled=True)
        explained = explained if times is None else explained[0]
        cov = (self._kernel_matrix(x, get="nngp") - k_cross @ explained).numpy()
        if return_cov:
            return mean, cov
        return mean, np.sqrt(np.clip(np.diag(cov), 0.0, None))


class NTKClassifier(ClassifierMixin, _InfiniteNetwork):
    """Classification by NTK regression on one-hot labels, the protocol of the NTK
    literature (Arora et al. 2019; Lee et al. 2019): targets 0.9 for the class and
    -0.1 for the others (one-hot shifted by -0.1), prediction = arg max of the
    regression output.  For two classes `decision_function` is the difference of
    the two outputs (positive for `classes_[1]`).

    Parameters
    ----------
    architecture : Serial or str, optional
        An ntklab description or its `--arch` string (default: a 2-hidden-layer ReLU MLP).
    diag_reg : float
        Ridge relative to the mean diagonal.
    t : float, optional
        Training time (None: t = infinity).
    learning_rate : float
    input_shape : tuple of int, optional
        The shape of one sample, e.g. (C, H, W), when X holds flat rows of images
        (X [N, C, H, W] declares it by itself).

    Examples
    --------
    >>> import numpy as np
    >>> from ntklab.sklearn import NTKClassifier
    >>> X = np.random.default_rng(0).normal(size=(40, 2))
    >>> y = (X[:, 0] > 0).astype(int)
    >>> clf = NTKClassifier(diag_reg=1e-3).fit(X, y)
    >>> clf.score(X, y) > 0.9
    True
    """

    _kernel = "ntk"

    def fit(self, X, y):
        """Fit to class labels `y`: kernel regression on one-hot targets centred at 0.1."""
        X, y = self._fit_data(X, y)
        check_classification_targets(y)
        binarizer = LabelBinarizer().fit(y)
        self.classes_ = binarizer.classes_
        if len(self.classes_) < 2:
            raise ValueError(f"NTKClassifier needs samples of at least 2 classes; y holds only "
                             f"1 class ({self.classes_[0]!r})")
        one_hot = (self.classes_[None, :] == np.asarray(y)[:, None]).astype(np.float64)
        self._fit_targets(X, one_hot - 0.1)
        return self

    def decision_function(self, X):
        """Scores: the margin of class 1 over class 0 for two classes, else one column per class."""
        scores = self._mean(X)
        return scores[:, 1] - scores[:, 0] if len(self.classes_) == 2 else scores

    def predict(self, X):
        """The class with the highest regression score."""
        scores = self._mean(X)
        return self.classes_[np.argmax(scores, axis=1)]
