"""Kernel regression without the n x n matrix: CG (dense and streamed from a store), the Nystrom
preconditioner, Nystrom regression on centers. Oracles: torch.linalg.solve on the dense matrix,
the store's loaded matrix, and exact ridge regression (all points as centers)."""
import numpy as np
import pytest
import torch

import ntklab as nk
from ntklab.kernels import StoredKernel, compute_kernel
from ntklab.predict import NystromPreconditioner, conjugate_gradients, nystrom_regression

NET = nk.mlp(3, 16, W_std=1.5, b_std=0.1)


@pytest.fixture(scope="module")
def problem():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(120, 5, generator=generator, dtype=torch.float64)
    y = torch.stack([torch.sin(x[:, 0]), x[:, 1] * x[:, 2]], 1)
    return x, y, NET.kernel(x, get="ntk")


def ridge(k, y, diag_reg):
    return torch.linalg.solve(k + diag_reg * k.diagonal().mean() * torch.eye(len(k), dtype=k.dtype), y)


@pytest.mark.parametrize("preconditioner", [None, "nystrom"])
def test_cg_solves_the_ridge_system_of_every_column(problem, preconditioner):
    x, y, k = problem
    result = conjugate_gradients(k, y, diag_reg=1e-4, preconditioner=preconditioner, rank=40, rtol=1e-10,
                                 progress=False)
    assert result.converged and result.relative_residual.max() <= 1e-10
    np.testing.assert_allclose(result.solution, ridge(k, y, 1e-4), rtol=1e-6, atol=1e-8)
    vector = conjugate_gradients(k, y[:, 0], diag_reg=1e-4, preconditioner=preconditioner, rank=40,
                                 rtol=1e-10, progress=False)
    assert vector.solution.shape == (120,)


def test_the_nystrom_preconditioner_bounds_the_iterations_by_the_spectrum_above_lambda(problem):
    """Frangella-Tropp-Udell: with lambda at the 20th eigenvalue and rank 60 (Lambda_60 < lambda), the
    preconditioned system's condition number is O(1), so PCG converges to 1e-8 in few iterations (<= 30,
    sqrt(8) ln(2e8) / 2 ~ 27 for kappa <= 8); plain CG (kappa = Lambda_1 / lambda) needs at least twice as many."""
    x, y, k = problem
    eigenvalues = torch.linalg.eigvalsh(k).flip(0)
    diag_reg = float(eigenvalues[19]) / float(k.diagonal().mean())
    assert eigenvalues[59] < eigenvalues[19]
    plain = conjugate_gradients(k, y, diag_reg=diag_reg, preconditioner=None, rtol=1e-8, progress=False)
    nystrom = conjugate_gradients(k, y, diag_reg=diag_reg, rank=60, rtol=1e-8, progress=False)
    assert nystrom.converged and plain.converged
    assert nystrom.iterations <= 30 and 2 * nystrom.iterations <= plain.iterations, (nystrom.iterations,
                                                                                      plain.iterations)
    np.testing.assert_allclose(nystrom.solution, ridge(k, y, diag_reg), rtol=1e-6, atol=1e-8)


def test_the_nystrom_approximation_recovers_a_low_rank_kernel():
    """For K of rank 5 the rank-10 randomized Nystrom approximation U diag(L) U^T is K itself."""
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(80, 5, generator=generator, dtype=torch.float64)
    k = features @ features.T
    p = NystromPreconditioner(nk.predict.iterative.as_operator(k), rank=10, shift=1e-3)
    np.testing.assert_allclose(p.u @ torch.diag(p.eigenvalues) @ p.u.T, k, atol=1e-8)


def test_the_centers_approximation_is_the_kernel_with_every_point_a_center_and_exact_at_low_rank(problem):
    """Column Nystrom: with all n points as centers K_nm K_mm^+ K_mn = K; for K of rank 5 (features
    phi(x) = x W, a callable kernel) 8 centers recover K; 30 of 120 points of the full-rank NTK do not
    (negative control)."""
    x, _, k = problem
    full = NystromPreconditioner.from_centers(NET, x, centers=len(x), block_size=50)
    np.testing.assert_allclose(full.u @ torch.diag(full.eigenvalues) @ full.u.T, k, atol=1e-9 * float(k.max()))
    np.testing.assert_allclose(full.u.T @ full.u, torch.eye(full.rank, dtype=k.dtype), atol=1e-9)
    w = torch.randn(5, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    low = NystromPreconditioner.from_centers(lambda a, b: (a @ w) @ (b @ w).T, x, centers=8)
    features = x @ w
    assert low.rank == 5
    np.testing.assert_allclose(low.u @ torch.diag(low.eigenvalues) @ low.u.T, features @ features.T, atol=1e-9)
    few = NystromPreconditioner.from_centers(NET, x, centers=30)
    assert float((few.u @ torch.diag(few.eigenvalues) @ few.u.T - k).abs().max()) > 1e-3 * float(k.max())


def test_the_centers_approximation_is_orthonormal_on_a_fast_decaying_spectrum(monkeypatch):
    """A Gaussian kernel's Nystrom eigenvalues span ~16 decades: U from B^T B alone is off orthonormality by
    far more than 1e-10 (negative control: the second pass switched off), the second pass brings it to
    1e-10 with U diag(Lambda) U^T still K_nm K_mm^+ K_mn (computed densely) to 1e-9."""
    from ntklab.predict import nystrom
    x = torch.randn(500, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def gaussian(a, b):
        return torch.exp(-torch.cdist(a, b).square() / 2)
    p = NystromPreconditioner.from_centers(gaussian, x, centers=200, seed=1)
    eye = torch.eye(p.rank, dtype=torch.float64)
    assert float((p.u.T @ p.u - eye).abs().max()) <= 1e-10
    index, centers = nystrom.draw_centers(x, 200, 1)
    w, q = torch.linalg.eigh(gaussian(centers, centers))
    kept = nystrom._kept(w, len(w))
    k_nm = gaussian(x, centers) @ q[:, kept]
    dense = k_nm @ torch.diag(1 / w[kept]) @ k_nm.T
    np.testing.assert_allclose(p.u @ torch.diag(p.eigenvalues) @ p.u.T, dense, atol=1e-9)
    monkeypatch.setattr(nystrom, "ORTHONORMALITY", float("inf"))
    first = NystromPreconditioner.from_centers(gaussian, x, centers=200, seed=1)
    assert float((first.u.T @ first.u - torch.eye(first.rank, dtype=torch.float64)).abs().max()) > 1e-8


def test_cg_with_the_centers_preconditioner_solves_the_system_in_few_iterations(problem):
    """With lambda at the 20th eigenvalue, 80 of 120 points as centers capture the spectrum above it:
    PCG reaches 1e-10 in at most half the iterations of plain CG and equals the dense ridge solution."""
    x, y, k = problem
    diag_reg = float(torch.linalg.eigvalsh(k).flip(0)[19]) / float(k.diagonal().mean())
    centers = NystromPreconditioner.from_centers(NET, x, centers=80)
    preconditioned = conjugate_gradients(k, y, diag_reg=diag_reg, preconditioner=centers, rtol=1e-10,
                                         progress=False)
    plain = conjugate_gradients(k, y, diag_reg=diag_reg, preconditioner=None, rtol=1e-10, progress=False)
    assert preconditioned.converged and plain.converged
    assert 2 * preconditioned.iterations <= plain.iterations, (preconditioned.iterations, plain.iterations)
    np.testing.assert_allclose(preconditioned.solution, ridge(k, y, diag_reg), rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="approximates a kernel of 60 samples, this system has 120"):
        conjugate_gradients(k, y, preconditioner=NystromPreconditioner.from_centers(NET, x[:60], centers=10))
    with pytest.raises(ValueError, match="centers=121 exceeds the 120 training samples"):
        NystromPreconditioner.from_centers(NET, x, centers=121)


def test_cg_refuses_an_indefinite_kernel_and_warns_when_it_stops_early(problem):
    x, y, k = problem
    indefinite = k - 2 * float(torch.linalg.eigvalsh(k)[60]) * torch.eye(len(k), dtype=k.dtype)
    with pytest.raises(ValueError, match=r"not positive definite.*give diag_reg > 0"):
        conjugate_gradients(indefinite, y, preconditioner=None, progress=False)
    with pytest.warns(RuntimeWarning, match=r"stopped after 3 iterations with relative residual"):
        result = conjugate_gradients(k, y, diag_reg=1e-6, preconditioner=None, max_iterations=3, progress=False)
    assert not result.converged and result.iterations == 3


@pytest.fixture(scope="module")
def stored(problem, tmp_path_factory):
    x, _, _ = problem
    return compute_kernel(NET, x, store=tmp_path_factory.mktemp("store") / "k.zarr", tile_size=32,
                          progress=False)


def test_products_streamed_from_the_store_equal_the_loaded_matrix(stored):
    operator = StoredKernel(stored, "ntk")
    matrix = torch.as_tensor(stored.load("ntk"))
    v = torch.randn(120, 3, dtype=torch.float64)
    np.testing.assert_allclose(operator.matmul(v), matrix @ v, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(operator.diagonal(), matrix.diagonal(), rtol=0, atol=0)
    assert operator.passes == 1


def test_cg_from_the_store_equals_the_dense_solve(stored, problem):
    x, y, k = problem
    result = conjugate_gradients(StoredKernel(stored, "nngp"), y, diag_reg=1e-3, rank=30, rtol=1e-10,
                                 progress=False)
    nngp = torch.as_tensor(stored.load("nngp"))
    np.testing.assert_allclose(result.solution, ridge(nngp, y, 1e-3), rtol=1e-6, atol=1e-8)


def test_a_damaged_or_foreign_store_is_refused(stored, tmp_path):
    x = torch.randn(10, 5, dtype=torch.float64)
    rectangular = compute_kernel(NET, x, x[:4], store=tmp_path / "r.zarr", get="nngp", tile_size=4,
                                 progress=False)
    with pytest.raises(ValueError, match="square train-train kernel"):
        StoredKernel(rectangular)
    with pytest.raises(ValueError, match=r"holds \['nngp'\], not 'ntk'"):
        StoredKernel(compute_kernel(NET, x, store=tmp_path / "s.zarr", get="nngp", progress=False), "ntk")


def test_each_tile_is_checked_at_its_first_read_and_always_with_verify_always(problem, tmp_path):
    """A tile altered before the first product is refused; one altered after it goes unnoticed with the
    default verify="once" (its checksum was checked at the first read) and is refused with "always"."""
    x, _, _ = problem
    store = compute_kernel(NET, x, store=tmp_path / "k.zarr", tile_size=32, get="ntk", progress=False)
    v = torch.randn(120, 1, dtype=torch.float64)
    array = store._array("ntk", mode="r+")
    original = np.array(array[32:64, 64:96])
    array[32:64, 64:96] = 2 * original
    with pytest.raises(ValueError, match=r"1 damaged tile\(s\) \(1_2"):
        StoredKernel(store, "ntk").matmul(v)
    array[32:64, 64:96] = original
    once, always = StoredKernel(store, "ntk"), StoredKernel(store, "ntk", verify="always")
    expected = once.matmul(v)
    np.testing.assert_allclose(always.matmul(v), expected, rtol=0, atol=0)
    array[32:64, 64:96] = 2 * original
    assert float((once.matmul(v) - expected).abs().max()) > 1e-3     # not noticed: checked once
    with pytest.raises(ValueError, match="damaged tile"):
        always.matmul(v)
    with pytest.raises(ValueError, match="verify must be 'once'"):
        StoredKernel(store, "ntk", verify=False)


def test_nystrom_regression_with_every_point_a_center_is_exact_ridge_regression(problem):
    x, y, k = problem
    x_test = torch.randn(7, 5, dtype=torch.float64)
    model = nystrom_regression(NET, x, y, centers=120, diag_reg=1e-3, block_size=50)
    exact = NET.kernel(x_test, x, get="ntk") @ ridge(k, y, 1e-3)
    np.testing.assert_allclose(model.predict(x_test), exact, rtol=1e-6, atol=1e-8)


def test_nystrom_regression_approaches_exact_ridge_as_centers_grow(problem):
    """Nystrom on m centers moves to exact ridge as m grows (m = n is exact, test above); 5 centers are
    detectably off (a negative control for the comparison)."""
    x, y, k = problem
    x_test = torch.randn(200, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    target = NET.kernel(x_test, x, get="ntk") @ ridge(k, y, 1e-2)
    gaps = [float((nystrom_regression(NET, x, y, centers=m, diag_reg=1e-2).predict(x_test) - target).norm()
                  / target.norm()) for m in (5, 40, 100)]
    assert gaps[0] > 0.2 and gaps[2] < gaps[1] < gaps[0], gaps


def test_nystrom_regression_refuses_more_centers_than_samples(problem):
    x, y, _ = problem
    with pytest.raises(ValueError, match="centers=121 exceeds the 120 training samples"):
        nystrom_regression(NET, x, y, centers=121)


def test_cg_reports_the_true_residual_below_the_rounding_floor():
    """An rtol far below float32's attainable accuracy (eps x condition number): the recursion's residual
    reaches it, the true residual ||y - (K + lambda I) alpha|| does not; CG says so instead of claiming
    convergence (it did), and the reported residual is the true one (numpy in float64)."""
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(400, 5, generator=generator)
    k = NET.kernel(x, get="ntk")   # float32
    y = torch.sin(x[:, :1])
    with pytest.warns(RuntimeWarning, match="recursively updated residual reached rtol but the true one did not"):
        result = conjugate_gradients(k, y, diag_reg=1e-4, preconditioner=None, rtol=1e-12, progress=False)
    assert not result.converged
    k64, alpha, y64 = k.double().numpy(), result.solution.double().numpy(), y.double().numpy()
    true = np.linalg.norm(y64 - k64 @ alpha - 1e-4 * k64.diagonal().mean() * alpha) / np.linalg.norm(y64)
    np.testing.assert_allclose(float(result.relative_residual), true, rtol=0.05)


def test_cg_stops_when_the_residual_stops_improving():
    """A preconditioner that is not symmetric (I + a random antisymmetric part) breaks CG's descent: the
    residual stops improving and CG stops 50 iterations after its last 10 % improvement instead of running
    to max_iterations = 3000 (a negative control: the symmetric I converges)."""
    x = torch.randn(300, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    k, y = NET.kernel(x, get="ntk"), torch.sin(x[:, :1])
    random = torch.randn(300, 300, generator=torch.Generator().manual_seed(1), dtype=torch.float64) / 300 ** 0.5
    skewed = torch.eye(300, dtype=torch.float64) + (random - random.T) / 2
    with pytest.warns(RuntimeWarning, match="no progress in 50 iterations"):
        result = conjugate_gradients(k, y, diag_reg=1e-4, preconditioner=lambda r: skewed @ r, rtol=1e-10,
                                     max_iterations=3000, progress=False)
    assert result.iterations < 3000 and not result.converged
    assert conjugate_gradients(k, y, diag_reg=1e-4, preconditioner=lambda r: r, rtol=1e-10, max_iterations=3000,
                               progress=False).converged


def test_nystrom_regression_solves_in_float64_for_float32_inputs(problem):
    """The normal equations square the condition number: in float32 they returned predictions 0.6 off on
    targets of size 1 (all points as centers, where the answer is exact ridge regression)."""
    x, y, k = problem
    model = nystrom_regression(NET, x.float(), y.float(), centers=120, diag_reg=1e-3)
    exact = NET.kernel(x.float(), get="ntk").double() @ ridge(NET.kernel(x.float(), get="ntk").double(), y, 1e-3)
    prediction = model.predict(x.float())
    assert prediction.dtype == torch.float32
    np.testing.assert_allclose(prediction.double(), exact, atol=1e-3)


def test_nystrom_regression_takes_numpy_kernel_functions(problem):
    """A kernel function returning numpy (e.g. scikit-learn's rbf_kernel) or float32: converted to float64."""
    x, y, _ = problem
    rbf = lambda a, b: np.exp(-((np.asarray(a)[:, None] - np.asarray(b)[None]) ** 2).sum(-1) / 4)  # noqa: E731
    model = nystrom_regression(rbf, x, y, centers=120, diag_reg=1e-3)
    k = torch.as_tensor(rbf(x, x))
    np.testing.assert_allclose(model.predict(x[:5]), k[:5] @ ridge(k, y, 1e-3), rtol=1e-6, atol=1e-8)


def test_cg_on_a_singular_kernel_without_ridge_solves_a_consistent_system():
    """K = Z Z^T of rank 2, y = K v, diag_reg = 0, preconditioner rank 10 > rank K: the preconditioner kept
    zero eigenvalues and returned NaN (0/0); now CG converges to a solution of K alpha = y."""
    z = torch.randn(40, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    k = z @ z.T
    y = k @ torch.randn(40, 1, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    result = conjugate_gradients(k, y, rank=10, rtol=1e-10, progress=False)
    assert result.converged
    np.testing.assert_allclose(k @ result.solution, y, atol=1e-8)


def test_cg_default_iterations_allow_more_than_n():
    """In floating point CG may need more than n iterations (23 points, condition ~650: 26-33 needed)."""
    x = torch.randn(23, 3, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    k = NET.kernel(x, get="nngp")
    result = conjugate_gradients(k, torch.sin(x[:, :1]), diag_reg=1e-4, preconditioner=None, rtol=1e-10,
                                 progress=False)
    assert result.converged


def test_weighted_nystrom_regression_with_every_point_a_center_is_weighted_ridge(problem):
    """alpha = (K W K + lambda K)^-1 K W y with all points as centers gives K (K + lambda W^-1)^-1 y, lambda
    relative to the weighted mean diagonal (the estimators' convention); the dense solve is the oracle."""
    x, y, k = problem
    weights = torch.linspace(0.2, 3.0, len(x), dtype=torch.float64)
    model = nystrom_regression(NET, x, y, centers=len(x), diag_reg=1e-3, sample_weight=weights)
    shift = 1e-3 * float((weights * k.diagonal()).sum() / weights.sum())
    expected = k @ torch.linalg.solve(k + shift * torch.diag(1 / weights), y)
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-6, atol=1e-8)
    unweighted = nystrom_regression(NET, x, y, centers=len(x), diag_reg=1e-3).predict(x)
    assert float((unweighted - expected).norm() / expected.norm()) > 1e-3
    with pytest.raises(ValueError, match="sample_weight"):
        nystrom_regression(NET, x, y, centers=10, sample_weight=-weights)


def test_products_spread_over_processes_equal_the_streamed_ones(stored):
    """scheduler="processes": one task per tile in 2 worker processes, partial products added in tile
    order, equal to the in-process product to rounding (1e-13); a bad scheduler is refused."""
    v = torch.randn(120, 2, dtype=torch.float64)
    with StoredKernel(stored, "ntk", scheduler="processes", workers=2) as spread:
        np.testing.assert_allclose(spread.matmul(v), StoredKernel(stored, "ntk").matmul(v), rtol=1e-13, atol=1e-13)
        assert spread.passes == 1
    with pytest.raises(ValueError, match="scheduler must be"):
        StoredKernel(stored, "ntk", scheduler="threads")


@pytest.mark.slow
def test_cg_on_a_dask_cluster_survives_a_killed_worker(tmp_path):
    """The PCG solve from a store on a local Dask cluster of 2 worker processes, one worker killed
    (SIGKILL) while tiles are in flight in the middle of the solve: the scheduler recomputes its tiles
    elsewhere and the solve finishes with exactly the answer of the same solve without the kill (the
    partial products are added in tile order, whoever computed them); the worker's process id changed
    (its nanny restarted it), so a worker really was lost. Against the in-process solve: 1e-8 of the
    largest coefficient (the workers' BLAS may sum in another order: products agree to 1e-13,
    amplified by the condition number of K + lambda I)."""
    distributed = pytest.importorskip("distributed")
    import os
    import signal
    import threading
    import time
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(240, 5, generator=generator, dtype=torch.float64)
    y = torch.sin(x[:, :1] * 2)
    store = compute_kernel(NET, x, store=tmp_path / "k.zarr", get="ntk", tile_size=40, progress=False)
    reference = conjugate_gradients(StoredKernel(store, "ntk"), y, diag_reg=1e-3, rtol=1e-10, progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        undisturbed = conjugate_gradients(StoredKernel(store, "ntk", scheduler=client), y, diag_reg=1e-3,
                                          rtol=1e-10, progress=False)
        before = client.run(os.getpid)
        operator = StoredKernel(store, "ntk", scheduler=client)
        killed: list[str] = []

        def kill_one_worker_mid_product():
            deadline = time.monotonic() + 120
            while not killed and time.monotonic() < deadline:
                busy = [worker for worker, tasks in client.processing().items() if tasks]
                if operator.passes >= 2 and busy:
                    os.kill(before[busy[0]], signal.SIGKILL)
                    killed.append(busy[0])
                time.sleep(0.005)
        watcher = threading.Thread(target=kill_one_worker_mid_product)
        watcher.start()
        result = conjugate_gradients(operator, y, diag_reg=1e-3, rtol=1e-10, progress=False)
        watcher.join()
        client.wait_for_workers(2, timeout=60)
        after = client.run(os.getpid)
    assert killed, "no worker was killed: the solve ended before the watcher saw tiles in flight"
    assert set(before.values()) != set(after.values())
    assert result.iterations == undisturbed.iterations == reference.iterations
    np.testing.assert_array_equal(result.solution, undisturbed.solution)
    difference = (result.solution - reference.solution).abs().max()
    assert difference <= 1e-8 * reference.solution.abs().max()


def test_a_store_tells_the_inputs_it_was_computed_from(stored, problem):
    """`KernelStore.computed_from`: the same inputs (also as a numpy array, converted as compute_kernel
    converts them) are recognized; reordered or other inputs, or a second input set, are not."""
    x, _, _ = problem
    assert stored.computed_from(x) and stored.computed_from(x.numpy())
    assert not stored.computed_from(x.flip(0)) and not stored.computed_from(x[:-1])
    assert not stored.computed_from(x, x) and not stored.computed_from(torch.randn(120, 3))
    assert stored.operator("ntk").shape == (120, 120)


def test_new_stores_are_uncompressed_and_compressed_ones_read_the_same(problem, tmp_path, monkeypatch):
    """Chunks are written raw (zstd decoding dominated a pass); a store laid out compressed, as earlier
    versions wrote it, gives the same products bit for bit."""
    from ntklab.kernels import engine
    x, _, _ = problem
    raw = compute_kernel(NET, x, store=tmp_path / "raw.zarr", tile_size=32, get="ntk", progress=False)
    assert raw._array("ntk").compressors == ()

    def compressed_layout(folder, config):
        import zarr
        group = zarr.open_group(store=str(folder), mode="w")
        for name in config["get"]:
            group.create_array(name, shape=tuple(config["shape"]), dtype=np.dtype(config["dtype"]),
                               chunks=(config["tile_size"],) * 2, fill_value=np.nan)
    monkeypatch.setattr(engine, "_layout", compressed_layout)
    old = compute_kernel(NET, x, store=tmp_path / "old.zarr", tile_size=32, get="ntk", progress=False)
    assert old._array("ntk").compressors != ()
    v = torch.randn(120, 2, dtype=torch.float64)
    assert torch.equal(StoredKernel(old, "ntk").matmul(v), StoredKernel(raw, "ntk").matmul(v))
