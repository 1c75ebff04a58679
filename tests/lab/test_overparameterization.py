"""Lecture 20: random features against their kernel (Monte Carlo over features), double descent
and the implicit bias of GD, through the quick experiment."""
import json
import math

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
