"""What typing the predictions showed: numbers that are real but not floats (a Fraction, an int
beyond float's range) as learning rates, and `gp_inference`'s predict without a test kernel (the training set);
against the closed form of gradient flow (scipy's matrix exponential)."""
from fractions import Fraction

import numpy as np
import pytest
import torch
from scipy.linalg import expm

import ntklab as nk

G = torch.Generator().manual_seed(1)
A = torch.randn(5, 5, generator=G, dtype=torch.float64)
K = A @ A.T / 5 + 0.1 * torch.eye(5, dtype=torch.float64)
Y = torch.randn(5, 2, generator=G, dtype=torch.float64)


def test_fraction_learning_rate_is_its_value():
    """A Fraction is a real number: learning_rate=1/2 follows f(t) = y - e^{-(lr/|Y|) K t} y
    (was a TypeError from numpy's isfinite)."""
    f_train = nk.predict.gradient_descent_mse(K, Y, learning_rate=Fraction(1, 2))(3.0)
    expected = Y.numpy() - expm(-0.5 / Y.numel() * 3.0 * K.numpy()) @ Y.numpy()
    np.testing.assert_allclose(f_train.numpy(), expected, rtol=1e-10, atol=1e-12)


def test_integer_beyond_float_range_is_refused_by_name():
    with pytest.raises(ValueError, match="learning_rate must be a finite real number"):
        nk.predict.gradient_descent_mse(K, Y, learning_rate=10 ** 400)


def test_gp_inference_without_test_kernel_predicts_the_training_set():
    """predict(None) said "fx_test_0 is given", an argument gp_inference does not have; now it is
    neural-tangents' train-set prediction: y_train (unregularized), with covariance 0 on request."""
    predict = nk.predict.gp_inference(K, Y, diag_reg=1e-3)
    torch.testing.assert_close(predict(None), Y, rtol=0, atol=0)
    mean, cov = predict(None, True)
    torch.testing.assert_close(mean, Y, rtol=0, atol=0)
    torch.testing.assert_close(cov, torch.zeros(5, 5, dtype=torch.float64), rtol=0, atol=0)
