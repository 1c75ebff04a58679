"""cntk-table: the CIFAR-10 binary loader (on synthetic files in that format) and a
quick end-to-end run of the experiment."""
import csv

import numpy as np
import pytest
import torch

import ntklab as nk

from ntklab.lab import experiments
from ntklab.lab.data import CIFAR10_TEST, CIFAR10_TRAIN, cifar10, image_task, read_cifar10_binary


def write_batch(path, labels, seed):
    """Records of the CIFAR-10 binary format: label byte, then the red, green and
    blue 32x32 planes (row-major)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(len(labels), 3, 32, 32), dtype=np.uint8)
    records = np.concatenate([np.asarray(labels, np.uint8)[:, None], images.reshape(len(labels), -1)], 1)
    records.tofile(path)
    return images


@pytest.fixture()
def cifar_dir(tmp_path):
    images = [write_batch(tmp_path / name, [i % 10, (i + 3) % 10], seed=i)
              for i, name in enumerate(CIFAR10_TRAIN)]
    test = write_batch(tmp_path / CIFAR10_TEST, [7, 1, 4], seed=9)
    return tmp_path, np.concatenate(images), test


def test_cifar10_binary_reader_and_loader(cifar_dir):
    folder, train_images, test_images = cifar_dir
    x, y = read_cifar10_binary(folder / "data_batch_2.bin")
    np.testing.assert_array_equal(x, train_images[2:4])
    assert x.shape == (2, 3, 32, 32) and list(y) == [1, 4]
    task = cifar10(folder, seed=0)
    assert task.x_train.shape == (10, 3, 32, 32) and task.x_test.shape == (3, 3, 32, 32)
    assert list(task.y_test) == [7, 1, 4]
    # pixels / 255, then per-channel standardisation with the training statistics
    scaled = train_images / 255.0
    mean, std = scaled.mean((0, 2, 3), keepdims=True), scaled.std((0, 2, 3), keepdims=True)
    np.testing.assert_allclose(task.x_train.numpy(), (scaled - mean) / std, rtol=1e-12)
    np.testing.assert_allclose(task.x_test.numpy(), (test_images / 255.0 - mean) / std, rtol=1e-12)
    subset = image_task(f"cifar10:{folder}", 4, 2, seed=1, defaults=(0, 0))
    assert subset.x_train.shape[0] == 4 and subset.x_test.shape[0] == 2


def test_cifar10_bad_folders_are_refused(cifar_dir, tmp_path_factory):
    folder, _, _ = cifar_dir
    with pytest.raises(ValueError, match="train_size=11 exceeds the 10 images"):
        cifar10(folder, train_size=11)
    (folder / "data_batch_3.bin").unlink()
    with pytest.raises(ValueError, match="lacks data_batch_3.bin.*binary distribution"):
        cifar10(folder)
    with pytest.raises(ValueError, match="no such folder"):
        cifar10(folder / "nope")
    bad = tmp_path_factory.mktemp("bad") / "data_batch_1.bin"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="not a multiple of 3073"):
        read_cifar10_binary(bad)
    with pytest.raises(ValueError, match="--data must be 'digits', 'digits-shifted' or 'cifar10:DIR'"):
        image_task("mnist", None, None, seed=0, defaults=(10, 10))


@pytest.mark.slow
def test_quick_cntk_table_runs_end_to_end(tmp_path):
    out = tmp_path / "run"
    summary = experiments.run("cntk-table", out, seed=0, quick=True)
    with open(out / "table.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["depth"]) for r in rows] == [3, 4]
    for row in rows:
        # kernel regression interpolates 60 digits and classifies held-out ones far above chance
        assert float(row["CNTK-V"]) > 50 and float(row["CNTK-GAP"]) > 50
        # the CNNs learn too (chance is 10%; 40 test images: one standard error is ~5 points)
        assert float(row["CNN-V"]) > 25 and float(row["CNN-GAP"]) > 25
        assert float(row["paper CNTK-GAP"]) in (70.47, 75.93)
    report = (out / "report.md").read_text()
    assert "Which of the paper's orderings hold here" in report and "CNTK-GAP > CNTK-V" in report
    assert (out / "figures" / "accuracy_vs_depth.png").stat().st_size > 10_000
    stores = sorted(p.name for p in (out / "kernels").glob("*.zarr"))
    assert len(stores) == 8 and summary["test_accuracy_percent"][3]["CNTK-V"] == float(rows[0]["CNTK-V"])
    assert summary["below_chance"] == []
    with pytest.raises(ValueError, match="does not take --data"):
        experiments.run("kernel-gd", tmp_path / "other", quick=True, data="digits")


@pytest.mark.slow
def test_resnet_kernels_quick_run_and_cifar10_input(tmp_path, cifar_dir):
    """resnet-kernels: the four columns on the centred digits (`--data digits`; the default is the
    shifted digits), above chance, a figure and the exact architecture of every cell in metrics.csv
    (readable by the --arch grammar); and the same experiment on CIFAR-10 binary files (synthetic
    here), 32x32x3 images."""
    from ntklab.arch.spec import parse_architecture
    out = tmp_path / "run"
    summary = experiments.run("resnet-kernels", out, seed=0, quick=True, data="digits")
    row = summary["test_accuracy_percent"][5]
    assert set(row) == {"CNTK-V", "CNTK-GAP", "ResNet-GAP", "Myrtle"} and min(row.values()) > 40
    with open(out / "metrics.csv") as handle:
        metrics = list(csv.DictReader(handle))
    resnet = parse_architecture(next(m for m in metrics if m["column"] == "ResNet-GAP")["architecture"])
    assert "FanInSum()" in repr(resnet) and "AvgPool((2, 2), strides=(2, 2))" in repr(resnet)
    assert (out / "figures" / "accuracy.png").stat().st_size > 10_000
    folder, _, _ = cifar_dir
    cifar = experiments.run("resnet-kernels", tmp_path / "cifar", seed=0, quick=True,
                            data=f"cifar10:{folder}", train_size=6, test_size=3)
    assert set(cifar["test_accuracy_percent"][5]) == set(row)


# ---------------------------------------------------------------- issue 27: stores inside --out

TINY = dict(depths=(3,), train_size=12, test_size=6, channels=4, epochs=1, batch_size=12, tile_size=8)


@pytest.fixture()
def tiny():
    """cntk-table at a size of a second or two (settings changed through the scaffold, as
    `--set`): depth 3, 12 training digits, 6 test; returns the study module it calls."""
    from ntklab.lab.studies import cntk
    return cntk


def counted_tiles(monkeypatch):
    from ntklab.kernels import engine
    computed = []

    def counting(*args, **kwargs):
        computed.append(args[1].shape[0])
        return compute_tile(*args, **kwargs)
    compute_tile = engine.compute_tile
    monkeypatch.setattr(engine, "compute_tile", counting)
    return computed


def test_cntk_table_stores_live_inside_out_and_overwrite_with_new_sizes_recomputes(tiny, tmp_path,
                                                                                   monkeypatch):
    """Before: stores went to OUT-kernels/ beside OUT, and --overwrite with another training
    size failed after the first CNN had trained ("refusing to resume ... different
    configuration").  An --overwrite run with the same settings reuses every tile."""
    import torch
    from ntklab.lab.data import image_task
    from ntklab.kernels import KernelStore
    out = tmp_path / "run"
    experiments.run("cntk-table", out, seed=0, config=TINY)
    assert list(tmp_path.iterdir()) == [out]
    stores = sorted(p.name for p in (out / "kernels").glob("*.zarr"))
    assert stores == ["digits-seed0-CNTK-GAP-depth3-test.zarr", "digits-seed0-CNTK-GAP-depth3-train.zarr",
                      "digits-seed0-CNTK-V-depth3-test.zarr", "digits-seed0-CNTK-V-depth3-train.zarr"]
    first = experiments.run("cntk-table", out, seed=0, config=TINY, overwrite=True, train_size=16)
    assert list(tmp_path.iterdir()) == [out]
    computed = counted_tiles(monkeypatch)
    again = experiments.run("cntk-table", out, seed=0, config=TINY, overwrite=True, train_size=16)
    assert computed == [] and again["test_accuracy_percent"] == first["test_accuracy_percent"]
    task = image_task("digits", 16, None, seed=0, defaults=(12, 6))
    net = tiny.plain(3, "V", channels=4, n_classes=10)
    expected = net.kernel(task.x_train, get="ntk")
    k_train = KernelStore.open(out / "kernels" / "digits-seed0-CNTK-V-depth3-train.zarr").load("ntk")
    assert k_train.shape == (16, 16)
    torch.testing.assert_close(torch.from_numpy(k_train), expected, rtol=1e-12, atol=0)
    assert "`kernels/`" in (out / "report.md").read_text()


def test_an_interrupted_cntk_table_run_resumes_its_stores_inside_out(tiny, tmp_path, monkeypatch):
    """A run stopped after the CNTK-V kernels (Ctrl-C in the next CNN) leaves no folder at OUT
    but keeps its stores; the rerun computes only the CNTK-GAP tiles, and its table equals
    that of an uninterrupted run."""
    import json
    real_cnn = tiny.cnn_accuracy
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_cnn(*args, **kwargs)
    monkeypatch.setattr(tiny, "cnn_accuracy", interrupted)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        experiments.run("cntk-table", out, seed=0, config=TINY)
    (staged,) = tmp_path.iterdir()
    assert staged.name.startswith(".run.partial-") and [p.name for p in staged.iterdir()] == ["kernels"]
    monkeypatch.setattr(tiny, "cnn_accuracy", real_cnn)
    computed = counted_tiles(monkeypatch)
    resumed = experiments.run("cntk-table", out, seed=0, config=TINY)
    # a 12 x 12 training kernel in tiles of 8: 3 upper tiles; a 6 x 12 test kernel: 2 tiles
    assert len(computed) == 5
    assert list(tmp_path.iterdir()) == [out]
    computed.clear()
    fresh = experiments.run("cntk-table", tmp_path / "fresh", seed=0, config=TINY)
    assert len(computed) == 10
    assert resumed["test_accuracy_percent"] == fresh["test_accuracy_percent"]
    assert json.loads((out / "kernels" / "key.json").read_text())["train_size"] == 12


def test_shifted_digits_put_each_digit_somewhere_on_the_canvas():
    """digits-shifted: 12x12 canvases whose labels are the digits' (same split as `digits`), the digits'
    top-left ink at many different offsets; a canvas smaller than a digit is refused."""
    from ntklab.lab.data import digits_images, digits_shifted
    shifted = digits_shifted(30, 10, seed=3, noise=0.0)
    plain = digits_images(30, 10, seed=3)
    assert shifted.x_train.shape == (30, 1, 12, 12) and torch.equal(shifted.y_train, plain.y_train)
    raw = shifted.x_train[:, 0] - shifted.x_train[:, 0].amin(dim=(1, 2), keepdim=True)
    corners = {tuple(int(v) for v in (raw[i] > 1e-9).nonzero().amin(0)) for i in range(30)}
    assert len(corners) > 5
    with pytest.raises(ValueError, match="canvas must be at least"):
        digits_shifted(5, 5, seed=0, canvas=6)


def test_cntk_accuracy_by_conjugate_gradients_from_the_stores_equals_the_cholesky_solve(tmp_path):
    """solver="cg" (train store streamed into CG, test store streamed into the prediction): predictions equal
    the dense Cholesky solve at the same ridge to 1e-6; a loose CG (rtol 0.5) is off by more (negative
    control); the accuracies of the two solvers agree."""
    from ntklab.lab.studies import cntk as C
    task = image_task("digits", 150, 40, seed=0, defaults=(150, 40))
    arch = C.plain(3, "V", channels=8, n_classes=10)
    common = dict(tile_size=64, scheduler=None, workers=None, device="cpu")
    dense, _ = C.cntk_accuracy(task, arch, tmp_path, "dense", **common)
    cg, cg_details = C.cntk_accuracy(task, arch, tmp_path, "cg", solver="cg", **common)
    assert cg == dense and cg_details["cg_residual"] <= 1e-8 and cg_details["cg_iterations"] > 1
    train, test = (nk.kernels.KernelStore.open(tmp_path / f"cg-{part}.zarr") for part in ("train", "test"))
    y = C.one_hot(task.y_train, task.n_classes)
    k_train, k_test = (torch.from_numpy(s.load("ntk")) for s in (train, test))
    expected = k_test @ nk.predict.solve(k_train, y, diag_reg=1e-6)
    predicted, fitted, _ = C.cg_predictions(train, test, y, diag_reg=1e-6)
    np.testing.assert_allclose(predicted, expected, rtol=0, atol=1e-6 * float(expected.abs().max()))
    loose, _, _ = C.cg_predictions(train, test, y, diag_reg=1e-6, rtol=0.5)
    assert float((loose - expected).abs().max()) > 1e-3 * float(expected.abs().max())
