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
    local = fits.pop("lin_distance_local_slopes")   # between consecutive widths (3 widths: 2 slopes)
    assert {name: len(slopes) for name, slopes in local.items()} == {"ReLU": 2, "GELU": 2}
    assert min(local["ReLU"]) <= by_activation["ReLU"][0] <= max(local["ReLU"])
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


def test_summary_standard_deviations_are_sample_ones():
    """Before: std over seeds by hand with ddof=0 beside report.mean_std (ddof=1)."""
    import numpy as np
    from ntklab.lab.studies import lazy_training as S
    values = {"train_loss_fraction": [0.1, 0.2, 0.4], "kernel_change": [1.0, 2.0, 4.0],
              "weight_change": [3.0, 1.0, 2.0], "ntk_flow_distance": [1.0, 1.0, 4.0],
              "ntk_gd_distance": [0.5, 0.25, 1.0], "lin_distance": [2.0, 3.0, 7.0]}
    runs = [{"task": "t", "width": w, **{q: v[i] * w for q, v in values.items()}}
            for w in (1, 4) for i in range(3)]
    mc = [{"task": "t", "width": w, "mc_mean_error": 1 / w} for w in (1, 4)]
    summary, fits = S.summarize(runs, mc, ["t"])
    for row in summary:
        for q, v in values.items():
            assert row[q + "_std"] == pytest.approx(np.std(np.array(v) * row["width"], ddof=1), rel=1e-12)
    assert fits["t"]["kernel_change"] == pytest.approx(1.0) and fits["t"]["mc_mean_error"] == pytest.approx(-1.0)


def test_the_report_states_this_runs_slopes_not_pasted_ones():
    """Before: the ReLU slope (about -0.7), linearization's -0.49 and GELU's -1.28, -1.22, -1.16 were
    literal text, whatever the run measured."""
    from ntklab.lab.experiments import lazy_training as E
    from ntklab.lab.studies import lazy_training as S
    cfg = E.Config.quick()
    smoothness = [{"activation": a, "width": w, "seed": 0, "steps": 10, "lin_distance": c * w ** s}
                  for a, c, s in (("ReLU", 1.0, -0.61), ("GELU", 2.0, -1.43)) for w in (64, 256, 1024)]
    fits = {a: (slope, 0.01) for a, slope in (("ReLU", -0.61), ("GELU", -1.43))}
    local = {a: S.local_slopes([r for r in smoothness if r["activation"] == a], "lin_distance") for a in fits}
    assert local["GELU"] == pytest.approx([-1.43, -1.43])
    task_fits = {"sphere": {q: -0.5 for q in (*S.QUANTITIES[1:], "mc_mean_error")}}
    info = {"sphere": {"steps": 10, "eta": 0.1, "flow_final_train_loss_fraction": 1e-3}}
    rows = [{"task": "sphere", "width": 64, "runs": 1}]
    errors = {"sphere": {q: (-0.5, 0.01) for q in (*S.QUANTITIES[1:], "mc_mean_error")}}
    report = E._report(cfg, info, rows, task_fits, smoothness, (fits, local),
                       {k: "f.png" for k in ("scaling", "smoothness", "dynamics")}, E._claims(cfg, errors, fits))
    assert "| -0.61 ± 0.01 |" in report and "GELU: -1.43, -1.43" in report and "ReLU -0.61 ± 0.01" in report
    text = report[report.index("One-hidden-layer"):]   # after the claims table (predictions such as -0.75)
    for pasted in ("-0.7", "-0.49", "-1.28", "-1.22", "-1.16"):
        assert pasted not in text, pasted
