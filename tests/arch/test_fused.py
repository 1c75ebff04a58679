"""Fused (torch.compile) layer maps: the same kernels as eager torch, and a clean fallback."""
import shutil

import pytest
import torch

import ntklab as nk
from ntklab.arch.activations import dual_update
from ntklab.arch.fused import fusible

NETWORKS = {
    "mlp": (nk.serial(nk.Dense(64, 1.5, 0.05), nk.Relu(), nk.Dense(64, 1.5, 0.05), nk.Erf(),
                      nk.Dense(64, 1.5, 0.05), nk.Gelu(), nk.Dense(1)), (40, 7)),
    "cntk-gap": (nk.serial(nk.Conv(4, (3, 3), padding="SAME", W_std=1.4, b_std=0.1), nk.Relu(),
                           nk.Conv(4, (3, 3), padding="SAME", W_std=1.4), nk.Relu(),
                           nk.GlobalAvgPool(), nk.Dense(1)), (7, 3, 6, 6)),
    "strided-flatten": (nk.serial(nk.Conv(4, (3, 3), padding="CIRCULAR", W_std=1.4), nk.Abs(),
                                  nk.Conv(4, (3, 2), strides=(2, 1), W_std=1.4), nk.LeakyRelu(0.1),
                                  nk.Flatten(), nk.Dense(1)), (7, 3, 7, 7)),
}


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile needs a C++ compiler on CPU")
@pytest.mark.parametrize("name", NETWORKS)
def test_fused_kernels_equal_the_eager_ones_to_rounding(name):
    net, shape = NETWORKS[name]
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eager = net.kernel(x, fused=False)
    fused = net.kernel(x, fused=True)
    assert dual_update._compiled is not None and not dual_update._broken  # it really compiled
    for g in ("nngp", "ntk"):
        want, got = getattr(eager, g), getattr(fused, g)
        torch.testing.assert_close(got, want, rtol=1e-14, atol=1e-14 * float(want.abs().max()))
    # identical inputs stay at correlation exactly 1: the fused ReLU-family diagonal is each input's
    # kernel alone (an angle from a rounded correlation would err by ~1e-8 in the NTK)
    alone = torch.stack([net.kernel(x[i:i + 1], fused=True, get="ntk")[0, 0] for i in range(3)])
    torch.testing.assert_close(fused.ntk.diagonal()[:3], alone, rtol=1e-14, atol=0)
    rect = net.kernel(x[:5], x[5:], fused=True)
    torch.testing.assert_close(rect.ntk, eager.ntk[:5, 5:], rtol=1e-14, atol=1e-14 * float(eager.ntk.abs().max()))


def test_a_compiler_failure_falls_back_to_eager_with_one_warning(monkeypatch):
    calls = []

    def broken_compile(fn, **kwargs):
        calls.append(fn)
        raise RuntimeError("no C++ compiler found\nmore detail")

    monkeypatch.setattr(torch, "compile", broken_compile)
    square = fusible(lambda t, power: t ** power)
    t = torch.arange(4.0)
    with pytest.warns(RuntimeWarning, match="could not compile .*no C\\+\\+ compiler found.*fused=False"):
        assert torch.equal(square(t, 2, fused=True), t ** 2)
    assert torch.equal(square(t, 3, fused=True), t ** 3) and len(calls) == 1  # not retried
    assert torch.equal(square(t, 2, fused=False), t ** 2)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile needs a C++ compiler on CPU")
def test_worker_threads_share_the_compiled_maps():
    """Four worker threads reach the compiler together (one compiles under the lock, the others
    wait), then run the compiled code concurrently: the same kernel as eager, one thread."""
    net, shape = NETWORKS["cntk-gap"]
    x = torch.randn(13, *shape[1:], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    eager = net.kernel(x, fused=False, workers=1)
    threaded = net.kernel(x, fused=True, workers=4, block_size=3)
    assert not dual_update._broken
    for g in ("nngp", "ntk"):
        want = getattr(eager, g)
        torch.testing.assert_close(getattr(threaded, g), want, rtol=1e-14,
                                   atol=1e-14 * float(want.abs().max()))
