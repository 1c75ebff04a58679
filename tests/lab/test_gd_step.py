"""GD on a real network is kernel regression with its current tangent kernel, up to O(η²)."""
import numpy as np
import pytest
import torch

import ntklab as nk
from ntklab.lab.studies.gd_step import one_step_remainder

RATES = [0.01, 0.03, 0.1, 0.3]


def data(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(24, *shape, generator=g, dtype=torch.float64)
    return x, torch.sin(x.flatten(1)[:, :2]), torch.randn(6, *shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("width", [64, 512])
def test_the_remainder_of_one_step_is_second_order_in_the_learning_rate(width):
    x, y, x_test = data((5,))
    model = nk.mlp(2, width, W_std=1.4, b_std=0.1, out=2, activation=nk.Tanh()).module(
        in_shape=(5,), seed=0, dtype=torch.float64)
    result = one_step_remainder(model, x, y, x_test, RATES)
    assert abs(result["slope"] - 2) < 0.1, result
    assert max(result["relative_remainder"]) < 0.05         # the kernel step is most of the change
    # along training: after 30 GD steps (the model trained in place), still O(η²)
    history = nk.train(model, x, y, steps=30, learning_rate=0.5, record=[0, 30], track_kernel=False)
    assert history.rows[-1]["train_loss"] < history.rows[0]["train_loss"]
    assert abs(one_step_remainder(model, x, y, x_test, RATES)["slope"] - 2) < 0.1


def test_a_convolutional_network_and_the_input_checks():
    x, _, _ = data((1, 6, 6))
    cnn = nk.serial(nk.Conv(8, (3, 3), padding="SAME", W_std=1.4), nk.Tanh(), nk.GlobalAvgPool(),
                    nk.Dense(1)).module(in_shape=(1, 6, 6), seed=0, dtype=torch.float64)
    y = torch.randn(24, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    result = one_step_remainder(cnn, x, y, x[:4], RATES)
    assert abs(result["slope"] - 2) < 0.1 and np.all(np.diff(result["remainder"]) > 0)
    with pytest.raises(ValueError, match="learning_rates"):
        one_step_remainder(cnn, x, y, x[:4], [0.1])
    with pytest.raises(ValueError, match="y_train has shape"):
        one_step_remainder(cnn, x, y[:, 0], x[:4], RATES)
