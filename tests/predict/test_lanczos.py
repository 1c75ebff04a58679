"""f(A) b by the Lanczos process (`nk.predict.lanczos`) and the ensemble predictions built on it
(`gradient_descent_mse_ensemble(solver="lanczos")`). Oracles: f applied to the eigendecomposition of
the dense matrix (torch.linalg.eigh), and the ensemble's own eigendecomposition path."""
import numpy as np
import pytest
import torch

import ntklab as nk
from ntklab.kernels import compute_kernel
from ntklab.predict.lanczos import lanczos_apply
from ntklab.predict.iterative import as_operator

NET = nk.mlp(2, 64, W_std=1.5, b_std=0.1)


@pytest.fixture(scope="module")
def data():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(150, 4, generator=generator, dtype=torch.float64)
    y = torch.stack([torch.sin(x[:, 0]), x[:, 1] * x[:, 2]], 1)
    x_test = torch.randn(30, 4, generator=generator, dtype=torch.float64)
    return x, y, x_test


def dense_function(k, shift, function, b):
    evals, evecs = torch.linalg.eigh(k + shift * torch.eye(len(k), dtype=k.dtype))
    return torch.einsum("ij,fj,kj,kc->fic", evecs, function(evals), evecs, b)


def test_lanczos_applies_a_function_of_the_kernel_as_its_eigendecomposition_does(data):
    """exp(-tau A) b and A^-1 b (two functions at once) for every column equal f applied to the
    dense eigendecomposition to 1e-9; three steps are far off and warn (negative control)."""
    x, y, _ = data
    k = NET.kernel(x, get="ntk")
    shift = 1e-3 * float(k.diagonal().mean())

    def function(theta):
        return torch.stack([torch.exp(-0.5 * theta), 1 / theta])
    out, steps = lanczos_apply(as_operator(k), y, function, shift=shift, progress=False)
    expected = dense_function(k, shift, function, y)
    np.testing.assert_allclose(out, expected, atol=1e-9 * float(expected.abs().max()))
    assert steps < len(x)
    with pytest.warns(RuntimeWarning, match="Lanczos stopped after 3 steps"):
        rough, _ = lanczos_apply(as_operator(k), y, function, shift=shift, max_iterations=3, progress=False)
    assert float((rough - expected).abs().max()) > 1e-3 * float(expected.abs().max())


def test_lanczos_is_exact_on_an_invariant_krylov_space():
    """A of rank 3 plus the identity: the Krylov space of any b has dimension <= 4, so f(A) b is exact
    after 4 steps (the fourth beta is at rounding's level, 1e-12, and the process ends by the fifth
    step at the latest), and a zero column gives zero."""
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(40, 3, generator=generator, dtype=torch.float64)
    k = features @ features.T
    b = torch.cat([torch.randn(40, 1, generator=generator, dtype=torch.float64), torch.zeros(40, 1,
                                                                                          dtype=torch.float64)], 1)
    out, steps = lanczos_apply(as_operator(k), b, lambda t: torch.sqrt(t)[None], shift=1.0, progress=False)
    assert steps <= 5
    np.testing.assert_allclose(out, dense_function(k, 1.0, lambda t: torch.sqrt(t)[None], b), atol=1e-12)


@pytest.mark.parametrize("diag_reg", [0.0, 1e-4])
def test_ensemble_means_by_lanczos_equal_the_eigendecomposition(data, diag_reg):
    x, y, x_test = data
    times = [0.5, 10.0, 1e3, 1e6]
    exact = nk.predict.gradient_descent_mse_ensemble(NET, x, y, diag_reg=diag_reg, learning_rate=2.0)
    lanczos = nk.predict.gradient_descent_mse_ensemble(NET, x, y, diag_reg=diag_reg, learning_rate=2.0,
                                                       solver="lanczos", progress=False)
    for t in (None, times):
        for x_eval in (x_test, None):
            for g in ("ntk", "nngp"):
                expected = exact(t, x_eval, get=g)
                np.testing.assert_allclose(lanczos(t, x_eval, get=g), expected,
                                           atol=1e-8 * float(expected.abs().max()))


def test_ensemble_means_by_lanczos_from_a_store(data, tmp_path):
    """The train-train kernels streamed from a store give the same means; a store of other inputs or of
    another architecture, and the covariance, are refused."""
    x, y, x_test = data
    store = compute_kernel(NET, x, store=tmp_path / "k.zarr", get=("nngp", "ntk"), tile_size=64, progress=False)
    exact = nk.predict.gradient_descent_mse_ensemble(NET, x, y, diag_reg=1e-4)
    streamed = nk.predict.gradient_descent_mse_ensemble(NET, x, y, diag_reg=1e-4, solver="lanczos", store=store,
                                                        progress=False)
    both = streamed([1.0, 100.0], x_test, get=("nngp", "ntk"))
    for g in ("nngp", "ntk"):
        expected = exact([1.0, 100.0], x_test, get=g)
        np.testing.assert_allclose(both[g], expected, atol=1e-8 * float(expected.abs().max()))
    with pytest.raises(ValueError, match="does not hold the kernels of x_train"):
        nk.predict.gradient_descent_mse_ensemble(NET, x.flip(0), y, solver="lanczos", store=store)
    with pytest.raises(ValueError, match="another architecture"):
        nk.predict.gradient_descent_mse_ensemble(nk.mlp(3, 64), x, y, solver="lanczos", store=store)
    with pytest.raises(ValueError, match="compute_cov=True needs solver='eigh'"):
        streamed(1.0, x_test, get="ntk", compute_cov=True)
    with pytest.raises(ValueError, match="store = ... are read by solver='lanczos' only"):
        nk.predict.gradient_descent_mse_ensemble(NET, x, y, store=store)
    with pytest.raises(ValueError, match="solver must be 'eigh' or 'lanczos'"):
        nk.predict.gradient_descent_mse_ensemble(NET, x, y, solver="cg")


def test_solvers_refuse_what_does_not_fit_in_memory_with_the_memory_needed(data, monkeypatch):
    """With the available memory faked to 64 KiB: the centers preconditioner (n x m), Nystrom regression
    (m x m), random-feature regression (D x D) and the Lanczos basis are refused naming the GiB and the fix."""
    from ntklab._core import validation
    from ntklab.predict import lanczos
    x, y, _ = data
    k = NET.kernel(x, get="ntk")
    small = lambda device: 2 ** 16   # noqa: E731
    monkeypatch.setattr(validation, "available_memory", small)
    monkeypatch.setattr(lanczos, "available_memory", small)
    with pytest.raises(ValueError, match="needs .* GiB .* give fewer centers"):
        nk.predict.NystromPreconditioner.from_centers(NET, torch.randn(4000, 4, dtype=torch.float64), centers=100)
    with pytest.raises(ValueError, match="needs .* GiB .* give fewer centers"):
        nk.predict.nystrom_regression(NET, x, y, centers=150)
    with pytest.raises(ValueError, match="needs .* GiB .* give fewer features"):
        nk.predict.feature_regression(lambda z: torch.ones(len(z), 500, dtype=torch.float64), x, y)
    with pytest.raises(ValueError, match=r"Lanczos basis after \d+ steps needs .* GiB"):
        lanczos_apply(as_operator(k), torch.randn(150, 600, dtype=torch.float64), lambda t: t[None], progress=False)
    nk.predict.nystrom_regression(NET, x, y, centers=20)      # small enough: runs


def test_lanczos_refuses_indefinite_and_singular_kernels_and_gives_zero_for_zero_targets(data):
    """An indefinite kernel_fn is refused (eigh refuses it too), never clamped into a confident mean; a
    singular kernel at t=None is refused as eigh refuses it; y = 0 gives 0."""
    x, y, x_test = data

    def indefinite(a, b):
        b = a if b is None else b
        fa = torch.cat([a, a[:, :1] ** 2], 1)
        fb = torch.cat([b, b[:, :1] ** 2], 1)
        return fa @ fb.T - 1.5 * fa[:, :1] @ fb[:, :1].T
    assert float(torch.linalg.eigvalsh(indefinite(x, x))[0]) < -1.0
    with pytest.raises(ValueError, match="indefinite"):
        nk.predict.gradient_descent_mse_ensemble(indefinite, x, y[:, 0])(10.0, x_test, get="ntk")
    with pytest.raises(ValueError, match="not positive semi-definite"):
        nk.predict.gradient_descent_mse_ensemble(indefinite, x, y[:, 0], solver="lanczos", progress=False)(
            10.0, x_test, get="ntk")
    repeated = torch.cat([x, x[:10]])
    targets = torch.randn(len(repeated), generator=torch.Generator().manual_seed(4), dtype=torch.float64)

    def linear(a, b):
        return a @ (a if b is None else b).T            # rank 4 < n: singular
    for solver in ("eigh", "lanczos"):
        with pytest.raises(ValueError, match="singular"):
            nk.predict.gradient_descent_mse_ensemble(linear, repeated, targets, solver=solver,
                                                     **({"progress": False} if solver == "lanczos" else {}))(
                None, x_test, get="ntk")
    zero = nk.predict.gradient_descent_mse_ensemble(NET, x, torch.zeros_like(y), solver="lanczos", progress=False)
    assert float(zero([1.0, 5.0], x_test, get="ntk").abs().max()) == 0.0
    assert float(zero(None, x_test, get="ntk").abs().max()) == 0.0


def test_lanczos_options_are_refused_with_eigh_and_a_store_without_an_architecture(data, tmp_path):
    x, y, _ = data
    store = compute_kernel(NET, x, store=tmp_path / "k.zarr", get="ntk", tile_size=64, progress=False)
    for options in ({"rtol": 1e-6}, {"max_iterations": 5}, {"store": store}):
        with pytest.raises(ValueError, match="read by solver='lanczos' only"):
            nk.predict.gradient_descent_mse_ensemble(NET, x, y, **options)
    with pytest.raises(ValueError, match="store= needs an ntklab architecture"):
        nk.predict.gradient_descent_mse_ensemble(lambda a, b: NET.kernel(a, b, get="ntk"), x, y, solver="lanczos",
                                                 store=store)
    with pytest.raises(ValueError, match="max_iterations"):
        nk.predict.gradient_descent_mse_ensemble(NET, x, y, solver="lanczos", max_iterations=0)


def test_cg_casts_a_centers_preconditioner_to_the_operators_dtype(data, tmp_path):
    """A float64 preconditioner for a float32 operator (a StoredKernel read as float32) is cast, not a
    dtype error; the solution matches the float64 solve to float32's precision."""
    x, y, _ = data
    store = compute_kernel(NET, x, store=tmp_path / "k.zarr", get="ntk", tile_size=64, progress=False)
    preconditioner = nk.predict.NystromPreconditioner.from_centers(NET, x, centers=60)
    single = nk.predict.conjugate_gradients(nk.kernels.StoredKernel(store, "ntk", dtype=torch.float32), y,
                                            diag_reg=1e-2, preconditioner=preconditioner, rtol=1e-4, progress=False)
    double = nk.predict.conjugate_gradients(nk.kernels.StoredKernel(store, "ntk"), y, diag_reg=1e-2,
                                            preconditioner=preconditioner, rtol=1e-10, progress=False)
    assert single.solution.dtype == torch.float32
    np.testing.assert_allclose(single.solution, double.solution, rtol=0, atol=1e-3 * float(double.solution.abs().max()))
