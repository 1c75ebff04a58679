"""The CNTK's fast paths (in-place filter sums and ReLU duals on reused scratch tensors, variances
carried on same positions only) against the straightforward maps they replace: bitwise the same
kernels, on 1-D sequences, images and volumes, symmetric and rectangular blocks."""
import math

import pytest
import torch

import ntklab as nk
from ntklab.arch import activations, buffers, conv
from ntklab.arch.activations import dual_update
from ntklab.arch.buffers import BufferPool, scratch
from ntklab.arch.conv import filter_sum, filter_sum_
from ntklab.arch.serial import Serial
from ntklab.arch.windows import window_sum

W, B = math.sqrt(2.0), 0.1


def gap_cnn(filter_shape, depth=2, activation=nk.Relu, padding="SAME", head=()):
    layers = []
    for _ in range(depth):
        layers += [nk.Conv(4, filter_shape, None, padding, W, B), activation()]
    return nk.serial(*layers, nk.GlobalAvgPool(), *head, nk.Dense(1, W, B))


def inputs(shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def straightforward(monkeypatch):
    """Turn every fast path off: the out-of-place maps and all-pairs variances of before."""
    monkeypatch.setattr(conv, "in_place_ok", lambda *t: False)
    monkeypatch.setattr(activations, "in_place_ok", lambda *t: False)
    monkeypatch.setattr(Serial, "carries_same_position_variances", property(lambda self: False))


def kernels(net, x1, x2=None, **kwargs):
    k = net.kernel(x1, x2, **kwargs)
    return torch.stack([k.nngp, k.ntk])


CASES = {   # architecture, input shape (N, ...)
    "images 3x3": (gap_cnn((3, 3), depth=3), (7, 3, 6, 6)),
    "images 5x3 VALID then SAME": (nk.serial(nk.Conv(4, (5, 3), None, "VALID", W, B), nk.Relu(),
                                             nk.Conv(4, (3, 3), None, "SAME", W, B), nk.Abs(),
                                             nk.GlobalSumPool(), nk.Dense(1, W, B)), (6, 2, 7, 6)),
    "strided circular": (nk.serial(nk.Conv(4, (3, 3), (2, 1), "CIRCULAR", W, B), nk.LeakyRelu(0.2),
                                   nk.Conv(4, (3, 3), None, "SAME", W, B), nk.Erf(),
                                   nk.GlobalAvgPool(), nk.Dense(1, W, B)), (6, 3, 6, 5)),
    "sequences": (gap_cnn((3,)), (6, 9, 3)),
    "volumes": (gap_cnn((3, 3, 3)), (5, 2, 4, 4, 4)),
}


@pytest.mark.parametrize("name", CASES)
def test_fast_paths_give_bitwise_the_straightforward_kernels(name, monkeypatch):
    net, shape = CASES[name]
    x = inputs(shape)
    assert net.carries_same_position_variances
    fast = [kernels(net, x), kernels(net, x, block_size=2), kernels(net, x[:4], x[2:])]
    straightforward(monkeypatch)
    slow = [kernels(net, x), kernels(net, x, block_size=2), kernels(net, x[:4], x[2:])]
    for got, want in zip(fast, slow, strict=True):
        assert torch.equal(got, want)


def test_variances_read_after_the_pool_keep_all_pairs(monkeypatch):
    """An activation after the pool reads the pooled variance (the mean over all position pairs):
    such a network carries all pairs, and forcing same-position variances on it (the negative
    control) changes its kernel, so the guard is what keeps it right."""
    net = gap_cnn((3, 3), head=(nk.Dense(8, W, B), nk.Relu()))
    assert not net.carries_same_position_variances
    x = inputs((5, 3, 5, 5))
    right = kernels(net, x)
    monkeypatch.setattr(Serial, "carries_same_position_variances", property(lambda self: True))
    forced = kernels(net, x)
    assert (forced - right).abs().max() > 1e-3 * right.abs().max()
    monkeypatch.undo()
    straightforward(monkeypatch)
    assert torch.equal(kernels(net, x), right)


@pytest.mark.parametrize("layers", [
    (nk.Conv(4, (3, 3), padding="SAME"), nk.Relu(), nk.AvgPool((2, 2)), nk.GlobalAvgPool()),
    (nk.Conv(4, (3, 3), padding="SAME"), nk.LayerNorm(axis=1), nk.Relu(), nk.GlobalAvgPool()),
    (nk.ConvTranspose(4, (3, 3), padding="SAME"), nk.Relu(), nk.GlobalAvgPool()),
    (nk.Conv(4, (3, 3), padding="SAME"), nk.Relu(), nk.Flatten()),
], ids=["avg-pool", "layer-norm", "conv-transpose", "flatten"])
def test_only_declared_layers_take_same_position_variances(layers):
    assert not nk.serial(*layers, nk.Dense(1)).carries_same_position_variances


def test_blocks_are_one_cache_sized_pair_with_same_position_variances():
    """The inputs' own states no longer cost 2/b of a block: a 32x32 CNTK-GAP tiles by single pairs
    (8 MiB per state tensor), the all-pairs-variance one keeps 3 x 3 blocks."""
    cheap = gap_cnn((3, 3))
    costly = gap_cnn((3, 3), head=(nk.Dense(8, W, B), nk.Relu()))
    assert cheap.block_size_for((3, 32, 32), None, torch.float64) == 1
    assert costly.block_size_for((3, 32, 32), None, torch.float64) == 3
    assert cheap.block_size_for((3, 16, 16), None, torch.float64) == 2   # 4 pairs of 512 KiB: 2 MiB


@pytest.mark.parametrize("filter_shape, full", [((3,), True), ((3, 3), True), ((3, 5), False),
                                                ((3, 3, 3), True), ((2, 3), True), ((3, 1, 2), False)])
def test_in_place_filter_sum_is_bitwise_the_window_sums(filter_shape, full):
    dims = len(filter_shape)
    spatial = (5, 6, 4)[:dims]
    t = inputs((2, 3, *spatial, *(spatial if full else ())))
    want = t.clone()
    for dim, size in enumerate(filter_shape):
        axes = (dim - 2 * dims, dim - dims) if full else (dim - dims,)
        want = window_sum(want, axes, size, 1, "SAME")
    with BufferPool().active():
        got = filter_sum_(t.clone(), filter_shape, full)
    assert torch.equal(got, want) and torch.equal(filter_sum(t, filter_shape, "SAME", full), want)
    if len(set(filter_shape)) > 1:   # negative control: the filter's sides swapped
        assert not torch.equal(filter_sum_(t.clone(), tuple(reversed(filter_shape)), full), want)


@pytest.mark.parametrize("activation", [nk.Relu(), nk.LeakyRelu(0.3), nk.Abs(), nk.ABRelu(-0.5, 2.0)])
def test_in_place_relu_dual_is_bitwise_the_dual(activation):
    """Correlations over the whole range, exactly +-1 and 0, and zero variances (angle pi/2)."""
    var1 = torch.tensor([1.0, 2.0, 0.0, 3.0, 0.5], dtype=torch.float64)[:, None]
    var2 = torch.tensor([1.0, 2.0, 4.0, 0.0, 0.5, 1.5], dtype=torch.float64)[None, :]
    rho = torch.linspace(-1, 1, 30, dtype=torch.float64).reshape(5, 6)
    rho[0, 0], rho[1, 1], rho[4, 4], rho[1, 0] = 1.0, -1.0, 1.0, 0.0
    cov = rho * (var1 * var2).sqrt()
    cov[1, 1] = -2.0   # exactly -v1 (= -v2)
    ntk = inputs((5, 6)).abs()
    want_nngp, want_ntk = dual_update(activation, cov.clone(), var1, var2, ntk.clone())
    with BufferPool().active():
        got_nngp, got_ntk = activation.dual_update_(cov.clone(), var1, var2, ntk.clone())
    assert torch.equal(got_nngp, want_nngp) and torch.equal(got_ntk, want_ntk)
    assert torch.equal(activation.dual_update_(cov.clone(), var1, var2, None)[0], want_nngp)
    zero = activation.dual_update_(cov.clone(), var1, var2, 0.0)[1]
    assert torch.equal(zero, dual_update(activation, cov.clone(), var1, var2, 0.0)[1])
    # negative control: one ulp off the exact correlation 1 moves the NTK's angle by ~1e-8
    nudged = cov.clone()
    nudged[0, 0] = torch.nextafter(nudged[0, 0], torch.tensor(0.0, dtype=torch.float64))
    assert not torch.equal(activation.dual_update_(nudged, var1, var2, ntk.clone())[1], want_ntk)


def test_scratch_tensors_are_reused_within_a_pool_only():
    like = torch.zeros(3, 4, dtype=torch.float64)
    pool = BufferPool()
    with pool.active():
        with scratch(like, 2) as (a, b):
            first = {a.data_ptr(), b.data_ptr()}
        with scratch(like, 2) as (c, d):
            assert {c.data_ptr(), d.data_ptr()} == first    # the same memory again
        with scratch(torch.zeros(5, dtype=torch.float32)) as (e,):
            assert e.shape == (5,) and e.dtype == torch.float32
    for i in range(buffers.MAX_HELD + 3):
        pool.give(torch.empty(i + 1))
    assert len(pool.free) == buffers.MAX_HELD
    held = [id(t) for t in pool.free.values()]
    with scratch(like) as (outside,):   # no active pool: a fresh tensor, never kept
        assert outside.shape == like.shape
    assert [id(t) for t in pool.free.values()] == held


@pytest.mark.parametrize("w_std, problem", [(30.0, "NaN|overflows"), (0.02, "underflows")])
def test_range_checks_refuse_alike_with_same_position_variances(w_std, problem, monkeypatch):
    """The per-position variances the checks read are exact up to the pool: a CNTK-GAP whose
    variance leaves float64 (x 450 or x 2e-4 per conv + ReLU) is refused at the same layer, with the
    same message, as on the all-pairs path; the critical W_std = sqrt(2) is not (negative control)."""
    def net(w):
        return nk.serial(*[layer for _ in range(150) for layer in (nk.Conv(2, (3, 3), padding="SAME", W_std=w),
                                                                  nk.Relu())], nk.GlobalAvgPool(), nk.Dense(1))
    x = inputs((2, 1, 3, 3))
    assert net(w_std).carries_same_position_variances
    with pytest.raises(ValueError, match=problem) as fast:
        net(w_std).kernel(x)
    assert net(math.sqrt(2)).kernel(x).ntk.isfinite().all()
    straightforward(monkeypatch)
    with pytest.raises(ValueError) as slow:
        net(w_std).kernel(x)
    assert str(fast.value) == str(slow.value)
