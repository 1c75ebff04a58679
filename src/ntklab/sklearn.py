"""scikit-learn estimators for infinitely wide networks: NTK / NNGP regression and
NTK classification by one-hot regression.

They fit by the closed forms of `predict.gradient_descent_mse_ensemble`
(Lee et al. 2019): the mean prediction of an infinite ensemble of infinitely
wide networks with architecture `architecture`, trained by gradient flow on the
MSE for time `t` (`t=None`: to convergence, i.e. kernel (ridge) regression

    f(x) = Theta(x, X) (Theta(X, X) + diag_reg * mean(diag Theta) I)^-1 Y ).

`architecture` is an ntklab architecture (`nk.serial(...)`) or its string form
("Dense(512, W_std=1.5), Relu(), Dense(1)"), so it can be searched over with
`GridSearchCV`.  Inputs are validated by scikit-learn; kernels are float64.
"""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .arch import Serial, mlp
from .arch.spec import parse_architecture
from .predict import gradient_descent_mse_ensemble

__all__ = ["NNGPRegressor", "NTKClassifier", "NTKRegressor"]


def default_architecture() -> Serial:
    """Two hidden ReLU layers, NTK parameterization (the widths do not enter the kernels)."""
    return mlp(2, 512, W_std=1.5, b_std=0.05)


def resolve_architecture(architecture) -> Serial:
    if architecture is None:
        return default_architecture()
    if isinstance(architecture, str):
        return parse_architecture(architecture)
    if isinstance(architecture, Serial):
        return architecture
    raise ValueError("architecture must be None, an ntklab architecture (nk.serial(...)) or a "
                     f"string such as 'Dense(512), Relu(), Dense(1)', got {architecture!r}")


class _InfiniteNetwork(BaseEstimator):
    """Shared fit/predict: one predictor per fit, rebuilt after unpickling."""
    _kernel = "ntk"

    def __init__(self, architecture=None, diag_reg=1e-4, t=None, learning_rate=1.0):
        self.architecture = architecture
        self.diag_reg = diag_reg
        self.t = t
        self.learning_rate = learning_rate

    def _fit_targets(self, X, Y) -> None:
        self.X_fit_, self.Y_fit_ = X, Y
        self._build()

    def _build(self) -> None:
        if self.t is not None and not (np.isscalar(self.t) and self.t >= 0):
            raise ValueError(f"t must be None (trained to convergence) or a time >= 0, got {self.t!r}")
        self._predictor = gradient_descent_mse_ensemble(
            resolve_architecture(self.architecture), self.X_fit_, self.Y_fit_,
            learning_rate=self.learning_rate, diag_reg=self.diag_reg)

    def _mean(self, X) -> np.ndarray:
        check_is_fitted(self, "X_fit_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        if not hasattr(self, "_predictor"):
            self._build()
        return self._predictor(t=self.t, x_test=X, get=self._kernel).numpy()

    def __getstate__(self):   # the predictor holds closures and caches: rebuilt on demand
        state = dict(self.__dict__)
        state.pop("_predictor", None)
        return state


class _Regressor(RegressorMixin, _InfiniteNetwork):
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True   # y [n, outputs]: one kernel, several targets
        return tags

    def fit(self, X, y):
        """Store the training set and factor its kernel."""
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True, multi_output=True)
        self._fit_targets(X, np.asarray(y, dtype=np.float64))
        return self

    def predict(self, X):
        """Mean prediction at time t, shape [n] or [n, outputs] like y."""
        return self._mean(X)


class NTKRegressor(_Regressor):
    """Regression with the NTK of an infinitely wide network trained by gradient
    descent for time `t` (None: to convergence).  `diag_reg` is relative to the
    mean of the kernel's diagonal (neural-tangents' convention)."""
    _kernel = "ntk"


class NNGPRegressor(_Regressor):
    """Regression with the NNGP kernel (Bayesian posterior mean of the infinitely
    wide network's Gaussian process prior, or its last layer trained for time t)."""
    _kernel = "nngp"


class NTKClassifier(ClassifierMixin, _InfiniteNetwork):
    """Classification by NTK regression on one-hot labels, the protocol of the NTK
    literature (Arora et al. 2019; Lee et al. 2019): targets 0.9 for the class and
    -0.1 for the others (one-hot shifted by -0.1), prediction = arg max of the
    regression output.  For two classes `decision_function` is the difference of
    the two outputs (positive for `classes_[1]`)."""
    _kernel = "ntk"

    def fit(self, X, y):
        X, y = validate_data(self, X, y, dtype=np.float64)
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
        scores = self._mean(X)
        return scores[:, 1] - scores[:, 0] if len(self.classes_) == 2 else scores

    def predict(self, X):
        scores = self._mean(X)
        return self.classes_[np.argmax(scores, axis=1)]
