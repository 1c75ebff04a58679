"""`ntklab run linearization --quick`: a network approaches its linearization as n^-1/2,
and the linearization follows the empirical-NTK function-space prediction at every width."""
import csv

import pytest

from ntklab.lab import experiments


@pytest.mark.slow
def test_quick_linearization_run_measures_the_width_scaling(tmp_path):
    summary = experiments.run("linearization", tmp_path / "run", quick=True)
    assert set(summary["slopes"]) == {"mlp mse", "mlp cross-entropy", "cnn mse", "cnn cross-entropy"}
    for case in ("mlp mse", "mlp cross-entropy"):   # theory -1/2
        assert -0.8 < summary["slopes"][case]["network_vs_linearized"] < -0.35, case
    for case in ("cnn mse", "cnn cross-entropy"):   # 8 and 32 channels only: pre-asymptotic, but falling
        assert summary["slopes"][case]["network_vs_linearized"] < -0.15, case
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    last = [r for r in rows if int(r["step"]) == 60 and r["network"] == "mlp"]
    for row in last:   # discrete GD vs the kernel's gradient flow: a small, width-independent gap
        assert float(row["linearized_vs_kernel"]) < 0.03
        assert float(row["linearized_vs_kernel"]) < float(row["network_vs_linearized"])
    assert (tmp_path / "run" / "figures" / "distances_cnn_cross-entropy.png").is_file()
