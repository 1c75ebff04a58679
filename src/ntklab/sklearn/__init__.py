"""scikit-learn estimators for infinitely wide networks: NTK / NNGP regression and
NTK classification by one-hot regression, and an architecture as a Gaussian-process kernel.

The estimators fit eagerly by the closed forms of `predict.gradient_descent_mse_ensemble`
(Lee et al. 2019; `predict.GradientFlow`): the mean prediction of an infinite ensemble of infinitely
wide networks with architecture `architecture`, trained by gradient flow on the
(sample-weighted) MSE for time `t` (`t=None`: to convergence, i.e. kernel (ridge) regression

    f(x) = Theta(x, X) (Theta(X, X) + diag_reg * mean(diag Theta) W^-1)^-1 Y,   W = diag(sample_weight) ).

`architecture` is an ntklab architecture (`nk.serial(...)`) or its string form
("Dense(512, W_std=1.5), Relu(), Dense(1)"), so it can be searched over with
`GridSearchCV`; the regressors can also fit W_std, b_std and diag_reg by the Gaussian process's
marginal likelihood (`optimizer="lbfgs"`).  Inputs are validated by scikit-learn; kernels are
float64.  A fitted estimator keeps O(n d) numbers (no n x n matrix): a predictive covariance
recomputes the training kernel.

Samples with more than one axis (images `[N, C, H, W]` for convolutional
architectures, sequences `[N, T, C]`) are taken as they are, or as flat rows
`[N, C*H*W]` when `input_shape=(C, H, W)` is given; either way `n_features_in_` is the
number of values per sample, and predictions accept either layout.

`ArchitectureKernel` is an architecture's NNGP or NTK as a
`sklearn.gaussian_process.kernels.Kernel`, for `GaussianProcessRegressor` and its optimizer.
"""
from .._core.extras import import_extra

import_extra("sklearn", "sklearn")   # without scikit-learn: one line saying which extra installs it
from .estimators import NNGPRegressor, NTKClassifier, NTKRegressor  # noqa: E402
from .gp import default_architecture, resolve_architecture  # noqa: E402
from .kernel import ArchitectureKernel  # noqa: E402

__all__ = ["ArchitectureKernel", "NNGPRegressor", "NTKClassifier", "NTKRegressor",
           "default_architecture", "resolve_architecture"]
