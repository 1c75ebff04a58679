"""The estimators' time `t`: real numbers >= 0 (numpy scalars included) or None; anything else
is refused by name (a string, bytes or a complex number was a TypeError from `>=`)."""
import numpy as np
import pytest
from scipy.linalg import expm

from ntklab.sklearn import NNGPRegressor, NTKRegressor, default_architecture

RNG = np.random.default_rng(0)
X, Y = RNG.normal(size=(8, 3)), RNG.normal(size=8)


@pytest.mark.parametrize("t", ["1", b"1", 1 + 0j, float("nan"), -1.0, np.array([2.0])])
@pytest.mark.parametrize("estimator", [NTKRegressor, NNGPRegressor])
def test_time_that_is_not_a_real_number_is_refused(estimator, t):
    with pytest.raises(ValueError, match="t must be None .* or a time >= 0"):
        estimator(t=t).fit(X, Y)


def test_numpy_time_is_the_flow_at_that_time():
    """t=np.float32(2): the gradient-flow mean at t = 2, against an explicit matrix exponential."""
    model = NTKRegressor(diag_reg=0.0, t=np.float32(2.0), learning_rate=3.0).fit(X, Y)
    k = default_architecture().kernel(X, get="ntk").numpy()
    expected = k @ np.linalg.solve(k, (np.eye(8) - expm(-3.0 / 8 * 2.0 * k)) @ Y)
    np.testing.assert_allclose(model.predict(X), expected, rtol=1e-8, atol=1e-10)
