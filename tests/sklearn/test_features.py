"""The estimators as complete as scikit-learn's (issue 31): predictive covariances of the NTK
ensemble, normalize_y, calibrated probabilities, sample weights, small pickles, hyperparameters
fitted by the marginal likelihood, an architecture as a GaussianProcessRegressor kernel, and
read-only inputs.  Each is checked against something independent: nk.predict's ensemble,
GaussianProcessRegressor on the same kernel matrix, numpy/scipy closed forms, repeated samples,
finite differences."""
import pickle
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal
from sklearn.datasets import load_diabetes, load_digits
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import Kernel, WhiteKernel

import ntklab as nk
from ntklab.sklearn import (ArchitectureKernel, NNGPRegressor, NTKClassifier, NTKRegressor,
                            default_architecture)

RNG = np.random.default_rng(31)
X, X_TEST = RNG.normal(size=(25, 3)), RNG.normal(size=(6, 3))
Y = np.sin(X[:, 0]) + 0.1 * RNG.normal(size=25)


def kernel_matrices(x, x_test, get):
    k = default_architecture().kernel(np.vstack([x, x_test]), get=get).numpy()
    n = len(x)
    return k[:n, :n], k[n:, :n], k[n:, n:]


# 1. predictive covariances ---------------------------------------------------------------------
@pytest.mark.parametrize("t", [None, 2.0])
def test_ntk_regressor_returns_the_ensemble_covariance_at_time_t(t):
    model = NTKRegressor(diag_reg=1e-3, t=t, learning_rate=3.0).fit(X, Y)
    ensemble = nk.predict.gradient_descent_mse_ensemble(default_architecture(), X, Y, diag_reg=1e-3,
                                                        learning_rate=3.0)
    mean, cov = ensemble(t=t, x_test=X_TEST, get="ntk", compute_cov=True)
    got_mean, got_cov = model.predict(X_TEST, return_cov=True)
    np.testing.assert_allclose(got_mean, mean.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got_cov, cov.numpy(), rtol=1e-7, atol=1e-10)
    _, std = model.predict(X_TEST, return_std=True)
    np.testing.assert_allclose(std, np.sqrt(np.diag(cov.numpy())), rtol=1e-7, atol=1e-10)
    nngp = NNGPRegressor(diag_reg=1e-3, t=t, learning_rate=3.0).fit(X, Y)     # the NNGP too
    mean, cov = ensemble(t=t, x_test=X_TEST, get="nngp", compute_cov=True)
    np.testing.assert_allclose(nngp.predict(X_TEST, return_cov=True)[1], cov.numpy(), rtol=1e-7, atol=1e-10)


class Precomputed(Kernel):
    """A fixed kernel matrix, indexed by sample numbers in X[:, 0] (for GaussianProcessRegressor)."""

    def __init__(self, matrix):
        self.matrix = matrix

    def __call__(self, X, Y=None, eval_gradient=False):
        rows = X[:, 0].astype(int)
        return self.matrix[np.ix_(rows, rows if Y is None else Y[:, 0].astype(int))]

    def diag(self, X):
        return np.diag(self(X))

    def is_stationary(self):
        return False


@pytest.mark.parametrize("normalize_y", [False, True])
def test_nngp_regressor_is_gaussian_process_regressor_on_the_same_kernel(normalize_y):
    """Mean, std and covariance equal GaussianProcessRegressor's with the NNGP matrix as a fixed
    kernel and alpha = diag_reg mean(diag K), for 1-D and 2-D targets, normalize_y on and off."""
    targets = np.stack([10 * Y + 50, -3 * Y], axis=1)                       # raw, off-centre
    k = default_architecture().kernel(np.vstack([X, X_TEST]), get="nngp").numpy()
    index, index_test = np.arange(25.0)[:, None], np.arange(25.0, 31.0)[:, None]
    for y in (targets[:, 0], targets):
        gpr = GaussianProcessRegressor(Precomputed(k), alpha=1e-2 * np.mean(np.diag(k)[:25]),
                                       optimizer=None, normalize_y=normalize_y).fit(index, y)
        model = NNGPRegressor(diag_reg=1e-2, normalize_y=normalize_y).fit(X, y)
        for option in ("return_std", "return_cov"):
            want = gpr.predict(index_test, **{option: True})
            got = model.predict(X_TEST, **{option: True})
            for g, w in zip(got, want, strict=True):
                assert g.shape == w.shape
                np.testing.assert_allclose(g, w, rtol=1e-7, atol=1e-9 * np.abs(w).max())
        assert np.isclose(model.log_marginal_likelihood_value_, gpr.log_marginal_likelihood_value_,
                          rtol=1e-9)


# 2. normalize_y on raw targets -------------------------------------------------------------------
def diabetes():
    x, y = load_diabetes(return_X_y=True)
    return x[:300], y[:300], x[300:], y[300:]


def test_normalize_y_and_fitted_hyperparameters_cover_raw_diabetes_targets():
    """Raw diabetes targets (mean 152, std 77): with the defaults the +-2 std band holds 0 % of
    the test targets, with normalize_y alone 2 % (the default diag_reg = 1e-4 interpolates and the
    prior's scale is W_std's); with normalize_y and the marginal-likelihood fit 97 % of them fall
    in mean +- 2 sqrt(std^2 + noise_variance_), and the test R^2 rises from 0.21 to 0.51."""
    x, y, x_test, y_test = diabetes()

    def coverage(model, noise):
        mean, std = model.predict(x_test, return_std=True)
        return np.mean(np.abs(mean - y_test) <= 2 * np.sqrt(std ** 2 + noise))

    assert coverage(NNGPRegressor().fit(x, y), 0.0) < 0.01
    assert coverage(NNGPRegressor(normalize_y=True).fit(x, y), 0.0) < 0.05
    default = NNGPRegressor().fit(x, y)
    fitted = NNGPRegressor(normalize_y=True, optimizer="lbfgs").fit(x, y)
    assert 0.9 <= coverage(fitted, fitted.noise_variance_) <= 1.0          # 0.972 when written
    assert fitted.diag_reg_ > 0.1                                            # 0.83, not 1e-4
    assert fitted.score(x_test, y_test) > default.score(x_test, y_test) + 0.2   # 0.512 vs 0.214
    np.testing.assert_allclose(fitted.y_train_mean_, [y.mean()])
    np.testing.assert_allclose(fitted.y_train_std_, [y.std()])


# 3. calibrated probabilities ----------------------------------------------------------------------
def test_classifier_probabilities_are_calibrated_on_held_out_digits():
    digits = load_digits()
    x = (digits.data - digits.data.mean(0)) / (digits.data.std(0) + 1e-9)
    x_train, y_train, x_test, y_test = x[:300], digits.target[:300], x[300:700], digits.target[300:700]
    clf = NTKClassifier(diag_reg=1e-2).fit(x_train, y_train)
    proba = clf.predict_proba(x_test)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(clf.classes_[proba.argmax(axis=1)], clf.predict(x_test))
    one_hot = np.eye(10)[y_test]
    brier = np.mean(np.sum((proba - one_hot) ** 2, axis=1))
    constant = np.mean(np.sum((np.bincount(y_train, minlength=10) / 300 - one_hot) ** 2, axis=1))
    assert brier < 0.5 * constant            # 0.19 vs 0.90 when written
    # calibration: the mean confidence is the held-out accuracy (expected calibration error)
    confidence, correct = proba.max(axis=1), clf.predict(x_test) == y_test
    bins = np.minimum((confidence * 10).astype(int), 9)
    ece = sum(abs(confidence[bins == b].mean() - correct[bins == b].mean()) * np.mean(bins == b)
              for b in np.unique(bins))
    assert ece < 0.06, ece                   # 0.026 when written (accuracy 0.86, temperature 0.088)
    uncalibrated = np.exp(clf.decision_function(x_test))
    uncalibrated /= uncalibrated.sum(axis=1, keepdims=True)
    assert abs(uncalibrated.max(axis=1).mean() - correct.mean()) > 0.5   # why calibration is needed


# 4. sample weights ---------------------------------------------------------------------------------
@pytest.mark.parametrize("estimator", [NTKRegressor, NNGPRegressor])
@pytest.mark.parametrize("t", [None, 2.0])
def test_integer_weights_are_repeated_samples(estimator, t):
    weights = np.random.default_rng(4).integers(0, 4, size=25)
    weights[0] = 3
    model = estimator(diag_reg=1e-2, t=t, normalize_y=True).fit(X, 5 * Y + 1, sample_weight=weights)
    repeated = estimator(diag_reg=1e-2, t=t, normalize_y=True).fit(
        np.repeat(X, weights, axis=0), np.repeat(5 * Y + 1, weights))
    pairs = zip(model.predict(X_TEST, return_cov=True), repeated.predict(X_TEST, return_cov=True), strict=True)
    for got, want in pairs:
        np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9)
    assert len(model.X_fit_) == np.count_nonzero(weights)


def test_weighted_ridge_is_per_sample_noise():
    """t=None: f = K(x, X) (K + diag_reg s W^-1)^-1 y, s the weighted mean of diag K (numpy)."""
    weights = np.random.default_rng(5).uniform(0.2, 3.0, size=25)
    k, k_cross, _ = kernel_matrices(X, X_TEST, "ntk")
    s = np.sum(weights * np.diag(k)) / weights.sum()
    want = k_cross @ np.linalg.solve(k + 0.1 * s * np.diag(1 / weights), Y)
    got = NTKRegressor(diag_reg=0.1).fit(X, Y, sample_weight=weights).predict(X_TEST)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("bad, match", [(-np.ones(25), "finite and >= 0"), (np.ones(24), r"shape \(25,\)"),
                                        (np.zeros(25), "zero for every sample"), ("heavy", "sample_weight")])
def test_bad_sample_weights_are_refused_by_name(bad, match):
    with pytest.raises(ValueError, match=match):
        NTKRegressor().fit(X, Y, sample_weight=bad)


# 5. fitted attributes and pickles -------------------------------------------------------------------
def test_pickles_hold_no_kernel_matrix_and_predict_the_same():
    x = np.random.default_rng(5).normal(size=(1000, 5))
    model = NNGPRegressor(diag_reg=1e-3).fit(x, np.sin(x[:, 0]))
    data = pickle.dumps(model)
    assert len(data) < 200_000                     # 0.1 MB (X_fit_ is 40 kB); 16 MB before
    for name in ("X_fit_", "dual_coef_", "sample_weight_", "y_train_mean_", "y_train_std_"):
        assert isinstance(getattr(model, name), np.ndarray), name
    copy = pickle.loads(data)
    x_test = x[:7] + 0.1
    for got, want in zip(copy.predict(x_test, return_std=True), model.predict(x_test, return_std=True), strict=True):
        np.testing.assert_array_equal(got, want)


# 6. hyperparameters by the marginal likelihood --------------------------------------------------------
def test_log_marginal_likelihood_is_the_gaussian_density_of_the_targets():
    weights = np.random.default_rng(6).uniform(0.5, 2.0, size=25)
    for estimator, get in ((NNGPRegressor, "nngp"), (NTKRegressor, "ntk")):
        model = estimator(diag_reg=0.05).fit(X, Y, sample_weight=weights)
        k = kernel_matrices(X, X_TEST, get)[0]
        s = np.sum(weights * np.diag(k)) / weights.sum()
        want = multivariate_normal(np.zeros(25), k + 0.05 * s * np.diag(1 / weights)).logpdf(Y)
        assert np.isclose(model.log_marginal_likelihood_value_, want, rtol=1e-10)


@pytest.mark.parametrize("estimator, get", [(NTKRegressor, "ntk"), (NNGPRegressor, "nngp")])
def test_fitted_hyperparameters_maximize_the_marginal_likelihood(estimator, get):
    """optimizer="lbfgs": the fitted (W_std, b_std, diag_reg) is a local maximum of the marginal
    likelihood (scipy's density, 10 % steps along each coordinate), and the noise variance is
    found (1 here: 0.78 (NTK), 1.25 (NNGP) when written; diag_reg 0.27 and 11.8, not 1e-4)."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(40, 2))
    y = np.sin(2 * x[:, 0]) + rng.normal(size=40)
    model = estimator(optimizer="lbfgs").fit(x, y)
    fitted = {"W_std": model.architecture_.layers[0].W_std, "b_std": model.architecture_.layers[0].b_std,
              "diag_reg": model.diag_reg_}
    assert 0.5 < model.noise_variance_[0] < 2.0 and model.diag_reg_ > 0.1

    def lml(W_std, b_std, diag_reg):
        k = nk.mlp(2, 512, W_std=W_std, b_std=b_std).kernel(x, get=get).numpy()
        return multivariate_normal(np.zeros(40), k + diag_reg * np.mean(np.diag(k)) * np.eye(40)).logpdf(y)

    best = lml(**fitted)
    assert np.isclose(model.log_marginal_likelihood_value_, best, rtol=1e-10)
    for name, value in fitted.items():
        for factor in (0.9, 1.1):
            assert lml(**{**fitted, name: value * factor}) < best, (name, factor)


def test_hyperparameter_fit_refuses_what_it_cannot_do():
    net = nk.serial(nk.Conv(4, (3, 3), padding="SAME"), nk.Relu(), nk.GlobalAvgPool(), nk.Dense(1))
    with pytest.raises(ValueError, match=r"ties those of the Dense layers.*Conv"):
        NNGPRegressor(net, optimizer="lbfgs").fit(np.ones((5, 1, 4, 4)), np.arange(5.0))
    with pytest.raises(ValueError, match="optimizer must be None"):
        NNGPRegressor(optimizer="adam").fit(X, Y)
    with pytest.raises(ValueError, match="pass t=None"):
        NTKRegressor(optimizer="lbfgs", t=1.0).fit(X, Y)
    with pytest.raises(ValueError, match="n_restarts_optimizer must be"):
        NTKRegressor(optimizer="lbfgs", n_restarts_optimizer=-1).fit(X, Y)
    with pytest.raises(ValueError, match="cv must be"):
        NTKClassifier(cv=1).fit(X, X[:, 0] > 0)


# 7. an architecture as a scikit-learn kernel --------------------------------------------------------
def test_architecture_kernel_in_gaussian_process_regressor_is_nngp_regressor():
    k = default_architecture().kernel(X, get="nngp").numpy()
    gpr = GaussianProcessRegressor(ArchitectureKernel(), alpha=1e-2 * np.mean(np.diag(k)),
                                   optimizer=None).fit(X, Y)
    model = NNGPRegressor(diag_reg=1e-2).fit(X, Y)
    for got, want in zip(gpr.predict(X_TEST, return_std=True), model.predict(X_TEST, return_std=True), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("get", ["nngp", "ntk"])
def test_architecture_kernel_gradient_matches_finite_differences(get):
    kernel = ArchitectureKernel(get=get, W_std=1.3, b_std=0.2)
    value, gradient = kernel(X[:10], eval_gradient=True)
    np.testing.assert_allclose(value, kernel(X[:10]), rtol=1e-12)
    eps = 1e-5
    for i in range(2):
        step = np.eye(2)[i] * eps
        plus, minus = (kernel.clone_with_theta(kernel.theta + s)(X[:10]) for s in (step, -step))
        np.testing.assert_allclose(gradient[..., i], (plus - minus) / (2 * eps), rtol=1e-6, atol=1e-8)
    fixed = ArchitectureKernel(get=get, b_std_bounds="fixed")
    assert fixed(X[:10], eval_gradient=True)[1].shape == (10, 10, 1)
    np.testing.assert_allclose(kernel.diag(X[:10]), np.diag(value), rtol=1e-12)


def test_gaussian_process_regressor_tunes_the_architecture_kernel_as_nngp_regressor_does():
    """GaussianProcessRegressor(ArchitectureKernel() + WhiteKernel()) and
    NNGPRegressor(optimizer="lbfgs") maximize the same likelihood (absolute vs relative noise):
    the same optimum."""
    gpr = GaussianProcessRegressor(ArchitectureKernel() + WhiteKernel(1e-2), optimizer="fmin_l_bfgs_b").fit(X, Y)
    model = NNGPRegressor(optimizer="lbfgs", diag_reg=1e-2).fit(X, Y)
    start = GaussianProcessRegressor(ArchitectureKernel() + WhiteKernel(1e-2), optimizer=None).fit(X, Y)
    assert gpr.log_marginal_likelihood_value_ > start.log_marginal_likelihood_value_ + 1.0
    assert np.isclose(gpr.log_marginal_likelihood_value_, model.log_marginal_likelihood_value_,
                      rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gpr.predict(X_TEST), model.predict(X_TEST), rtol=1e-3, atol=1e-3)


# 8. read-only inputs ----------------------------------------------------------------------------
@pytest.mark.parametrize("estimator", [NTKRegressor, NNGPRegressor, NTKClassifier])
def test_read_only_arrays_fit_and_predict_without_warnings(estimator):
    x, y = X.copy(), (Y > 0).astype(int)
    x.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = estimator().fit(x, y)
        model.predict(x)
    assert model.X_fit_.flags.writeable and not np.shares_memory(model.X_fit_, x)
    assert isinstance(torch.from_numpy(model.X_fit_), torch.Tensor)
