"""cntk-table: the CIFAR-10 binary loader (on synthetic files in that format) and a
quick end-to-end run of the experiment."""
import csv

import numpy as np
import pytest

from ntklab import experiments
from ntklab.data import CIFAR10_TEST, CIFAR10_TRAIN, cifar10, image_task, read_cifar10_binary


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
    with pytest.raises(ValueError, match="--data must be 'digits' or 'cifar10:DIR'"):
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
    stores = sorted(p.name for p in (tmp_path / "run-kernels").iterdir())
    assert len(stores) == 8 and summary["test_accuracy_percent"][3]["CNTK-V"] == float(rows[0]["CNTK-V"])
    assert summary["below_chance"] == []
    with pytest.raises(ValueError, match="does not take --data"):
        experiments.run("kernel-gd", tmp_path / "other", quick=True, data="digits")


@pytest.mark.slow
def test_resnet_kernels_quick_run_and_cifar10_input(tmp_path, cifar_dir):
    """resnet-kernels: the four columns on digits, above chance, a figure and the exact
    architecture of every cell in metrics.csv (readable by the --arch grammar); and the same
    experiment on CIFAR-10 binary files (synthetic here), 32x32x3 images."""
    from ntklab.arch.spec import parse_architecture
    out = tmp_path / "run"
    summary = experiments.run("resnet-kernels", out, seed=0, quick=True)
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
