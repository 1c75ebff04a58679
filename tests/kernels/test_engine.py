"""The tiled kernel engine: zarr store, upper tiles, resume after a kill, Dask."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import ntklab as nk
from ntklab.kernels import KernelStore, compute_kernel

ARCH = ("Conv(8, (3, 3), padding='SAME', W_std=1.4, b_std=0.1), Relu(), "
        "Conv(8, (3, 3), padding='SAME', W_std=1.4), Relu(), GlobalAvgPool(), Dense(1)")


def images(n, size=6, seed=0):
    return torch.randn(n, 2, size, size, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def assert_same_up_to_summation_order(tiled, in_memory):
    """Tiles group the pairs into other batches than the in-memory kernel, so BLAS may sum in another
    order: equal to 1e-13 of the kernel's scale (an entry that cancels to ~1e-5 of the largest one
    carries the largest entry's rounding, not its own)."""
    in_memory = np.asarray(in_memory)
    np.testing.assert_allclose(tiled, in_memory, rtol=1e-13, atol=1e-13 * np.abs(in_memory).max())


def test_tiles_match_the_in_memory_kernel_and_only_upper_tiles_are_computed(tmp_path):
    arch = nk.arch.spec.parse_architecture(ARCH)
    x1, x2 = images(23), images(9, seed=1)
    store = compute_kernel(arch, x1, store=tmp_path / "sym.zarr", tile_size=5, progress=False)
    tiles = 5  # ceil(23 / 5)
    assert store.complete and len(store.done()) == tiles * (tiles + 1) // 2
    reference = arch.kernel(x1)
    for name in ("nngp", "ntk"):
        matrix = store.load(name)
        assert_same_up_to_summation_order(matrix, getattr(reference, name).numpy())
        np.testing.assert_array_equal(matrix, matrix.T)
    # strictly lower tiles were never written: their chunks hold the fill value
    raw = store._group()["ntk"][:]
    assert np.isnan(raw[10:15, 0:5]).all() and not np.isnan(raw[0:5, 10:15]).any()
    rect = compute_kernel(ARCH, x1, x2, store=tmp_path / "rect.zarr", tile_size=4, get="ntk",
                          progress=False)
    assert rect.names == ("ntk",) and len(rect.tiles()) == 6 * 3
    assert_same_up_to_summation_order(rect.load("ntk"), arch.kernel(x1, x2, "ntk").numpy())


def test_a_different_configuration_is_refused(tmp_path):
    x = images(10)
    path = tmp_path / "k.zarr"
    compute_kernel(ARCH, x, store=path, tile_size=4, progress=False)
    with pytest.raises(ValueError, match="refusing to resume.*x1_sha256"):
        compute_kernel(ARCH, x * 1.01, store=path, tile_size=4, progress=False)
    with pytest.raises(ValueError, match="refusing to resume.*tile_size: store has 4, this run 5"):
        compute_kernel(ARCH, x, store=path, tile_size=5, progress=False)
    with pytest.raises(ValueError, match="refusing to resume.*architecture"):
        compute_kernel(ARCH.replace("W_std=1.4)", "W_std=1.5)"), x, store=path, tile_size=4,
                       progress=False)
    (tmp_path / "other").mkdir()
    with pytest.raises(ValueError, match="not an ntklab kernel store"):
        compute_kernel(ARCH, x, store=tmp_path / "other", progress=False)
    with pytest.raises(ValueError, match="x1 must be a batch of images"):
        compute_kernel(ARCH, x[:, 0], store=tmp_path / "bad.zarr", progress=False)
    assert not (tmp_path / "bad.zarr").exists()


def _cli(*args):
    return [sys.executable, "-m", "ntklab.lab.cli", "kernel", *args]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_matrix(tmp_path):
    """Kill `ntklab kernel --out K.zarr` after a few tiles, run it again: finished
    tiles are kept and the matrix equals an uninterrupted run's, bit for bit."""
    x = images(40, size=16).numpy()
    np.save(tmp_path / "x.npy", x)
    path = tmp_path / "k.zarr"
    args = _cli("--arch", ARCH, "--x1", str(tmp_path / "x.npy"), "--out", str(path),
                "--tile-size", "2")
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        if (path / "tiles_done").is_dir() and len(os.listdir(path / "tiles_done")) >= 5:
            break
        assert process.poll() is None, process.communicate()[1].decode()[-2000:]
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    store = KernelStore.open(path)
    done_before = store.done()
    assert 5 <= len(done_before) < len(store.tiles()), "the run was not interrupted mid-way"
    with pytest.raises(ValueError, match="missing .* tile"):
        store.load("ntk")
    mtimes = {t: os.stat(path / "tiles_done" / f"{t[0]}_{t[1]}").st_mtime_ns for t in done_before}
    finished = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert all(os.stat(path / "tiles_done" / f"{t[0]}_{t[1]}").st_mtime_ns == m
               for t, m in mtimes.items())  # finished tiles were not recomputed
    uninterrupted = compute_kernel(ARCH, x, store=tmp_path / "whole.zarr", tile_size=2,
                                   progress=False)
    for name in ("nngp", "ntk"):
        np.testing.assert_array_equal(KernelStore.open(path).load(name), uninterrupted.load(name))


@pytest.mark.slow
def test_dask_local_cluster_and_processes_give_the_local_result(tmp_path):
    distributed = pytest.importorskip("distributed")
    x1, x2 = images(14), images(5, seed=2)
    local = compute_kernel(ARCH, x1, x2, store=tmp_path / "local.zarr", tile_size=4, progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        remote = compute_kernel(ARCH, x1, x2, store=tmp_path / "dask.zarr", tile_size=4,
                                scheduler=cluster.scheduler_address, progress=False)
        with distributed.Client(cluster) as client:
            assert sum(client.nthreads().values()) == 2
    pooled = compute_kernel(ARCH, x1, x2, store=tmp_path / "pool.zarr", tile_size=4,
                            scheduler="processes", workers=2, progress=False)
    for name in ("nngp", "ntk"):
        np.testing.assert_array_equal(remote.load(name), local.load(name))
        np.testing.assert_array_equal(pooled.load(name), local.load(name))
    with pytest.raises(ValueError, match="scheduler must be"):
        compute_kernel(ARCH, x1, store=tmp_path / "bad.zarr", scheduler="threads", progress=False)
    assert not (tmp_path / "bad.zarr").exists()


RESNET = ("Conv(4, padding='SAME', W_std=1.4), FanOut(2), parallel(serial(Relu(), Conv(4, padding='SAME'), "
          "Relu(), Conv(4, padding='SAME')), Identity()), FanInSum(), AvgPool((2, 2), strides=(2, 2)), "
          "Relu(), GlobalAvgPool(), Dense(1)")
TRANSFORMER = ("Dense(8), GlobalSelfAttention(8, 8, 8, 2), LayerNorm(), Dense(8), Relu(), GlobalAvgPool(), "
               "Dense(1)")


@pytest.mark.parametrize("spec, x", [(RESNET, images(11)),
                                     (TRANSFORMER, torch.randn(11, 5, 3, dtype=torch.float64))])
def test_branching_and_attention_networks_through_the_store_and_the_cli(tmp_path, spec, x):
    """The engine and `ntklab kernel --out k.zarr` take residual and attention networks (and
    token sequences) unchanged, tile for tile equal to the in-memory kernel, and resume them."""
    from click.testing import CliRunner
    from ntklab.lab.cli import main
    arch = nk.arch.spec.parse_architecture(spec)
    expected = arch.kernel(x)
    store = compute_kernel(spec, x, store=tmp_path / "k.zarr", tile_size=4, progress=False)
    for name in ("nngp", "ntk"):
        assert_same_up_to_summation_order(store.load(name), getattr(expected, name).numpy())
    np.save(tmp_path / "x.npy", x.numpy())
    result = CliRunner().invoke(main, ["kernel", "--arch", spec, "--x1", str(tmp_path / "x.npy"),
                                       "--out", str(tmp_path / "cli.zarr"), "--tile-size", "4"])
    assert result.exit_code == 0, result.output
    assert_same_up_to_summation_order(KernelStore.open(tmp_path / "cli.zarr").load("ntk"), expected.ntk.numpy())
    again = compute_kernel(spec, x, store=tmp_path / "k.zarr", tile_size=4, progress=False)
    assert again.complete
