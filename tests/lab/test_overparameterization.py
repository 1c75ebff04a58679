"""Lecture 20: random features against their kernel (Monte Carlo over features), double descent
and the implicit bias of GD, through the quick experiment."""
import json
import math

import pytest
import torch

import ntklab as nk
from ntklab.lab import experiments
from ntklab.lab.studies import overparameterization as O


def test_random_features_gram_matrix_tends_to_the_nngp_kernel():
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    features = O.random_relu_features(x, 200_000, W_std=math.sqrt(2), b_std=0.5, seed=1)
    kernel = nk.serial(nk.Dense(1, W_std=math.sqrt(2), b_std=0.5), nk.Relu(),
                       nk.Dense(1, b_std=0.0)).kernel(x, get="nngp")
    relative = float((features @ features.T - kernel).abs().max() / kernel.abs().max())
    assert relative < 0.02                          # Monte Carlo error ~ 1/sqrt(m)
    wrong = nk.serial(nk.Dense(1, W_std=1.0, b_std=0.5), nk.Relu(),   # another W_std
                      nk.Dense(1, b_std=0.0)).kernel(x, get="nngp")
    assert float((features @ features.T - wrong).abs().max() / wrong.abs().max()) > 0.1


def test_quick_run_shows_the_peak_the_kernel_limit_and_the_implicit_bias(tmp_path):
    experiments.run("overparameterization", tmp_path / "run", quick=True)
    fits = json.loads((tmp_path / "run" / "fits.json").read_text())
    assert fits["peak_features"] == 60 and fits["peak_median_mse"] > 10 * fits["ridgeless_kernel_mse"]
    assert fits["largest_m_median_mse"] < 1.15 * fits["ridgeless_kernel_mse"]
    assert fits["implicit_bias_slope"] < -0.3
    assert "| fails |" not in (tmp_path / "run" / "report.md").read_text()


def test_full_batch_gd_steps_on_ntklabs_loss():
    """train_full_batch's step is learning_rate x the gradient of ||f - y||^2 / (2|Y|)
    (`nk.conventions`), checked against torch.optim.SGD on that loss (before: on 1/2 sum, a
    step |Y| times larger)."""
    import copy
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.randn(6, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    model = nk.mlp(1, 16, out=2).module(3, seed=0, dtype=torch.float64)
    reference = copy.deepcopy(model)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.3)
    for _ in range(3):
        optimizer.zero_grad()
        nk.conventions.mean_squared_loss(reference(x), y).backward()
        optimizer.step()
    with pytest.raises(RuntimeError, match="did not reach"):
        O.train_full_batch(model, x, y, learning_rate=0.3, max_steps=3, tolerance=1e-30)
    for ours, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)
