"""The estimators' `solver`: 'cg', 'nystrom' and 'features' against the exact ('cholesky') fit and against
dense weighted kernel ridge regression; the combinations they cannot do are refused."""
import numpy as np
import pytest
import torch
from sklearn.utils.estimator_checks import check_estimator

import ntklab as nk
from ntklab.sklearn import NNGPRegressor, NTKRegressor

rng = np.random.default_rng(0)
X, X_TEST = rng.normal(size=(60, 3)), rng.normal(size=(9, 3))
Y = np.stack([np.sin(X[:, 0]), X[:, 1] * X[:, 2]], 1)
WEIGHTS = np.linspace(0.5, 2.0, 60)
NET = nk.mlp(2, 8, W_std=1.5, b_std=0.1)


@pytest.mark.parametrize("estimator", [NTKRegressor, NNGPRegressor])
def test_cg_and_nystrom_on_every_point_equal_the_exact_fit(estimator):
    """CG solves the same weighted ridge system to rtol; Nystrom with every sample a center is exact ridge."""
    kwargs = dict(architecture=NET, diag_reg=1e-3, normalize_y=True)
    exact = estimator(**kwargs).fit(X, Y, sample_weight=WEIGHTS).predict(X_TEST)
    cg = estimator(solver="cg", n_components=20, rtol=1e-10, random_state=0, **kwargs).fit(X, Y, WEIGHTS)
    np.testing.assert_allclose(cg.predict(X_TEST), exact, rtol=1e-6, atol=1e-8)
    assert cg.n_iter_ >= 1 and cg.relative_residual_.max() <= 1e-10
    nystrom = estimator(solver="nystrom", n_components=60, random_state=0, **kwargs).fit(X, Y, WEIGHTS)
    np.testing.assert_allclose(nystrom.predict(X_TEST), exact, rtol=1e-5, atol=1e-7)
    coarse = estimator(solver="nystrom", n_components=15, random_state=0, **kwargs).fit(X, Y, WEIGHTS)
    assert np.abs(coarse.predict(X_TEST) - exact).max() > 1e-4   # negative control: 15 centers are not exact


def test_features_solver_is_weighted_ridge_on_its_features_and_nears_the_exact_fit():
    """The 'features' fit is kernel ridge with K = Phi Phi^T (dense weighted solve as oracle, lambda relative to
    the weighted mean of |phi|^2); its error against the exact NTK fit shrinks with more features."""
    model = NTKRegressor(NET, diag_reg=1e-2, solver="features", n_components=64, random_state=0)
    model.fit(X, Y, sample_weight=WEIGHTS)
    phi, phi_test = model.features_(torch.from_numpy(X)).numpy(), model.features_(torch.from_numpy(X_TEST)).numpy()
    k = phi @ phi.T
    shift = 1e-2 * np.average(np.diag(k), weights=WEIGHTS)
    expected = phi_test @ phi.T @ np.linalg.solve(k + shift * np.diag(1 / WEIGHTS), Y)
    np.testing.assert_allclose(model.predict(X_TEST), expected, rtol=1e-7, atol=1e-9)
    exact = NTKRegressor(NET, diag_reg=1e-2).fit(X, Y, sample_weight=WEIGHTS).predict(X_TEST)

    def error(m):
        return np.mean([np.linalg.norm(NTKRegressor(NET, diag_reg=1e-2, solver="features", n_components=m,
                                                    random_state=seed).fit(X, Y, WEIGHTS).predict(X_TEST) - exact)
                        for seed in range(3)]) / np.linalg.norm(exact)

    assert error(512) < error(32) / 2   # ~1/sqrt(m): 4 expected for 16 x the features


@pytest.mark.parametrize("kwargs, call, match", [
    (dict(solver="lsqr"), "fit", "solver must be one of"),
    (dict(solver="cg", t=3.0), "fit", "t=3.0 was given; use solver='cholesky'"),
    (dict(solver="features", optimizer="lbfgs"), "fit", "optimizer='lbfgs' was given"),
    (dict(solver="nystrom", n_components=0), "fit", "n_components"),
    (dict(solver="cg", rtol=-1.0), "fit", "rtol"),
    (dict(solver="features", architecture=nk.serial(nk.Dense(8), nk.Erf(), nk.Dense(1))), "fit", "layer 1 is Erf"),
    (dict(solver="features"), "std", "return_std and return_cov need .*solver='cholesky'"),
])
def test_what_a_solver_cannot_do_is_refused(kwargs, call, match):
    model = NTKRegressor(**{"n_components": 8, **kwargs})
    with pytest.raises(ValueError, match=match):
        model.fit(X, Y)
        model.predict(X_TEST, return_std=True)


def test_a_refit_with_another_solver_forgets_the_previous_one():
    model = NTKRegressor(NET, diag_reg=1e-3, solver="features", n_components=16, random_state=0).fit(X, Y)
    approximate = model.predict(X_TEST)
    exact = model.set_params(solver="cholesky").fit(X, Y).predict(X_TEST)
    np.testing.assert_allclose(exact, NTKRegressor(NET, diag_reg=1e-3).fit(X, Y).predict(X_TEST), rtol=1e-12)
    assert not hasattr(model, "coef_") and np.abs(approximate - exact).max() > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("estimator", [NTKRegressor(solver="cg", random_state=0),
                                       NNGPRegressor(solver="features", n_components=64, random_state=0)],
                         ids=lambda estimator: estimator.solver)
def test_check_estimator_with_the_iterative_and_feature_solvers(estimator):
    check_estimator(estimator)
