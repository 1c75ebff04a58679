"""Kernel regression and the predictions of gradient-descent training (`ntklab.predict`).

* `solve` / `kernel_regression`: interpolation alpha = K^-1 y and ridge
  alpha = (K + lambda I)^-1 y (lecture 21), by Cholesky (LU for indefinite kernels).
* `gradient_descent_alpha`: GD on the coefficients of f = K alpha (lecture 21), or
  the same loss descended in function space (the RKHS gradient), recording alpha_t
  and f_t.
* `gradient_descent_mse`, `gradient_descent` (any loss, by an ODE solver), `gp_inference`,
  `max_learning_rate`: neural-tangents' predictions on given (finite) kernels.  Each
  checks its train-train kernel once (`linalg.checked_kernel`): symmetric and positive
  semi-definite up to rounding, or refused with the asymmetry or the most negative
  eigenvalue and the fix; `allow_indefinite=True` follows an indefinite kernel exactly.
* `conjugate_gradients` (with `NystromPreconditioner`) and `nystrom_regression`: kernel
  regression without the n x n matrix in memory, from a kernel store (`nk.kernels.StoredKernel`)
  or on m centers (`iterative`; the preconditioners in `nystrom`); `feature_regression`: ridge on a
  feature map such as the random features of the NNGP/NTK (`nk.kernels.RandomFeatures`), linear in n;
  `lanczos.lanczos_apply`: f(K) b from products with K (the ensemble's `solver="lanczos"`).
* `gradient_descent_mse_ensemble`: mean and covariance of an infinite ensemble
  of infinitely wide networks trained by gradient flow on the MSE for time t
  (Lee et al. 2019, "Wide neural networks of any depth evolve as linear models under
  gradient descent", NeurIPS, eqs. 9-16), f_0 ~ GP(0, K_nngp),
  `diag_reg` relative to the mean diagonal of the train-train kernel, t=None
  for t = infinity.  One eigendecomposition per kernel serves all times (`solver="eigh"`), or the
  Lanczos process on a kernel store gives the means without the n x n matrix (`solver="lanczos"`).
* `Gaussian(mean, covariance)` and `PerGet` (a named tuple over the names of `get`,
  `.nngp`/`.ntk`): the results, as neural-tangents returns them.

The learning-rate convention of ntklab (`ntklab.conventions`: `train`, these predictions,
`linearize`, the theory flows), neural-tangents': `learning_rate` is the step of gradient descent on

    L = ||f(X) - Y||^2 / (2 |Y|),      |Y| = y_train.size (samples x outputs),

so gradient flow in function space reads df/dt = -(learning_rate / |Y|) Theta (f - Y),
and the lecture's g(alpha) = ||K alpha - y||^2 with step eta is learning_rate = 2 |Y| eta.
"""
from .alpha import GradientDescentPath, gradient_descent_alpha
from .ensemble import gradient_descent_mse_ensemble
from .iterative import (CGResult, FeatureRegression, NystromPreconditioner, NystromRegression, conjugate_gradients,
                        feature_regression, nystrom_regression)
from .finite import gp_inference, gradient_descent, gradient_descent_mse, max_learning_rate
from .linalg import Factorization, GradientFlow, add_diagonal_regularizer, kernel_regression, solve
from .results import Gaussian, PerGet

__all__ = ["CGResult", "FeatureRegression", "NystromPreconditioner", "NystromRegression", "conjugate_gradients",
           "feature_regression", "nystrom_regression",
           "Factorization", "Gaussian", "GradientDescentPath", "GradientFlow", "PerGet", "add_diagonal_regularizer",
           "gp_inference", "gradient_descent", "gradient_descent_alpha", "gradient_descent_mse",
           "gradient_descent_mse_ensemble", "kernel_regression", "max_learning_rate", "solve"]
