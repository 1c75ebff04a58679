"""scikit-learn estimators: the estimator contract, pipelines, grid search, and the math."""
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

import ntklab as nk
from ntklab.sklearn import NNGPRegressor, NTKClassifier, NTKRegressor, default_architecture


@pytest.mark.parametrize("estimator", [NTKRegressor(), NNGPRegressor(), NTKClassifier()],
                         ids=lambda e: type(e).__name__)
def test_check_estimator(estimator):
    check_estimator(estimator)


def test_regressor_is_kernel_ridge_regression():
    rng = np.random.default_rng(0)
    x, y, x_test = rng.normal(size=(30, 4)), rng.normal(size=30), rng.normal(size=(7, 4))
    model = NTKRegressor(diag_reg=1e-3).fit(x, y)
    theta = default_architecture().kernel(np.vstack([x, x_test]), get="ntk").numpy()
    k, k_test = theta[:30, :30], theta[30:, :30]
    expected = k_test @ np.linalg.solve(k + 1e-3 * np.mean(np.diag(k)) * np.eye(30), y)
    np.testing.assert_allclose(model.predict(x_test), expected, rtol=1e-9, atol=1e-12)
    # finite time t: the gradient-flow mean, here against an explicit matrix exponential
    from scipy.linalg import expm
    finite = NTKRegressor(diag_reg=0.0, t=5.0, learning_rate=2.0).fit(x, y)
    flow = np.linalg.solve(k, (np.eye(30) - expm(-2.0 * k * 5.0 / 30)) @ y)
    np.testing.assert_allclose(finite.predict(x_test), k_test @ flow, rtol=1e-8, atol=1e-10)


def test_classifier_in_pipeline_and_grid_search():
    digits = load_digits()
    x, y = digits.data[:400], digits.target[:400]
    x_test, y_test = digits.data[400:700], digits.target[400:700]
    pipe = make_pipeline(StandardScaler(), NTKClassifier())
    search = GridSearchCV(pipe, {"ntkclassifier__diag_reg": [1e-4, 1e-1],
                                 "ntkclassifier__architecture": [
                                     "Dense(1, W_std=1.5, b_std=0.05), Relu(), Dense(1)", None]},
                          cv=3).fit(x, y)
    assert search.score(x_test, y_test) > 0.8   # chance is 0.1; 0.89 when written
    assert set(search.best_params_) == {"ntkclassifier__diag_reg", "ntkclassifier__architecture"}


def test_bad_input():
    with pytest.raises(ValueError, match="at least 2 classes"):
        NTKClassifier().fit(np.ones((4, 2)), [1, 1, 1, 1])
    with pytest.raises(ValueError, match="architecture must be"):
        NTKRegressor(architecture=3).fit(np.ones((4, 2)), np.arange(4.0))
    with pytest.raises(ValueError, match="t must be None"):
        NTKRegressor(t=-1.0).fit(np.eye(4), np.arange(4.0))


def test_fit_is_eager_and_parameters_are_keyword_only():
    x = np.random.default_rng(1).normal(size=(12, 3))
    y = x[:, 0] ** 2
    model = NTKRegressor(diag_reg=1e-6).fit(x, y)
    assert model.dual_coef_.shape == (12, 1)
    theta = default_architecture().kernel(x, x.copy(), get="ntk").numpy()   # predict's cross kernel
    np.testing.assert_allclose(model.predict(x), theta @ model.dual_coef_[:, 0], rtol=1e-12)
    with pytest.raises(TypeError):
        NTKRegressor(None, 1e-3)
    with pytest.raises(ValueError, match="must be Gaussian"):   # the kernel is computed at fit time
        NTKRegressor(architecture="Relu(), Dense(1)").fit(x, y)


def test_nngp_regressor_returns_the_gaussian_process_posterior():
    rng = np.random.default_rng(2)
    x, y, x_test = rng.normal(size=(15, 3)), rng.normal(size=15), rng.normal(size=(6, 3))
    model = NNGPRegressor(diag_reg=1e-2).fit(x, y)
    k = default_architecture().kernel(np.vstack([x, x_test]), get="nngp").numpy()
    k_train, k_cross, k_test = k[:15, :15], k[15:, :15], k[15:, 15:]
    gram = k_train + 1e-2 * np.mean(np.diag(k_train)) * np.eye(15)
    mean = k_cross @ np.linalg.solve(gram, y)
    cov = k_test - k_cross @ np.linalg.solve(gram, k_cross.T)
    got_mean, got_cov = model.predict(x_test, return_cov=True)
    np.testing.assert_allclose(got_mean, mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got_cov, cov, rtol=1e-8, atol=1e-10)
    _, std = model.predict(x_test, return_std=True)
    np.testing.assert_allclose(std, np.sqrt(np.diag(cov)), rtol=1e-8, atol=1e-10)
    with pytest.raises(ValueError, match="at most one of return_std and return_cov"):
        model.predict(x_test, return_std=True, return_cov=True)


def conv_problem():
    rng = np.random.default_rng(3)
    x, x_test = rng.normal(size=(10, 2, 5, 4)), rng.normal(size=(4, 2, 5, 4))
    net = nk.serial(nk.Conv(8, (3, 3), padding="SAME", W_std=1.5, b_std=0.1), nk.Relu(),
                    nk.GlobalAvgPool(), nk.Dense(1, W_std=1.5, b_std=0.1))
    return net, x, rng.normal(size=(10, 2)), x_test


@pytest.mark.parametrize("layout", ["images", "flat"])
def test_conv_estimators_on_images_match_nk_predict(layout):
    """[N, C, H, W] images, or flat rows with input_shape=(C, H, W): the estimators' predictions
    are `nk.predict.gradient_descent_mse_ensemble`'s on the same images."""
    net, x, y, x_test = conv_problem()
    flat = layout == "flat"
    shape = dict(input_shape=(2, 5, 4)) if flat else {}
    x_fit = x.reshape(10, -1) if flat else x
    ensemble = nk.predict.gradient_descent_mse_ensemble(net, x, y, diag_reg=1e-3, learning_rate=2.0)
    for t in (None, 3.0):
        model = NTKRegressor(net, diag_reg=1e-3, t=t, learning_rate=2.0, **shape).fit(x_fit, y)
        assert model.n_features_in_ == 40
        expected = ensemble(t=t, x_test=x_test, get="ntk").numpy()
        for x_in in (x_test, x_test.reshape(4, -1)):          # either layout at predict time
            np.testing.assert_allclose(model.predict(x_in), expected, rtol=1e-9, atol=1e-12)
    gp = NNGPRegressor(net, diag_reg=1e-3, **shape).fit(x_fit, y[:, 0])
    mean, cov = ensemble(t=None, x_test=x_test, get="nngp", compute_cov=True)
    got_mean, got_cov = gp.predict(x_test.reshape(4, -1) if flat else x_test, return_cov=True)
    np.testing.assert_allclose(got_mean, mean[:, 0].numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got_cov, cov.numpy(), rtol=1e-8, atol=1e-10)
    labels = np.argmax(y, axis=1)
    clf = NTKClassifier(net, diag_reg=1e-3, **shape).fit(x_fit, labels)
    one_hot = nk.predict.gradient_descent_mse_ensemble(net, x, np.eye(2)[labels] - 0.1, diag_reg=1e-3)
    scores = one_hot(t=None, x_test=x_test, get="ntk").numpy()
    np.testing.assert_allclose(clf.decision_function(x_test), scores[:, 1] - scores[:, 0], rtol=1e-9, atol=1e-12)


def test_image_shapes_are_checked_naming_the_fix():
    net, x, y, x_test = conv_problem()
    with pytest.raises(ValueError, match=r"samples of shape \(2, 5, 4\).*given input_shape=\(2, 4, 5\)"):
        NTKRegressor(net, input_shape=(2, 4, 5)).fit(x, y)
    with pytest.raises(ValueError, match=r"input_shape=\(2, 5, 5\) holds 50 features.*X has 40"):
        NTKRegressor(net, input_shape=(2, 5, 5)).fit(x.reshape(10, -1), y)
    for bad in ((2, 0, 5), "2x5x4", (1, 2, 5, 4), 3.5):
        with pytest.raises(ValueError, match="input_shape must be"):
            NTKRegressor(net, input_shape=bad).fit(x.reshape(10, -1), y)
    model = NTKRegressor(net).fit(x, y)
    with pytest.raises(ValueError, match=r"samples of shape \(2, 4, 5\).*fitted on samples of shape \(2, 5, 4\)"):
        model.predict(x_test.reshape(4, 2, 4, 5))
    with pytest.raises(ValueError, match="X has 39 features"):
        model.predict(x_test.reshape(4, -1)[:, :39])
    vectors = NTKRegressor().fit(x.reshape(10, -1), y)
    with pytest.raises(ValueError, match=r"fitted on vectors of 40 features.*input_shape"):
        vectors.predict(x_test)
