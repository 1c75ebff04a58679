"""The command line and the kernel-gd experiment (quick settings)."""
import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

import ntklab as nk
from ntklab import experiments, files
from ntklab.cli import main


def test_kernel_gd_quick_run_writes_a_complete_folder(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", "kernel-gd", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("config.json", "metrics.csv", "report.md", "summary.json",
                 "figures/interpolants_1d.png", "figures/convergence.png"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    # the one-step identity with the tangent kernel holds to machine precision ...
    assert summary["identity_max_rel_dev"] < 1e-12
    # ... and with K in place of K K (GD on alpha) it does not
    assert summary["lecture_form_alpha_space_min_rel_dev"] > 0.1
    assert summary["max_dev_from_predicted_error"] < 1e-10
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert {r["kernel"].split()[0] for r in rows} == {"Gaussian", "ball", "NTK"}
    assert json.loads((out / "config.json").read_text())["seed"] == 0
    # permissions as the umask gives (mkdtemp/mkstemp alone would leave 0700/0600)
    assert out.stat().st_mode & 0o777 == files.default_mode(directory=True)
    assert (out / "report.md").stat().st_mode & 0o777 == files.default_mode(directory=False)
    again = CliRunner().invoke(main, ["run", "kernel-gd", "--quick", "--out", str(out)])
    assert again.exit_code != 0 and "already exists" in again.output


def test_interrupted_run_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    def crash(out, **kwargs):
        out.write_json("config.json", {"partial": True})
        raise KeyboardInterrupt
    monkeypatch.setitem(experiments.REGISTRY, "crash", experiments.Experiment("crash", "", crash))
    with pytest.raises(KeyboardInterrupt):
        experiments.run("crash", tmp_path / "run")
    assert list(tmp_path.iterdir()) == []


def test_list_and_unknown_experiment():
    runner = CliRunner()
    assert "kernel-gd" in runner.invoke(main, ["list"]).output
    result = runner.invoke(main, ["run", "no-such-thing"])
    assert result.exit_code != 0 and "unknown experiment" in result.output


def test_kernel_command_matches_python_api(tmp_path):
    x1 = np.random.default_rng(0).standard_normal((9, 4))
    np.save(tmp_path / "x1.npy", x1)
    np.savetxt(tmp_path / "x2.csv", x1[:3] * 2, delimiter=",")
    arch = "Dense(128, W_std=1.5, b_std=0.05), Erf(), Dense(1, W_std=1.5, b_std=0.05)"
    result = CliRunner().invoke(main, ["kernel", "--arch", arch, "--x1", str(tmp_path / "x1.npy"),
                                       "--x2", str(tmp_path / "x2.csv"), "--out", str(tmp_path / "k.npz")])
    assert result.exit_code == 0, result.output
    expected = nk.serial(nk.Dense(128, 1.5, 0.05), nk.Erf(), nk.Dense(1, 1.5, 0.05)).kernel(x1, x1[:3] * 2)
    with np.load(tmp_path / "k.npz") as k:
        np.testing.assert_allclose(k["ntk"], expected.ntk.numpy(), rtol=1e-14)
        np.testing.assert_allclose(k["nngp"], expected.nngp.numpy(), rtol=1e-14)
    bad = CliRunner().invoke(main, ["kernel", "--arch", arch, "--x1", str(tmp_path / "missing.npy"),
                                    "--out", str(tmp_path / "k2.npz")])
    assert bad.exit_code != 0 and "does not exist" in bad.output and not (tmp_path / "k2.npz").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(experiments.REGISTRY))
def test_every_experiment_writes_the_scaffold_files(name, tmp_path, monkeypatch):
    """One scaffold: config.json with provenance, summary.json, metrics.csv, a figure, report.md;
    every panel with data has axis labels and a title (its own or the figure's)."""
    from ntklab.report import RunFolder
    save = RunFolder.save_figure

    def checked(self, figure_name, fig):
        suptitle = fig._suptitle.get_text() if fig._suptitle is not None else ""
        for ax in fig.axes:
            if hasattr(ax, "_colorbar") or not (ax.lines or ax.collections or ax.images or ax.patches):
                continue
            where = f"{name}: figure {figure_name!r}, panel {ax.get_title()!r}"
            assert ax.get_xlabel() and ax.get_ylabel(), f"{where} lacks an axis label"
            assert ax.get_title() or suptitle, f"{where} lacks a title"
        return save(self, figure_name, fig)
    monkeypatch.setattr(RunFolder, "save_figure", checked)
    out = tmp_path / name
    summary = experiments.run(name, out, seed=1, quick=True, device="auto")
    for file in ("config.json", "summary.json", "metrics.csv", "report.md"):
        assert (out / file).is_file(), file
    assert list((out / "figures").glob("*.png"))
    config = json.loads((out / "config.json").read_text())
    assert config["experiment"] == name and config["seed"] == 1 and config["quick"] is True
    assert config["provenance"]["versions"]["torch"] and config["provenance"]["machine"]["cpus"]
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary, default=str))


def test_a_device_an_experiment_cannot_honour_is_refused(tmp_path):
    for name, experiment in experiments.REGISTRY.items():
        if "meta" not in experiment.devices:
            with pytest.raises(ValueError, match=f"experiment '{name}' runs on .* only, not --device meta"):
                experiments.run(name, tmp_path / name, quick=True, device="meta")
    assert list(tmp_path.iterdir()) == []
    assert experiments.REGISTRY["cntk-table"].devices == ("cpu", "cuda")


def test_markdown_tables_keep_pipes_inside_their_cells():
    """|z| or ||W|| in a header or a cell must not split it (GitHub and MyST read `|` as a border)."""
    import re
    from ntklab.report import markdown_table
    table = markdown_table([{"max |z|": "||W|| = 2", "x": 1.5}], ["max |z|", "x"])
    widths = {len(re.split(r"(?<!\\)\|", line.strip())) for line in table.splitlines()}
    assert widths == {4}, table
