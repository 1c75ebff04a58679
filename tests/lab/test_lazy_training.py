"""`ntklab run lazy-training --quick`: the run folder and the scaling laws it measures."""
import csv
import json

import pytest

from ntklab.lab import experiments


@pytest.mark.slow
def test_quick_run_shows_lazy_training(tmp_path):
    out = tmp_path / "lazy"
    experiments.run("lazy-training", out, quick=True)
    for name in ("report.md", "config.json", "metrics.csv", "summary.csv", "monte_carlo_ntk.csv",
                 "fits.json", "figures/scaling.png", "figures/dynamics.png"):
        assert (out / name).is_file(), name
    fits = json.loads((out / "fits.json").read_text())
    by_activation = fits.pop("lin_distance_by_activation")
    # f - f_lin: between n^-3/4 and n^-1/2 for ReLU (the kink), steeper for the smooth GELU
    assert -0.95 < by_activation["ReLU"][0] < -0.55
    assert by_activation["GELU"][0] < by_activation["ReLU"][0] - 0.2
    for task, slope in fits.items():
        # theory: weight change, MC error and distance to the NTK prediction ~ n^-1/2;
        # kernel change between n^-1/2 and n^-1 (three widths, one seed: loose bands)
        assert -0.8 < slope["weight_change"] < -0.3, task
        assert -0.8 < slope["mc_mean_error"] < -0.25, task
        assert -0.8 < slope["ntk_gd_distance"] < -0.2, task
        assert -1.3 < slope["kernel_change"] < -0.4, task
    summary = list(csv.DictReader((out / "summary.csv").open()))
    assert all(float(row["train_loss_fraction"]) < 0.05 for row in summary)
