"""The command line and the kernel-gd experiment (quick settings)."""
import contextlib
import csv
import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import ntklab as nk
from ntklab._core import files
from ntklab.lab import experiments
from ntklab.lab.cli import main


def test_kernel_gd_quick_run_writes_a_complete_folder(tmp_path):
    """... with two settings changed from the command line (--set), which the run uses."""
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", "kernel-gd", "--quick", "--out", str(out), "--set", "max_steps=1000",
                                       "--set", "network_widths=[16, 64, 256]"])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["max_steps"] == 1000 and config["set"] == {"max_steps": 1000,
                                                                        "network_widths": [16, 64, 256]}
    assert [int(r["width"]) for r in csv.DictReader((out / "network_steps.csv").open())] == [16, 16, 64, 64, 256, 256]
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
    assert {r["steps"] for r in rows if r["steps"]} == {"1000"}
    assert json.loads((out / "config.json").read_text())["seed"] == 0
    # permissions as the umask gives (mkdtemp/mkstemp alone would leave 0700/0600)
    assert out.stat().st_mode & 0o777 == files.default_mode(directory=True)
    assert (out / "report.md").stat().st_mode & 0o777 == files.default_mode(directory=False)
    again = CliRunner().invoke(main, ["run", "kernel-gd", "--quick", "--out", str(out)])
    assert again.exit_code != 0 and "already exists" in again.output


def test_interrupted_run_leaves_nothing_that_looks_complete(tmp_path, fake_experiment):
    def crash(out, cfg, **kwargs):
        out.write_json("config.json", {"partial": True})
        raise KeyboardInterrupt
    fake_experiment("crash", crash)
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


# every experiment's quick run (the scaffold's files, figures, claims): tests/lab/test_every_experiment.py


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
    from ntklab.lab.report import markdown_table
    table = markdown_table([{"max |z|": "||W|| = 2", "x": 1.5}], ["max |z|", "x"])
    widths = {len(re.split(r"(?<!\\)\|", line.strip())) for line in table.splitlines()}
    assert widths == {4}, table


# ---------------------------------------------------------------- issue 27: output paths and flags

ARCH = "Dense(16, W_std=1.5, b_std=0.05), Relu(), Dense(1, W_std=1.5, b_std=0.05)"


@pytest.fixture()
def x1_file(tmp_path):
    path = tmp_path / "x1.npy"
    np.save(path, np.random.default_rng(0).standard_normal((7, 3)))
    return path


def kernel_cli(x1_file, out, *extra):
    return CliRunner().invoke(main, ["kernel", "--arch", ARCH, "--x1", str(x1_file), "--out", str(out),
                                     *extra])


def api_kernel(x1_file):
    net = nk.serial(nk.Dense(16, 1.5, 0.05), nk.Relu(), nk.Dense(1, 1.5, 0.05))
    return net.kernel(np.load(x1_file))


@contextlib.contextmanager
def fake_service(kind):
    """A TCP service that is not a Dask scheduler: "garbage" answers every connection with
    bytes that are not Dask's protocol, "silent" accepts and never answers, "closed" is a port
    nobody listens on.  Yields its tcp:// address."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    address = f"tcp://127.0.0.1:{server.getsockname()[1]}"
    if kind == "closed":
        server.close()
        yield address
        return
    server.listen()
    held = []

    def serve():
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            held.append(connection)
            if kind == "garbage":
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnope" + b"\xff" * 64)
    threading.Thread(target=serve, daemon=True).start()
    try:
        yield address
    finally:
        server.close()
        for connection in held:
            connection.close()


@pytest.mark.parametrize("kind", ["garbage", "silent", "closed"])
def test_a_tcp_service_that_is_not_dask_is_refused_within_seconds(kind, x1_file, tmp_path, monkeypatch):
    """Before: garbage -> "Unable to allocate 3.07 EiB" traceback, silent -> hung for good,
    closed port -> refused only after 38 s.  The probe waits 5 s by default; 1 s here."""
    from ntklab.kernels import engine
    monkeypatch.setitem(engine.check_scheduler.__kwdefaults__, "probe_timeout", 1.0)
    out = tmp_path / "k.zarr"
    with fake_service(kind) as address:
        start = time.perf_counter()
        result = kernel_cli(x1_file, out, "--scheduler", address)
        seconds = time.perf_counter() - start
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert f"scheduler (--scheduler) {address!r}" in result.output and "Dask scheduler" in result.output
    assert "dask scheduler" in result.output   # the fix: how to start one
    assert seconds < 3.5, seconds
    assert not out.exists()


def test_a_real_dask_scheduler_passes_the_probe_and_a_worker_address_does_not():
    distributed = pytest.importorskip("distributed")
    from ntklab.kernels.engine import check_scheduler
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        check_scheduler(cluster.scheduler_address)
        worker = next(iter(cluster.scheduler_info["workers"]))
        with pytest.raises(ValueError, match="is a Dask worker, not the scheduler"):
            check_scheduler(worker)


def test_kernel_refuses_to_replace_an_existing_file_without_overwrite(x1_file, tmp_path):
    """Before: k.npz was silently overwritten."""
    out = tmp_path / "k.npz"
    out.write_bytes(b"someone's results")
    result = kernel_cli(x1_file, out)
    assert result.exit_code == 1 and "already exists" in result.output and "--overwrite" in result.output
    assert out.read_bytes() == b"someone's results"
    assert kernel_cli(x1_file, out, "--overwrite").exit_code == 0
    with np.load(out) as k:
        np.testing.assert_allclose(k["ntk"], api_kernel(x1_file).ntk.numpy(), rtol=1e-14)
    folder = tmp_path / "folder.npz"
    folder.mkdir()
    result = kernel_cli(x1_file, folder, "--overwrite")
    assert result.exit_code == 1 and "is a folder" in result.output


def test_kernel_overwrite_replaces_a_store_of_another_computation(x1_file, tmp_path):
    """A .zarr store of the same computation is resumed (no flag needed); one of another
    computation is refused, and replaced with --overwrite."""
    out = tmp_path / "k.zarr"
    other = tmp_path / "other.npy"
    np.save(other, np.ones((4, 3)))
    assert kernel_cli(other, out).exit_code == 0
    refused = kernel_cli(x1_file, out)
    assert refused.exit_code == 1 and "different configuration" in refused.output
    result = kernel_cli(x1_file, out, "--overwrite")
    assert result.exit_code == 0, result.output
    from ntklab.kernels import KernelStore
    np.testing.assert_allclose(KernelStore.open(out).load("ntk"), api_kernel(x1_file).ntk.numpy(),
                               rtol=1e-14)
    not_a_store = tmp_path / "notes.zarr"
    not_a_store.mkdir()
    (not_a_store / "notes.txt").write_text("keep me")
    result = kernel_cli(x1_file, not_a_store, "--overwrite")
    assert result.exit_code == 1 and "not a kernel store" in result.output
    assert (not_a_store / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("flags, message", [
    (["--scheduler", "processes"], "--scheduler applies to .zarr output only"),
    (["--workers", "2"], "--workers applies to .zarr output only"),
    (["--tile-size", "4"], "--tile-size applies to .zarr output only"),
    (["--no-verify"], "--verify/--no-verify applies to .zarr output only"),
])
def test_kernel_refuses_zarr_only_flags_with_npz_output(flags, message, x1_file, tmp_path):
    """Before: each of these was silently ignored."""
    result = kernel_cli(x1_file, tmp_path / "k.npz", *flags)
    assert result.exit_code == 1 and message in result.output, result.output
    assert list(tmp_path.iterdir()) == [x1_file]


def test_workers_without_the_processes_scheduler_are_refused(x1_file, tmp_path):
    """Before: --workers with the local scheduler (or a Dask cluster) was silently ignored."""
    result = kernel_cli(x1_file, tmp_path / "k.zarr", "--workers", "3")
    assert result.exit_code == 1 and "workers (--workers) applies to scheduler 'processes' only" in result.output
    result = CliRunner().invoke(main, ["run", "cntk-table", "--quick", "--workers", "3",
                                       "--out", str(tmp_path / "run")])
    assert result.exit_code == 1 and "workers (--workers) applies to scheduler 'processes' only" in result.output
    assert list(tmp_path.iterdir()) == [x1_file]


@pytest.fixture()
def spy_experiment(fake_experiment):
    """A registered experiment that records whether it was started."""
    calls = []

    def spy(folder, cfg, **kwargs):
        calls.append(folder)
        folder.write_text("report.md", "ran\n")
        return {}
    fake_experiment("spy", spy)
    return calls


def unwritable_outs(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    outs = [blocker / "run"]   # its "folder" is a file
    if Path("/proc/self").is_dir():
        outs.append(Path("/proc/ntklab-run"))   # a read-only file system, even for root
    return outs


def test_run_checks_its_output_folder_before_any_work(spy_experiment, tmp_path):
    """Before: a raw OSError traceback (FileExistsError / FileNotFoundError)."""
    for out in unwritable_outs(tmp_path):
        result = CliRunner().invoke(main, ["run", "spy", "--out", str(out)])
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
        assert f"--out {str(out)!r} cannot be written" in result.output, result.output
        assert spy_experiment == []
    missing = tmp_path / "new" / "deeper" / "run"   # missing folders are created
    assert CliRunner().invoke(main, ["run", "spy", "--out", str(missing)]).exit_code == 0
    assert (missing / "report.md").read_text().startswith("ran\n") and len(spy_experiment) == 1


def test_kernel_checks_its_output_before_any_work(x1_file, tmp_path):
    for out in unwritable_outs(tmp_path):
        for suffix in (".npz", ".zarr"):
            result = kernel_cli(x1_file, out.with_suffix(suffix))
            assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
            assert "cannot be written" in result.output


@pytest.mark.parametrize("bad", [["--max-memory", "lots"], ["--device", "nonsense"], ["--x2", "WRONG"]])
def test_an_overwrite_with_a_bad_argument_keeps_the_old_store(bad, x1_file, tmp_path):
    """Before: --overwrite removed the finished store, then the mistyped argument failed."""
    from ntklab.kernels import KernelStore
    out = tmp_path / "k.zarr"
    assert kernel_cli(x1_file, out, "--tile-size", "3").exit_code == 0
    before = KernelStore.open(out).load("ntk")
    if bad[0] == "--x2":   # another feature count than x1
        np.save(tmp_path / "x2.npy", np.ones((4, 5)))
        bad = ["--x2", str(tmp_path / "x2.npy")]
    result = kernel_cli(x1_file, out, "--tile-size", "3", "--overwrite", *bad)
    assert result.exit_code != 0
    store = KernelStore.open(out)
    assert store.complete and np.array_equal(store.load("ntk"), before)


def test_run_overwrite_replaces_only_a_run_folder(tmp_path):
    """Before: `ntklab run ... --out docs --overwrite` deleted whatever docs/ held."""
    precious = tmp_path / "docs"
    precious.mkdir()
    (precious / "thesis.tex").write_text("keep me")
    result = CliRunner().invoke(main, ["run", "kernel-gd", "--quick", "--out", str(precious), "--overwrite"])
    assert result.exit_code != 0 and "not a run folder" in result.output
    assert (precious / "thesis.tex").read_text() == "keep me"
    a_file = tmp_path / "f.csv"
    a_file.write_text("data")
    result = CliRunner().invoke(main, ["run", "kernel-gd", "--quick", "--out", str(a_file), "--overwrite"])
    assert result.exit_code != 0 and a_file.read_text() == "data"
    run = tmp_path / "run"                                   # an earlier run's folder is replaced
    for _ in range(2):
        result = CliRunner().invoke(main, ["run", "kernel-gd", "--quick", "--out", str(run), "--overwrite"])
        assert result.exit_code == 0, result.output


def test_the_arch_help_example_is_a_valid_architecture():
    """The example a new user copies first (it passed "SAME" as the strides)."""
    import re
    from ntklab.arch.spec import parse_architecture
    text = CliRunner().invoke(main, ["kernel", "--help"], terminal_width=1000).output
    example = re.search(r"'(Conv\(.*?Dense\(1\))'", " ".join(text.split())).group(1)
    net = parse_architecture(example)
    assert net.kernel(np.ones((2, 3, 4, 4)), get="ntk").shape == (2, 2)


def test_a_full_disk_while_writing_the_npz_is_one_clear_message(x1_file, tmp_path, monkeypatch):
    import errno
    from ntklab.lab import cli

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(cli, "atomic_write_bytes", full)
    result = kernel_cli(x1_file, tmp_path / "k.npz")
    assert result.exit_code == 1 and "could not be written (No space left on device)" in result.output
    assert not (tmp_path / "k.npz").exists()


def test_a_failed_overwrite_gives_the_replaced_run_its_stores_back(tmp_path):
    """Before: an interrupted `run --overwrite` left the earlier run folder without kernels/
    (moved into the failed run's staging folder) although its report names them."""
    from ntklab.lab.report import RunFolder
    out = tmp_path / "run"
    (out / "kernels").mkdir(parents=True)
    (out / "config.json").write_text("{}")
    key = {"images": "abc", "size": 4}
    (out / "kernels" / "key.json").write_text(json.dumps(key, sort_keys=True))
    (out / "kernels" / "tile").write_text("finished work")
    with pytest.raises(KeyboardInterrupt):
        with RunFolder(out, overwrite=True) as run:
            assert (run.stores(key) / "tile").read_text() == "finished work"
            raise KeyboardInterrupt
    assert (out / "kernels" / "tile").read_text() == "finished work"
    with RunFolder(out, overwrite=True) as run:   # the next run takes them over again
        assert (run.stores(key) / "tile").read_text() == "finished work"
        run.write_text("config.json", "{}")
    assert (out / "kernels" / "tile").is_file() and not list(tmp_path.glob(".run.*"))


def test_a_scheduler_address_of_another_protocol_is_refused_before_any_connection(x1_file, tmp_path):
    result = kernel_cli(x1_file, tmp_path / "k.zarr", "--scheduler", "http://127.0.0.1:8787")
    assert result.exit_code == 1 and "is not a Dask address (http:// is not one" in result.output
    assert not (tmp_path / "k.zarr").exists()
