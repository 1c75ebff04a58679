"""One set of defaults and no hidden process-wide state (issue 28): one `max_memory`
default, `device=None` follows the inputs, modules follow torch's default dtype, worker
threads change no other thread's torch thread count, reading a store changes no logger,
and `implementation="auto"` chooses by counted operations, not by timings."""
import inspect
import logging
import threading
import time

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import ntklab as nk
from ntklab._core import validation as _validation
from ntklab.kernels import autotune, compute_kernel, empirical
from ntklab.kernels.model_inputs import select_parameters
from ntklab.kernels.structured import Plan
from ntklab._core.tiling import tiled_pairs

GIB = 2 ** 30


# ------------------------------------------------------------------ max_memory
def test_max_memory_has_one_default_of_one_gib(monkeypatch):
    functions = [nk.Serial.kernel, compute_kernel, nk.empirical_ntk, nk.train]
    assert {inspect.signature(f).parameters["max_memory"].default for f in functions} == {None}
    assert _validation.parse_memory(None) == _validation.DEFAULT_MAX_MEMORY == GIB
    from ntklab.lab.cli import kernel as cli_kernel
    cli_default = next(p.default for p in cli_kernel.params if p.name == "max_memory")
    assert _validation.parse_memory(cli_default) == GIB

    # the bound that reaches the tiling code, by default
    seen = []
    block_size_for = nk.Serial.block_size_for
    monkeypatch.setattr(nk.Serial, "block_size_for", lambda self, shape, max_memory, *a: (
        seen.append(_validation.parse_memory(max_memory)), block_size_for(self, shape, max_memory, *a))[1])
    run = empirical._run
    monkeypatch.setattr(empirical, "_run", lambda *a: (seen.append(a[6]), run(*a))[1])
    net = nk.mlp(1, 16)
    x = torch.randn(4, 3, dtype=torch.float64)
    net.kernel(x, get="ntk")
    nk.empirical_ntk(net.module(3, dtype=torch.float64), x)
    assert seen == [GIB, GIB]


# ------------------------------------------------------------------ dtype and device
def test_module_dtype_follows_torch_default_dtype():
    net = nk.serial(nk.Conv(4, (3, 3)), nk.Relu(), nk.Flatten(), nk.Dense(2))
    previous = torch.get_default_dtype()
    try:
        for default in (torch.float64, torch.float32):
            torch.set_default_dtype(default)
            expected = nn.Linear(2, 2).weight.dtype   # torch's own modules
            assert {p.dtype for p in net.module((1, 5, 5)).parameters()} == {expected} == {default}
    finally:
        torch.set_default_dtype(previous)
    assert {p.dtype for p in net.module((1, 5, 5), dtype=torch.float64).parameters()} == {torch.float64}
    with pytest.raises(ValueError, match="dtype must be a floating torch dtype"):
        net.module((1, 5, 5), dtype=torch.int64)


def test_module_weights_come_from_the_seed_whatever_the_default_device():
    net = nk.mlp(1, 16)
    plain = net.module(3, seed=4)
    with torch.device("meta"):
        on_cpu = net.module(3, seed=4, device="cpu")
        default = net.module(3, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), on_cpu.parameters(), strict=True))
    assert {p.device.type for p in default.parameters()} == {"meta"}   # torch's default device


def test_monte_carlo_kernel_follows_the_inputs_device():
    """Networks of an architecture are built where the inputs are, not on torch's default
    device (the result equals the average of the explicit networks' kernels)."""
    net = nk.mlp(1, 16)
    x = torch.randn(4, 3, dtype=torch.float64)
    with torch.device("meta"):
        mc = nk.monte_carlo_kernel(net, x, n_samples=2, get="ntk", progress=False,
                                   implementation="jacobian")
    explicit = sum(nk.empirical_ntk(net.module(3, seed=s, dtype=torch.float64), x,
                                    implementation="jacobian") for s in (0, 1)) / 2
    assert mc.ntk.device.type == "cpu"
    torch.testing.assert_close(mc.ntk, explicit, rtol=1e-14, atol=0)
    with torch.device("meta"):
        assert net.kernel(x, get="ntk").device.type == "cpu"   # the analytic kernel too


# ------------------------------------------------------------------ thread counts
def _fresh_thread_count() -> int:
    """The count a thread takes when it first uses torch (process-wide)."""
    out = []
    thread = threading.Thread(target=lambda: out.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return out[0]


def _set_process_wide(n: int) -> None:
    thread = threading.Thread(target=torch.set_num_threads, args=(n,))
    thread.start()
    thread.join()


def test_worker_threads_change_no_other_threads_torch_thread_count():
    """torch.set_num_threads sets the calling thread's count and the process-wide one that
    new threads take; multi-worker tiles must change neither outside the workers."""
    mine, process_wide = torch.get_num_threads(), _fresh_thread_count()
    try:
        torch.set_num_threads(3)
        _set_process_wide(2)   # the caller's count and the process-wide one differ
        assert (torch.get_num_threads(), _fresh_thread_count()) == (3, 2)
        seen = []

        def fn(b1, b2, advance):
            seen.append((torch.get_num_threads(), _fresh_thread_count()))
            return {"k": b1 @ (b1 if b2 is None else b2).T}

        x = torch.randn(9, 4, dtype=torch.float64)
        out = tiled_pairs(fn, x, None, ("k",), block_size=3, workers=2)
        torch.testing.assert_close(out["k"], x @ x.T, rtol=1e-14, atol=1e-14)
        assert set(seen) == {(1, 2)}   # workers single-threaded, new threads as before
        assert (torch.get_num_threads(), _fresh_thread_count()) == (3, 2)
    finally:
        torch.set_num_threads(mine)
        _set_process_wide(process_wide)


def test_a_failing_tile_stops_the_workers_and_is_raised():
    calls = []

    def fn(b1, b2, advance):
        calls.append(1)
        raise ArithmeticError("tile failed")

    with pytest.raises(ArithmeticError, match="tile failed"):
        tiled_pairs(fn, torch.randn(40, 2), None, ("k",), block_size=1, workers=2)
    assert len(calls) <= 2   # each worker stopped after the first failure, 820 tiles not run
    assert not [t for t in threading.enumerate() if t.name.startswith("ntklab-tiles")]


# ------------------------------------------------------------------ loggers
def test_reading_a_damaged_store_changes_no_logger(tmp_path, monkeypatch, caplog):
    pytest.importorskip("zarr")
    x = torch.randn(6, 2, dtype=torch.float64)
    store = compute_kernel(nk.mlp(1, 8), x, store=tmp_path / "k.zarr", tile_size=3, get="nngp",
                           progress=False)
    chunk = sorted(p for p in (tmp_path / "k.zarr" / "nngp").rglob("*") if p.is_file()
                   and p.name != "zarr.json")[0]
    chunk.write_bytes(chunk.read_bytes()[:5])
    levels = {name: logging.getLogger(name).level for name in ("asyncio", "zarr")}
    during = []
    read = type(store)._read

    def spying_read(self, *args):   # what another thread's logging meets meanwhile
        during.append({name: logging.getLogger(name).level for name in levels})
        logging.getLogger("asyncio").warning("a message of the user's own event loop")
        return read(self, *args)

    monkeypatch.setattr(type(store), "_read", spying_read)
    with caplog.at_level(logging.DEBUG):
        assert store.verify() == [(0, 0)]
        with pytest.raises(ValueError, match="damaged tile"):
            store.load("nngp")
    assert during and all(d == levels for d in during)
    ours = [r for r in caplog.records if r.getMessage() == "a message of the user's own event loop"]
    assert len(ours) == len(during)   # none swallowed
    noise = [r for r in caplog.records if r.levelno >= logging.WARNING and r not in ours]
    assert not noise   # and the damaged chunk itself logs nothing


# ------------------------------------------------------------------ implementation="auto"
def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(),
                         nn.Linear(32, 2)).double()


def _plans(model, x):
    chosen = select_parameters(model, None)
    return {"structured": Plan(model, chosen, True, x), "ntk_vp": Plan(model, chosen, False, x)}


def test_auto_does_not_depend_on_timings(monkeypatch):
    """A strategy that happens to run slowly on this machine (a delay stands in for a busy
    core) does not change the choice: it is made from shapes alone."""
    x = torch.randn(16, 6, dtype=torch.float64)
    expected = autotune.choose(_mlp(), x, None, "trace", _plans(_mlp(), x))
    kernel_block = Plan.kernel_block

    def slow(self, *args):
        time.sleep(0.1)
        return kernel_block(self, *args)

    monkeypatch.setattr(Plan, "kernel_block", slow)
    model = _mlp()
    assert autotune.choose(model, x, None, "trace", _plans(model, x)) == expected == "structured"


def test_auto_chooses_the_same_and_is_bitwise_reproducible():
    x = torch.randn(20, 6, dtype=torch.float64)
    a, b = _mlp(), _mlp()   # two models, two cache entries: two independent choices
    ka, kb = nk.empirical_ntk(a, x, mode="full"), nk.empirical_ntk(b, x, mode="full")
    assert torch.equal(ka, kb)
    choices = [autotune._CACHE[m] for m in (a, b)]
    assert choices[0] == choices[1] and len(choices[0]) == 1
    (choice,) = choices[0].values()
    assert torch.equal(ka, nk.empirical_ntk(a, x, mode="full", implementation=choice))


@pytest.mark.parametrize("structured", [True, False])
def test_estimated_operations_are_those_of_the_whole_kernel(structured):
    """The estimate extrapolated from probes of 2 and 4 samples is the count of operations
    of the whole N1 x N2 kernel (one tile), up to the few operations per call that are not
    per sample or pair (measured 0.05 % and 0.12 %)."""
    model = _mlp()
    x1, x2 = torch.randn(20, 6, dtype=torch.float64), torch.randn(12, 6, dtype=torch.float64)
    name = "structured" if structured else "jacobian"
    plan = Plan(model, select_parameters(model, None), structured, x1)
    estimate = autotune.estimated_cost(x1, x2, "trace", {name: plan})[name]
    whole = autotune.count_cost(lambda: plan.kernel_block(plan.features(x1), plan.features(x2), "trace"))
    assert estimate == pytest.approx(whole, rel=1e-2)
    with FlopCounterMode(display=False) as products:   # torch's count of the products alone
        plan.kernel_block(plan.features(x1), plan.features(x2), "trace")
    assert 0 < products.get_total_flops() < whole


def test_cost_count_in_closed_form():
    """FLOPs of products, bytes written by other operations, nothing for views."""
    a, b = torch.randn(5, 7), torch.randn(7, 3)
    assert autotune.count_cost(lambda: a @ b) == 2 * 5 * 7 * 3
    assert autotune.count_cost(lambda: torch.tanh(a)) == 35 * 4
    assert autotune.count_cost(lambda: torch.tanh(a.double())) == 2 * 35 * 8   # a cast, then tanh
    assert autotune.count_cost(lambda: a.T.reshape(-1)[:4]) == 35 * 4   # transpose, then a copy
    assert autotune.count_cost(lambda: a.T[:2]) == 0                    # views only
    assert autotune.count_cost(lambda: a.reshape(-1)) == 0
    assert autotune.count_cost(lambda: a.clone().add_(1)) == 2 * 35 * 4  # in place: counted
    x = torch.randn(4, 6)
    linear = nn.Linear(6, 3)
    assert autotune.count_cost(lambda: linear(x)) == 2 * 4 * 6 * 3   # addmm: bias in the product


def test_auto_keeps_the_structured_choice_on_typical_networks():
    """The choices timings made on the benchmark's networks (structured everywhere)."""
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(),
                        nn.Linear(8 * 4 * 4, 10))
    ntklab_mlp = nk.mlp(2, 64).module(10, seed=0)
    for model, x in ((cnn, torch.randn(16, 3, 8, 8)), (ntklab_mlp, torch.randn(16, 10)),
                     (_mlp().float(), torch.randn(16, 6))):
        for mode in ("trace", "full"):
            assert autotune.choose(model, x, None, mode, _plans(model, x)) == "structured"
    # nothing structured (LayerNorms): per-sample Jacobians, as timed before (by FLOPs alone
    # NTK-vector products in mode "full", measured 12x slower at N = 512)
    norm = nn.Sequential(nn.LayerNorm(6), nn.Tanh(), nn.LayerNorm(6))
    x = torch.randn(16, 6)
    chosen = select_parameters(norm, None)
    plans = {"jacobian": Plan(norm, chosen, False, x), "ntk_vp": Plan(norm, chosen, False, x)}
    for mode in ("trace", "full"):
        assert autotune.choose(norm, x, None, mode, plans) == "jacobian"
    np.testing.assert_allclose(nk.empirical_ntk(norm, x).numpy(),
                               nk.empirical_ntk(norm, x, implementation="ntk_vp").numpy(), rtol=1e-5)
