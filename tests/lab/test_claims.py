"""Verdicts that can fail (issue 30): the one rule from (prediction, tolerance, measurement, s.e.),
claims declared in the experiments' settings and changed by --set, and the helpers that turn a
run's numbers into a measurement with a standard error."""
import dataclasses
import json
import math
import typing

import numpy as np
import pytest
from click.testing import CliRunner

from ntklab.lab import experiments
from ntklab.lab.claims import Claim, accuracy_difference, mean_se, other_data, scale_factor, verdict
from ntklab.lab.cli import main


@pytest.mark.parametrize("measured, se, expected", [
    (2.0, 0.0, "holds"), (2.5, 0.25, "holds"), (1.5, 0.2, "holds"),      # inside, resolved (2 se <= t)
    (2.1, 0.3, "inconclusive"),                                          # inside, but 2 se = 0.6 > t = 0.5
    (2.7, 0.15, "inconclusive"),                                         # outside t, not by 2 se (0.7 <= 0.8)
    (2.81, 0.15, "fails"), (1.0, 0.2, "fails"), (3.1, 0.0, "fails"),     # beyond t + 2 se
    (3.1, 1.18, "inconclusive"),                                         # the quick dimension sweep's exponent
    (float("nan"), 0.1, "inconclusive"), (2.0, float("nan"), "inconclusive"), (2.0, float("inf"), "inconclusive"),
])
def test_the_rule_with_hand_made_numbers(measured, se, expected):
    """Prediction 2, tolerance 0.5: holds iff |m - 2| <= 0.5 and 2 se <= 0.5; fails iff |m - 2| > 0.5 + 2 se."""
    assert verdict(2.0, 0.5, measured, se) == expected
    row = Claim("exponent", 2.0, 0.5, "a paper").check(measured, se)
    assert row["verdict"] == expected and row["why"]
    assert row["numbers"]["measured"] == measured or math.isnan(measured)


def test_an_exponent_above_the_bound_no_longer_passes_as_an_upper_bound():
    """Before: dimension-sweep's `_verdict` called any exponent <= 2 + 2 s.e. "consistent (an upper
    bound)" and any kernel exponent below p "pre-asymptotic": neither could fail."""
    from ntklab.lab.experiments import dimension_sweep
    assert not hasattr(dimension_sweep, "_verdict")
    claim = dimension_sweep.Config().alg1_exponent
    assert claim.check(3.1, 0.2)["verdict"] == "fails" and claim.check(0.5, 0.1)["verdict"] == "fails"
    assert claim.check(2.2, 0.1)["verdict"] == "holds"


def test_untestable_claims_are_inconclusive_whatever_the_numbers():
    row = Claim("margin", 10.0, 5.0, "CIFAR-10").check(-50.0, 1.0, untestable=other_data("cifar10", "digits"))
    assert row["verdict"] == "inconclusive" and "--set prediction_data=digits" in row["why"]
    assert other_data("cifar10", "cifar10") == ""


@pytest.mark.parametrize("fields, message", [
    (("x", 1.0, 0.0, "s"), "tolerance must be > 0"), (("x", 1.0, -1.0, "s"), "tolerance must be > 0"),
    (("x", float("nan"), 0.1, "s"), "prediction must be a finite number"),
    (("x", "2", 0.1, "s"), "prediction must be a finite number"), (("x", True, 0.1, "s"), "prediction must be"),
    (("x", 1.0, float("inf"), "s"), "tolerance must be a finite number"), ((3, 1.0, 0.1, "s"), "are text"),
])
def test_a_claim_without_a_finite_prediction_and_a_positive_tolerance_is_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        Claim(*fields)


def test_every_experiment_declares_its_claims_in_its_settings():
    """Before: predictions and windows were literals in the report code (e.g. -1.1 <= slope <= -0.4)."""
    for name, experiment in experiments.REGISTRY.items():
        hints = typing.get_type_hints(experiment.config)
        claims = [f.name for f in dataclasses.fields(experiment.config) if hints[f.name] is Claim]
        assert claims, name
        for field in claims:
            claim = getattr(experiment.config(), field)
            assert claim.source and claim.statement and claim.tolerance > 0, (name, field)
            assert getattr(experiment.config.quick(), field) == claim, (name, field)   # the same claim when quick


def test_set_changes_a_claim_field_by_field_and_config_json_records_it(tmp_path, monkeypatch):
    """--set FIELD='{"prediction": ...}' replaces only the fields given; a wrong key or value is
    refused before any work, naming the claim."""
    seen = []

    def fake(folder, cfg, *, seed, device):
        seen.append(cfg)
        folder.claims.append(cfg.alg1_exponent.check(2.9, 0.1))
        return {}
    experiment = experiments.get("dimension-sweep")
    monkeypatch.setitem(experiments.REGISTRY, "dimension-sweep", dataclasses.replace(experiment, run=fake))
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", "dimension-sweep", "--quick", "--out", str(out),
                                       "--set", 'alg1_exponent={"prediction": 3, "tolerance": 0.25}'])
    assert result.exit_code == 0, result.output
    claim = seen[-1].alg1_exponent
    assert (claim.prediction, claim.tolerance) == (3.0, 0.25) and claim.source.startswith("Damian")
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["alg1_exponent"]["prediction"] == 3.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["claims"] == [{"claim": claim.statement, "source": claim.source, "verdict": "holds",
                                  "why": summary["claims"][0]["why"], "prediction": 3.0, "tolerance": 0.25,
                                  "measured": 2.9, "se": 0.1}]
    for bad, message in ((['alg1_exponent={"guess": 3}'], "claim 'alg1_exponent' of experiment 'dimension-sweep': "
                                                          "a claim is changed by a mapping with some of the keys"),
                         (['alg1_exponent=3'], "a claim is changed by a mapping"),
                         (['alg1_exponent={"tolerance": 0}'], "tolerance must be > 0")):
        result = CliRunner().invoke(main, ["run", "dimension-sweep", "--quick", "--out", str(tmp_path / "bad"),
                                           "--set", *bad])
        assert result.exit_code != 0 and message in result.output, result.output
    assert len(seen) == 1


def test_scale_factor_is_the_weighted_least_squares_factor():
    rng = np.random.default_rng(0)
    predicted, se = rng.normal(size=20), rng.uniform(0.1, 1.0, 20)
    measured = 1.3 * predicted + se * rng.normal(size=20)
    a, a_se = scale_factor(measured, se, predicted)
    solution, *_ = np.linalg.lstsq((predicted / se)[:, None], measured / se, rcond=None)   # independent: lstsq
    assert a == pytest.approx(solution[0], rel=1e-12)
    assert a_se == pytest.approx(math.sqrt(np.linalg.inv(((predicted / se) ** 2).sum()[None, None])[0, 0]))
    assert all(math.isnan(v) for v in scale_factor([1.0], [0.0], [1.0]))   # no s.e.: no factor


def test_accuracy_difference_uses_the_binomial_error_at_the_observed_accuracies():
    """Before: resnet-kernels quoted sqrt(0.25 / n) (the error at 50 %) whatever the accuracy."""
    points, se = accuracy_difference(0.97, 0.95, 400)
    assert points == pytest.approx(2.0)
    assert se == pytest.approx(100 * math.sqrt(0.97 * 0.03 / 400 + 0.95 * 0.05 / 400))
    assert se < 100 * math.sqrt(0.25 / 400)


def test_mean_se_is_the_standard_error_of_the_mean():
    assert mean_se([1.0, 2.0, 4.0]) == pytest.approx((7 / 3, np.std([1, 2, 4], ddof=1) / math.sqrt(3)))
    assert math.isnan(mean_se([1.0])[1])


def test_a_diverged_measurement_fails_and_a_negative_standard_error_is_refused():
    from ntklab.lab.claims import verdict
    assert verdict(2.0, 0.5, float("inf"), 0.1) == "fails"
    assert verdict(2.0, 0.5, float("nan"), 0.1) == "inconclusive"
    with pytest.raises(ValueError, match="standard error must be >= 0"):
        verdict(2.0, 0.5, 2.4, -0.3)


def test_strict_json_converts_torch_values():
    import math

    import torch

    from ntklab.lab.report import strict_json
    assert strict_json({"a": torch.tensor(math.nan), "b": torch.tensor([1.0, 2.0])}) == {"a": None, "b": [1.0, 2.0]}
