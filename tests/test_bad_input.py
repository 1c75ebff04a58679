"""The bad-input and fault battery (issue 13): each answer is a clear error naming the
argument and the fix, never a silent wrong result, lost data or a raw traceback."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import ntklab as nk
from ntklab import predict
from ntklab.lab import experiments
from ntklab.lab.cli import main
from ntklab.kernels import KernelStore, compute_kernel
from ntklab.kernels import engine

X = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
IMPLEMENTATIONS = ["auto", "structured", "jacobian", "ntk_vp"]


def mlp(*middle):
    return nn.Sequential(nn.Linear(4, 16), *middle, nn.ReLU(), nn.Linear(16, 2)).double()


# --------------------------------------------------------------------------- empirical NTK
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("dropout", [lambda: nn.Dropout(0.05), lambda: nn.AlphaDropout(0.1),
                                     lambda: nn.Dropout1d(0.2)])
def test_dropout_in_train_mode_is_refused(dropout, implementation):
    model = mlp(dropout())
    with pytest.raises(ValueError, match=r"Dropout.*\(p=.*train mode.*model.eval\(\)"):
        nk.empirical_ntk(model, X, implementation=implementation)
    model.eval()   # then the kernel is a deterministic quantity
    torch.testing.assert_close(nk.empirical_ntk(model, X, implementation=implementation),
                               nk.empirical_ntk(model, X, implementation=implementation))


class Noisy(nn.Module):
    """Random numbers in the forward pass without any Dropout module."""
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(4, 2).double()

    def forward(self, x):
        return self.layer(x) * (1 + 0.1 * torch.rand_like(x[:, :1]))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_any_random_draw_in_the_forward_pass_is_refused(implementation):
    with pytest.raises(ValueError, match="draws random numbers.*model.eval"):
        nk.empirical_ntk(Noisy(), X, implementation=implementation)


class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(4, 2).double()

    def forward(self, x):
        return self.layer(x), x


def test_models_and_inputs_the_empirical_ntk_cannot_use():
    with pytest.raises(ValueError, match="returns a tuple, not one tensor"):
        nk.empirical_ntk(Pair(), X)
    broken = mlp()
    with torch.no_grad():
        broken[0].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="parameter '0.weight' contains NaN"):
        nk.empirical_ntk(broken, X)
    with pytest.raises(ValueError, match=r"cannot take x1 with samples of shape \(5,\).*features"):
        nk.empirical_ntk(mlp(), torch.randn(3, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="x1 is empty"):
        nk.empirical_ntk(mlp(), torch.zeros(0, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="rows of equal length"):
        nk.empirical_ntk(mlp(), [[1.0, 2.0, 3.0, 4.0], [1.0, 2.0]])
    with pytest.raises(ValueError, match=r"x_test must have samples of shape \(4,\)"):
        nk.train(mlp(), X, torch.zeros(6, 2), steps=1, learning_rate=0.1,
                 x_test=torch.randn(2, 5, dtype=torch.float64))


# --------------------------------------------------------------------------- kernels and layers
def test_arguments_of_the_analytic_kernels():
    net = nk.mlp(1, 8)
    with pytest.raises(ValueError, match="dtype must be a floating torch dtype"):
        net.kernel(X, dtype=torch.int64)
    with pytest.raises(ValueError, match="device='tpu' is not a torch device"):
        net.kernel(X, device="tpu")
    with pytest.raises(ValueError, match=r"the result alone needs .* GiB .*compute_kernel"):
        net.kernel(torch.zeros(120_000, 2))   # 2 x 120000^2 float32: 107 GiB, refused at once


def test_channels_last_images_are_refused_where_the_channels_are_known():
    cnn = nk.serial(nk.Conv(4, (3, 3), padding="SAME"), nk.Relu(), nk.GlobalAvgPool(), nk.Dense(1))
    with pytest.raises(ValueError, match=r"looks channels-last.*in_shape=\(3, 8, 8\)"):
        cnn.module(in_shape=(8, 8, 3))
    model = cnn.module(in_shape=(3, 8, 8))
    with pytest.raises(ValueError, match=r"NCHW images \[N, 3, H, W\].*permute\(0, 3, 1, 2\)"):
        model(torch.randn(2, 8, 8, 3))
    # [6, 4, 4, 3]: channels-last, but plausible as NCHW; an architecture that states its
    # input channels refuses it in the kernel and in the finite network
    rgb = nk.serial(nk.Conv(4, (3, 3), padding="SAME", in_channels=3), nk.Relu(), nk.GlobalAvgPool(), nk.Dense(1))
    nhwc = torch.randn(6, 4, 4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"takes images with 3 channels, got 4 .*NCHW.*permute"):
        rgb.kernel(nhwc)
    with pytest.raises(ValueError, match=r"takes images with 3 channels, got 4"):
        rgb.module(in_shape=(4, 4, 3))
    assert rgb.kernel(nhwc.permute(0, 3, 1, 2), get="ntk").shape == (6, 6)


def test_messages_name_the_argument_of_the_api_they_come_from():
    from ntklab.sklearn import NTKRegressor
    with pytest.raises(ValueError, match="^architecture: unknown layer 'Relux'"):
        NTKRegressor(architecture="Dense(1), Relux(), Dense(1)").fit(np.eye(3), np.arange(3.0))
    singular = torch.ones(3, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="singular") as flow:
        predict.gradient_descent_mse_ensemble(lambda a, b=None: singular, np.eye(3), np.arange(3.0))(
            None, np.eye(3), "ntk")
    assert "assume_psd" not in str(flow.value)   # that function has no such argument
    with pytest.raises(ValueError, match="assume_psd=False"):
        predict.solve(singular, np.arange(3.0))


def test_a_pickled_npy_file_is_refused_by_name(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    result = CliRunner().invoke(main, ["kernel", "--arch", "Dense(1)", "--x1", str(path),
                                       "--out", str(tmp_path / "k.npz")])
    assert result.exit_code != 0 and "x1:" in result.output and "Python objects" in result.output


# --------------------------------------------------------------------------- command line
@pytest.mark.parametrize("flags", [["--workers", "0"], ["--train-size", "0"], ["--test-size", "-3"]])
def test_cli_refuses_non_positive_counts(flags, tmp_path):
    result = CliRunner().invoke(main, ["run", "cntk-table", "--quick", "--out", str(tmp_path / "r"), *flags])
    assert result.exit_code == 2 and "Invalid value" in result.output and flags[0] in result.output
    assert not (tmp_path / "r").exists()


def test_cli_device_and_destination_are_checked_before_any_work(tmp_path):
    result = CliRunner().invoke(main, ["run", "kernel-gd", "--quick", "--device", "banana",
                                       "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and "device='banana' is not a torch device" in result.output
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(0).normal(size=(5, 3)))
    for out in ("/proc/o.npz", "/proc/o.zarr"):
        started = time.perf_counter()
        result = CliRunner().invoke(main, ["kernel", "--arch", "Dense(2), Relu(), Dense(1)",
                                           "--x1", str(x), "--out", out])
        assert result.exit_code == 1 and "cannot be written" in result.output, result.output
        assert time.perf_counter() - started < 5


def test_cntk_table_validates_the_scheduler_before_any_work(tmp_path, monkeypatch):
    from ntklab.lab.experiments import cntk_table

    def no_work(*args, **kwargs):
        raise AssertionError("data loaded before the options were validated")
    monkeypatch.setattr(cntk_table, "image_task", no_work)
    with pytest.raises(ValueError, match="scheduler must be"):
        experiments.run("cntk-table", tmp_path / "r", quick=True, scheduler="foo")
    assert list(tmp_path.iterdir()) == []


def test_a_killed_run_leaves_no_stale_staging_after_the_next_one(tmp_path):
    out = tmp_path / "run"
    stale = tmp_path / ".run.partial-killed"
    stale.mkdir()
    (stale / "config.json").write_text("{}")
    experiments.run("kernel-gd", out, quick=True)
    assert out.is_dir() and not stale.exists()


# --------------------------------------------------------------------------- the tiled store
NET = nk.serial(nk.Dense(4, b_std=0.1), nk.Relu(), nk.Dense(1))
POINTS = torch.randn(10, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def markers(store):
    return {p.name: p.stat().st_mtime_ns for p in (store.path / "tiles_done").iterdir()}


@pytest.mark.parametrize("damage", ["delete", "corrupt"])
def test_a_damaged_chunk_is_named_by_load_and_recomputed_by_a_rerun(damage, tmp_path, capfd):
    path = tmp_path / "k.zarr"
    store = compute_kernel(NET, POINTS, store=path, tile_size=4, progress=False)
    expected = store.load("ntk")
    chunk = path / "ntk" / "c" / "0" / "1"
    assert chunk.is_file()
    if damage == "delete":
        chunk.unlink()
    else:
        chunk.write_bytes(b"\x28\xb5\x2f\xfd" + os.urandom(40))   # a zstd magic, then garbage
    before = markers(store)
    capfd.readouterr()
    with pytest.raises(ValueError, match=r"1 damaged tile\(s\) \(0_1: missing, unreadable.*again"):
        KernelStore.open(path).load("ntk")
    assert "Traceback" not in capfd.readouterr().err   # no asyncio noise from the failed decode
    assert KernelStore.open(path).verify() == [(0, 1)]
    repaired = compute_kernel(NET, POINTS, store=path, tile_size=4, progress=False)
    np.testing.assert_array_equal(repaired.load("ntk"), expected)
    after = markers(repaired)
    assert {name for name in after if after[name] != before.get(name)} == {"0_1"}   # only that tile


def test_a_failed_start_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "SCHEDULER_TIMEOUT", "1s")
    for kwargs in ({"scheduler": "processes", "workers": -1}, {"scheduler": "processes", "workers": 0},
                   {"scheduler": "tcp://127.0.0.1:9"}):
        with pytest.raises(ValueError, match="workers must be a positive integer|cannot reach"):
            compute_kernel(NET, POINTS, store=tmp_path / "k.zarr", tile_size=4, progress=False, **kwargs)
        assert list(tmp_path.iterdir()) == [], kwargs


@pytest.mark.slow
def test_process_workers_exit_when_the_parent_is_killed(tmp_path):
    """Tiles of ~30-60 s: a worker that only noticed its parent's death after its tile would
    outlive the parent by far more than the 10 s allowed."""
    script = (
        "import torch, ntklab as nk\n"
        "from ntklab.kernels import compute_kernel\n"
        "net = nk.serial(nk.Conv(8, (3, 3), padding='SAME'), nk.Relu(), nk.Conv(8, (3, 3), padding='SAME'), nk.Relu(),"
        " nk.GlobalAvgPool(), nk.Dense(1))\n"
        "x = torch.randn(352, 2, 12, 12, dtype=torch.float64)\n"
        f"compute_kernel(net, x, store={str(tmp_path / 'k.zarr')!r}, tile_size=176, scheduler='processes',"
        " workers=2, progress=False)\n")
    parent = subprocess.Popen([sys.executable, "-c", script])
    children: list[str] = []
    try:
        deadline = time.time() + 60
        while len(children) < 2:   # the two workers (and the resource tracker)
            assert time.time() < deadline and parent.poll() is None
            time.sleep(0.2)
            children = subprocess.run(["pgrep", "-P", str(parent.pid)], capture_output=True,
                                      text=True).stdout.split()
        time.sleep(3.0)   # the workers are inside their first tile now
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 10

        def alive(pid):
            try:
                return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
            except OSError:
                return False
        while any(alive(pid) for pid in children):
            assert time.time() < deadline, "workers outlived their parent by 10 s"
            time.sleep(0.2)
    finally:
        for pid in children:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass


_X = torch.randn(3, 4, dtype=torch.float64)
_IMG = torch.randn(2, 3, 6, 6, dtype=torch.float64)


@pytest.mark.parametrize("net, x, match", [
    (lambda: nk.serial(nk.Dense(8), nk.FanOut(2), nk.parallel(nk.Dense(8), nk.Dense(4)), nk.FanInSum(),
                       nk.Dense(1)), _X, r"layer 3, FanInSum\(\): the branches' shapes differ"),
    (lambda: nk.serial(nk.Conv(8, padding="SAME"), nk.FanOut(2),
                       nk.parallel(nk.Conv(8, padding="SAME"), nk.Conv(8)), nk.FanInConcat(), nk.Flatten(),
                       nk.Dense(1)), _IMG, r"FanInConcat\(\): the branches' shapes apart from channels"),
    (lambda: nk.serial(nk.Dense(8), nk.FanOut(3), nk.parallel(nk.Dense(8), nk.Identity()), nk.FanInSum(),
                       nk.Dense(1)), _X, r"layer 2, parallel\(...\): it has 2 layers but gets 3 branches"),
    (lambda: nk.serial(nk.Dense(8), nk.FanOut(2), nk.parallel(nk.Dense(8), nk.Identity()), nk.Dense(1)),
     _X, r"layer 3, Dense\(1\): it gets 2 branches.*FanInSum"),
    (lambda: nk.serial(nk.Dense(8), nk.FanOut(2)), _X, "ends with 2 branches"),
    (lambda: nk.serial(nk.Dense(8), nk.FanInSum()), _X, r"layer 1, FanInSum\(\): it needs branches"),
    (lambda: nk.serial(nk.Conv(8), nk.GlobalSelfAttention(8, 8, 8, 2), nk.GlobalAvgPool(), nk.Dense(1)),
     _IMG, r"layer 1, GlobalSelfAttention.*token sequences"),
    (lambda: nk.serial(nk.Conv(8), nk.AvgPool((5, 5)), nk.Flatten(), nk.Dense(1)), _IMG,
     r"layer 1, AvgPool\(\(5, 5\)\): window \(5, 5\) is larger than the \(4, 4\) images"),
    (lambda: nk.serial(nk.Dense(8), nk.GlobalAvgPool(), nk.Dense(1)), _X, r"layer 1, GlobalAvgPool.*vectors"),
    (lambda: nk.serial(nk.Conv(8), nk.LayerNorm(), nk.Flatten(), nk.Dense(1)), _IMG,
     r"LayerNorm\(\): axis=-1 is not the channel axis.*LayerNorm\(axis=1\)"),
])
def test_bad_architectures_name_the_layer_its_position_and_the_fix(net, x, match):
    """Both the kernel and the finite module refuse, with the same message."""
    with pytest.raises(ValueError, match=match):
        net().kernel(x)
    with pytest.raises(ValueError, match=match):
        net().module(tuple(x.shape[1:]))


@pytest.mark.parametrize("net, x, match", [
    (lambda: nk.serial(nk.Dense(8), nk.Relu(), nk.Sin(), nk.Dense(1)), _X,
     r"layer 2, Sin\(\): the input to an activation must be Gaussian"),
    (lambda: nk.serial(nk.Dense(8), nk.FanOut(2), nk.parallel(nk.Relu(), nk.Identity()), nk.FanInSum(),
                       nk.Dense(1)), _X, r"FanInSum adds zero-mean Gaussian branches only"),
    (lambda: nk.serial(nk.Dense(8), nk.FanOut(2), nk.parallel(nk.Dense(8), nk.Dense(8)), nk.FanInConcat(),
                       nk.Relu(), nk.Dense(1)), _X, r"layer 4, Relu\(\): the input to an activation"),
    (lambda: nk.serial(nk.Dense(8), nk.GlobalSelfAttention(8, 8, 8, 2, linear_scaling=False),
                       nk.GlobalAvgPool(), nk.Dense(1)), torch.randn(2, 5, 4), "linear_scaling=True"),
    (lambda: nk.serial(nk.Dense(8), nk.Relu(), nk.Dense(8), nk.ExpNormalized(), nk.Dense(1)), _X, None),
])
def test_kernel_only_refusals(net, x, match):
    """What has a finite network but no (Gaussian) kernel, and the kernel-only layer."""
    if match is None:  # ExpNormalized: a kernel, no finite network
        assert torch.isfinite(net().kernel(x, get="ntk")).all()
        with pytest.raises(ValueError, match="kernel-only layer"):
            net().module((4,))
        return
    with pytest.raises(ValueError, match=match):
        net().kernel(x)


def test_block_sizes_count_the_positions_of_images_and_token_sequences():
    """The state of an all-pairs network holds P^2 numbers per pair of inputs (P positions):
    blocks shrink accordingly for images and for token sequences alike."""
    gap = nk.serial(nk.Dense(8), nk.Relu(), nk.GlobalAvgPool(), nk.Dense(1))
    assert gap.pair_entries((16, 8)) == 16 ** 2                 # sequences (T, C)
    assert gap.pair_entries((3, 4, 5)) == 20 ** 2              # images (C, H, W)
    assert nk.mlp(1, 8).pair_entries((8,)) == 1
    assert gap.block_size_for((64, 8), "64MiB", torch.float64) < gap.block_size_for((4, 8), "64MiB",
                                                                                     torch.float64)
