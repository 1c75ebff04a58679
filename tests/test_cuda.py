"""The CUDA path: kernels, empirical NTKs and training on a GPU equal their CPU values.
Skipped without a GPU (`pytest -m cuda` on a GPU machine)."""
import pytest
import torch

import ntklab as nk

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

GEN = torch.Generator().manual_seed(0)


def residual_cnn():
    block = nk.serial(nk.FanOut(2), nk.parallel(nk.serial(nk.Relu(), nk.Conv(8, padding="SAME")),
                                                nk.Identity()), nk.FanInSum())
    return nk.serial(nk.Conv(8, strides=(2, 2), padding="SAME"), block, nk.AvgPool((2, 2), strides=(2, 2)),
                     nk.Relu(), nk.GlobalAvgPool(), nk.Dense(1))


@pytest.mark.parametrize("net, x", [
    (nk.mlp(3, 512, W_std=1.5, b_std=0.05), torch.randn(40, 6, generator=GEN, dtype=torch.float64)),
    (residual_cnn(), torch.randn(6, 3, 8, 8, generator=GEN, dtype=torch.float64)),
    (nk.serial(nk.Dense(8), nk.GlobalSelfAttention(8, 8, 8, 2), nk.LayerNorm(), nk.Relu(),
               nk.GlobalAvgPool(), nk.Dense(1)), torch.randn(5, 4, 3, generator=GEN, dtype=torch.float64)),
])
def test_analytic_kernels_on_cuda_equal_cpu(net, x):
    cpu = net.kernel(x)
    gpu = net.kernel(x.cuda())
    assert gpu.ntk.device.type == "cuda"
    torch.testing.assert_close(gpu.ntk.cpu(), cpu.ntk, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gpu.nngp.cpu(), cpu.nngp, rtol=1e-10, atol=1e-12)


def test_empirical_ntk_and_the_finite_module_on_cuda():
    net = residual_cnn()
    x = torch.randn(4, 3, 8, 8, generator=GEN, dtype=torch.float64)
    model = net.module((3, 8, 8), dtype=torch.float64)
    cpu = nk.empirical_ntk(model, x)
    gpu = nk.empirical_ntk(model.cuda(), x.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-9, atol=1e-10)


def test_the_ntk_hierarchy_and_gradient_flow_on_cuda():
    from ntklab import nearly_kernel_flow, ntk_hierarchy, train_gradient_flow
    x = torch.randn(7, 3, generator=GEN, dtype=torch.float64)
    y = torch.sin(x[:3, 0])
    model = nk.mlp(2, 32, W_std=1.5, b_std=0.1, activation=nk.Tanh()).module(3, dtype=torch.float64)
    cpu = ntk_hierarchy(model, x[:3], x[3:])
    gpu = ntk_hierarchy(model.cuda(), x[:3].cuda(), x[3:].cuda())
    for name in ("output", "ntk", "dntk", "ddntk"):
        assert getattr(gpu, name).device.type == "cuda"
        torch.testing.assert_close(getattr(gpu, name).cpu(), getattr(cpu, name), rtol=1e-9, atol=1e-11)
    on_gpu = nearly_kernel_flow(gpu, y.cuda(), [1.0])["nearly_kernel"]
    assert on_gpu.device.type == "cuda"   # follows the hierarchy (it came back on the CPU)
    torch.testing.assert_close(on_gpu.cpu(), nearly_kernel_flow(cpu, y, [1.0])["nearly_kernel"], rtol=1e-8,
                               atol=1e-10)
    first = ntk_hierarchy(model, x[:3].cuda(), x[3:].cuda(), ddntk=False)     # stopping at the dNTK
    assert first.ddntk is None
    torch.testing.assert_close(nearly_kernel_flow(first, y.cuda(), [1.0], terms=("dntk",))["nearly_kernel"].cpu(),
                               nearly_kernel_flow(cpu, y, [1.0], terms=("dntk",))["nearly_kernel"],
                               rtol=1e-8, atol=1e-10)
    trained = train_gradient_flow(model, x[:3].cuda(), y.cuda(), [0.5, 1.0], x[3:].cuda())
    assert trained.device.type == "cuda"   # follows the model (it came back on the CPU)
    torch.testing.assert_close(trained.cpu(), train_gradient_flow(model.cpu(), x[:3], y, [0.5, 1.0], x[3:]),
                               rtol=1e-8, atol=1e-10)


def test_solvers_past_memory_on_cuda_equal_cpu(tmp_path):
    """CG streaming a store onto the GPU with the centers preconditioner built there, and the ensemble's
    Lanczos means, equal their CPU values."""
    net = nk.mlp(2, 64, W_std=1.5, b_std=0.1)
    x = torch.randn(300, 5, generator=GEN, dtype=torch.float64)
    y = torch.sin(x[:, :2])
    store = nk.kernels.compute_kernel(net, x, store=tmp_path / "k.zarr", get=("nngp", "ntk"), tile_size=64,
                                      progress=False)
    results = {}
    for device in ("cpu", "cuda"):
        operator = nk.kernels.StoredKernel(store, "ntk", device=device)
        preconditioner = nk.predict.NystromPreconditioner.from_centers(net, x.to(device), centers=100)
        results[device] = nk.predict.conjugate_gradients(operator, y.to(device), diag_reg=1e-4, rtol=1e-10,
                                                         preconditioner=preconditioner, progress=False).solution
    assert results["cuda"].device.type == "cuda"
    torch.testing.assert_close(results["cuda"].cpu(), results["cpu"], rtol=1e-8, atol=1e-10)
    cpu = nk.predict.gradient_descent_mse_ensemble(net, x, y, solver="lanczos", store=store, progress=False)
    gpu = nk.predict.gradient_descent_mse_ensemble(net, x.cuda(), y.cuda(), solver="lanczos", store=store,
                                                   progress=False)
    torch.testing.assert_close(gpu([1.0, 10.0], x[:20].cuda()).cpu(), cpu([1.0, 10.0], x[:20]), rtol=1e-8,
                               atol=1e-10)
