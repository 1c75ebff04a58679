"""`ntklab solve`: ridge regression from a kernel store without loading it, against the dense solve."""
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import ntklab as nk
from ntklab.lab.cli import main


def test_solve_from_a_store_equals_the_dense_ridge_solution(tmp_path):
    x = np.random.default_rng(0).normal(size=(60, 4))
    y = np.sin(x[:, :2])
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    runner = CliRunner()
    made = runner.invoke(main, ["kernel", "--arch", "Dense(64), Relu(), Dense(1)", "--x1", str(tmp_path / "x.npy"),
                                "--out", str(tmp_path / "k.zarr"), "--tile-size", "16"])
    assert made.exit_code == 0, made.output
    solved = runner.invoke(main, ["solve", "--store", str(tmp_path / "k.zarr"), "--y", str(tmp_path / "y.npy"),
                                  "--out", str(tmp_path / "alpha.npy"), "--diag-reg", "1e-3", "--rtol", "1e-10"])
    assert solved.exit_code == 0, solved.output
    assert "relative residual" in solved.output
    k = nk.serial(nk.Dense(64), nk.Relu(), nk.Dense(1)).kernel(torch.as_tensor(x), get="ntk")
    exact = nk.predict.solve(k, torch.as_tensor(y), diag_reg=1e-3).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "alpha.npy"), exact, rtol=1e-7, atol=1e-9)
    spread = runner.invoke(main, ["solve", "--store", str(tmp_path / "k.zarr"), "--y", str(tmp_path / "y.npy"),
                                  "--out", str(tmp_path / "alpha2.npy"), "--diag-reg", "1e-3", "--rtol", "1e-10",
                                  "--scheduler", "processes", "--workers", "2"])
    assert spread.exit_code == 0, spread.output
    np.testing.assert_allclose(np.load(tmp_path / "alpha2.npy"), exact, rtol=1e-7, atol=1e-9)
    centered = runner.invoke(main, ["solve", "--store", str(tmp_path / "k.zarr"), "--y", str(tmp_path / "y.npy"),
                                    "--out", str(tmp_path / "alpha3.npy"), "--diag-reg", "1e-3", "--rtol", "1e-10",
                                    "--x", str(tmp_path / "x.npy"), "--centers", "30"])
    assert centered.exit_code == 0, centered.output
    np.testing.assert_allclose(np.load(tmp_path / "alpha3.npy"), exact, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("args, message", [
    (["--store", "missing.zarr"], "is not an ntklab kernel store"),
    (["--get", "nngp"], "holds ['ntk'], not 'nngp'"),
    (["--centers", "4"], "--x and --centers go together"),
    (["--x", "other.npy", "--centers", "4"], "--x is not the input file the store"),
])
def test_solve_refuses_a_missing_store_or_kernel_in_one_line(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    x = np.random.default_rng(0).normal(size=(8, 3))
    np.save("x.npy", x)
    np.save("y.npy", x[:, 0])
    np.save("other.npy", x[::-1])
    runner = CliRunner()
    assert runner.invoke(main, ["kernel", "--arch", "Dense(8), Relu(), Dense(1)", "--x1", "x.npy",
                                "--out", "k.zarr", "--get", "ntk"]).exit_code == 0
    options = {"--store": "k.zarr", "--y": "y.npy", "--out": "alpha.npy"}
    options.update(dict(zip(args[::2], args[1::2], strict=True)))
    result = runner.invoke(main, ["solve", *[part for pair in options.items() for part in pair]])
    assert result.exit_code != 0 and message in result.output, result.output
    assert not (tmp_path / "alpha.npy").exists()


def test_run_help_lists_every_experiment_with_its_summary():
    from ntklab.lab import experiments
    text = CliRunner().invoke(main, ["run", "--help"]).output
    for name, experiment in experiments.REGISTRY.items():
        assert f"{name:20s} {experiment.summary}"[:60] in text, name
    assert "Which kernels to compute" in CliRunner().invoke(main, ["kernel", "--help"]).output
