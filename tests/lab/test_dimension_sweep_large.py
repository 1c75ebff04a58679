"""dimension-sweep's large points: NTK ridge regression solved by conjugate gradients streaming a float32
kernel store (`studies.sphere.kernel_ridge(store=...)`). Oracle: the dense Cholesky solve on the same
data (same seed), whose learned fractions the stored solve must reproduce."""
import dataclasses

import numpy as np
import pytest
import torch

from ntklab.lab.experiments import dimension_sweep as D
from ntklab.lab.report import RunFolder
from ntklab.lab.studies import representation as R
from ntklab.lab.studies import sphere as S


def test_kernel_ridge_from_a_store_equals_the_cholesky_solve(tmp_path):
    """Predictions within 1e-4 (float32 store, CG to 1e-6); the store is removed; a loose CG (rtol 0.3)
    is visibly off (negative control)."""
    target = S.single_index_target(10, (2, 3), seed=1)
    x, y = S.sample(target, 1200, noise=0.1, seed=2)
    x_test = S.sphere_points(300, 10, generator=torch.Generator().manual_seed(3))
    exact, delta = S.kernel_ridge(R.ntk_architecture(), x, y, ridge=1e-3)
    stored, stored_delta = S.kernel_ridge(R.ntk_architecture(), x, y, ridge=1e-3, store=tmp_path / "k.zarr",
                                          centers=300)
    assert not (tmp_path / "k.zarr").exists()
    assert stored_delta == pytest.approx(delta, rel=1e-6)
    expected = exact(x_test)
    assert float((stored(x_test) - expected).norm() / expected.norm()) < 1e-4
    loose, _ = S.kernel_ridge(R.ntk_architecture(), x, y, ridge=1e-3, store=tmp_path / "l.zarr", centers=10,
                              rtol=0.3)
    assert float((loose(x_test) - expected).norm() / expected.norm()) > 1e-3


def test_a_large_point_measures_the_fractions_the_dense_solve_measures(tmp_path):
    cfg = dataclasses.replace(D.Config.quick(), seeds=1, large_centers=200)
    folder = RunFolder(tmp_path / "run")
    dense = D.measure(cfg, "NTK regression", 8, 700, 5)
    large = D.measure(cfg, D.LARGE, 8, 700, 5, solver=D._ntk_from_store(folder), seeds=1)
    assert large["method"] == D.LARGE
    for key in ("fraction_2", "fraction_3", "loss"):
        np.testing.assert_allclose(large[key], dense[key], rtol=1e-4)
