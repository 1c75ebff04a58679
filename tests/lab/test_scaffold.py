"""The one experiment scaffold (issue 28): it chooses the settings (quick or full, then the user's
fields), checks them, times the run and writes config.json and summary.json; experiments are
`run(folder, cfg, *, seed, device, **options)` and do none of that themselves."""
import dataclasses
import inspect
import json
import re

import pytest
from click.testing import CliRunner

from ntklab.lab import experiments
from ntklab.lab.cli import main


@pytest.fixture()
def recorder(fake_experiment):
    """A fake experiment that records the settings it was given and writes a report."""
    seen = []

    def record(folder, cfg, *, seed, device):
        seen.append(cfg)
        folder.write_text("report.md", "# fake\n\nresult\n")
        return {"size": cfg.size}
    fake_experiment("fake", record)
    return seen


def test_settings_given_by_field_replace_the_quick_or_full_ones(recorder, tmp_path):
    """Before: no way to change a setting (experiments.run had no `config`)."""
    summary = experiments.run("fake", tmp_path / "a", quick=True,
                              config={"size": 7, "rate": 2, "widths": [4, 5], "dims": {"x": [1, 2]}})
    cfg = recorder[-1]
    assert (cfg.size, cfg.rate, cfg.widths, cfg.dims, cfg.name) == (7, 2.0, (4, 5), {"x": (1, 2)}, "quick")
    assert isinstance(cfg.rate, float) and summary["size"] == 7
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["config"] == {"size": 7, "rate": 2.0, "widths": [4, 5], "dims": {"x": [1, 2]},
                                "name": "quick", "enabled": True}
    assert config["set"] == {"size": 7, "rate": 2, "widths": [4, 5], "dims": {"x": [1, 2]}}
    assert (config["experiment"], config["seed"], config["quick"], config["device"]) == ("fake", 0, True, "cpu")
    experiments.run("fake", tmp_path / "b")
    assert recorder[-1].size == 3 and recorder[-1].name == "full"


@pytest.mark.parametrize("config, message", [
    ({"sizes": 2}, "experiment 'fake' has no setting 'sizes'; its settings are size, rate, widths, dims, "
                   "name, enabled"),
    ({"size": "2"}, "setting 'size' of experiment 'fake' must be int (e.g. --set size=3), got '2'"),
    ({"size": True}, "setting 'size' of experiment 'fake' must be int"),
    ({"size": 2.5}, "setting 'size' of experiment 'fake' must be int"),
    ({"rate": "fast"}, "setting 'rate' of experiment 'fake' must be float"),
    ({"widths": [4, "x"]}, "setting 'widths' of experiment 'fake' must be tuple[int, ...] "
                           "(e.g. --set widths=[8,16]), got [4, 'x']"),
    ({"widths": 4}, "setting 'widths' of experiment 'fake' must be tuple[int, ...]"),
    ({"widths": []}, "setting 'widths' of experiment 'fake' must be tuple[int, ...]"),
    ({"dims": {"x": 1}}, "setting 'dims' of experiment 'fake' must be dict"),
    ({"enabled": 1}, "setting 'enabled' of experiment 'fake' must be bool"),
])
def test_unknown_fields_and_wrong_types_are_refused_before_any_work(config, message, recorder, tmp_path):
    with pytest.raises(ValueError, match=re.escape(message)):
        experiments.run("fake", tmp_path / "run", config=config)
    assert recorder == [] and list(tmp_path.iterdir()) == []


def test_settings_that_are_not_a_mapping_are_refused(recorder, tmp_path):
    with pytest.raises(ValueError, match=r"config must be a mapping of settings to values, e.g. \{'seeds': 2\}"):
        experiments.run("fake", tmp_path / "run", config=[("size", 2)])
    assert recorder == [] and list(tmp_path.iterdir()) == []


def test_the_scaffold_times_the_run_once(recorder, tmp_path, fake_experiment):
    """Before: each experiment timed itself (or not), and wrote its own Time line."""
    summary = experiments.run("fake", tmp_path / "run")
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert written == summary and set(summary) == {"size", "seconds"} and 0 <= summary["seconds"] < 5
    report = (tmp_path / "run" / "report.md").read_text()
    assert report.startswith("# fake\n\nresult\n") and report.count("Time:") == 1
    assert report.rstrip().endswith(f"Time: {summary['seconds']:.0f} s.")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["provenance"]["versions"]["torch"] and "seconds" not in config

    def timed(folder, cfg, *, seed, device):
        return {"seconds": 1.0}
    fake_experiment("timed", timed)
    with pytest.raises(RuntimeError, match="returned its own 'seconds'; the scaffold times runs"):
        experiments.run("timed", tmp_path / "timed")
    assert not (tmp_path / "timed").exists()


def test_every_experiment_is_thin_and_has_settings_with_quick_ones():
    """Each registered experiment takes (folder, cfg, *, seed, device, ...) -- no `quick` of its
    own -- and its settings class builds both ways with every field annotated precisely."""
    for name, experiment in experiments.REGISTRY.items():
        parameters = inspect.signature(experiment.run).parameters
        assert list(parameters)[:2] in (["folder", "cfg"], ["folder", "config"]), name
        assert "quick" not in parameters and {"seed", "device"} <= set(parameters), name
        full, quick = experiments.settings(experiment), experiments.settings(experiment, quick=True)
        assert type(full) is type(quick) is experiment.config and full != quick, name
        for field, value in vars(full).items():   # each field accepts its own value back
            as_json = json.loads(json.dumps(value, default=dataclasses.asdict))   # a Claim as config.json has it
            again = experiments.settings(experiment, config={field: as_json})
            assert getattr(again, field) == value, (name, field)


def test_cli_set_options(recorder, tmp_path):
    result = CliRunner().invoke(main, ["run", "fake", "--out", str(tmp_path / "run"), "--set", "size=9",
                                       "--set", "widths=[2, 3]", "--set", "name=plain text"])
    assert result.exit_code == 0, result.output
    assert (recorder[-1].size, recorder[-1].widths, recorder[-1].name) == (9, (2, 3), "plain text")
    for args, message in ((["--set", "size"], "--set takes FIELD=VALUE (e.g. --set seeds=5), got 'size'"),
                          (["--set", "size=1", "--set", "size=2"], "--set size is given twice"),
                          (["--set", "colour=red"], "experiment 'fake' has no setting 'colour'"),
                          (["--set", "size=many"], "setting 'size' of experiment 'fake' must be int")):
        result = CliRunner().invoke(main, ["run", "fake", "--out", str(tmp_path / "bad"), *args])
        assert result.exit_code == 1 and message in result.output, result.output
        assert isinstance(result.exception, SystemExit)
    assert not (tmp_path / "bad").exists() and len(recorder) == 1


def test_run_files_are_strict_json_with_null_for_nan(tmp_path):
    """summary.json held bare NaN (invalid JSON); now every number that is not finite is null."""
    import json
    import math

    import numpy as np

    from ntklab.lab.report import RunFolder
    with RunFolder(tmp_path / "run") as folder:
        folder.write_json("summary.json", {"nan": math.nan, "inf": -math.inf, "array": np.array([1.0, np.nan]),
                                           "scalar": np.float64(2.5), "nested": [{"x": math.nan}], "path": tmp_path})
    text = (tmp_path / "run" / "summary.json").read_text()
    data = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in strict JSON"))
    assert data == {"nan": None, "inf": None, "array": [1.0, None], "scalar": 2.5, "nested": [{"x": None}],
                    "path": str(tmp_path)}


def test_quick_runs_use_one_torch_thread_and_restore_the_count(tmp_path, monkeypatch):
    """Quick runs run on one thread (their times hold on a busy machine); the caller's count comes back."""
    import torch

    from ntklab.lab import experiments
    seen = []
    original = experiments.REGISTRY["kernel-gd"]
    monkeypatch.setitem(experiments.REGISTRY, "kernel-gd", dataclasses.replace(
        original, run=lambda folder, cfg, **_: seen.append(torch.get_num_threads()) or {}))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        experiments.run("kernel-gd", tmp_path / "quick", quick=True)
        experiments.run("kernel-gd", tmp_path / "full")
        assert seen == [1, 2] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
