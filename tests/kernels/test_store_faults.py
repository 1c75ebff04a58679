"""Faults of the tiled kernel store (issue 27): damaged zarr metadata, an edited activation
function, chunks moved with their markers, two processes on one store, a full disk.  Each
test compares the final matrices with an uninterrupted run (bit for bit) or the in-memory
kernel, and counts which tiles were computed again."""
import errno
import importlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

import ntklab as nk
from ntklab.kernels import KernelStore, compute_kernel, engine

NET = nk.serial(nk.Dense(4, b_std=0.1), nk.Relu(), nk.Dense(1))
POINTS = torch.randn(10, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
TILES = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]   # 10 points, tile_size 4: upper tiles


@pytest.fixture
def computed(monkeypatch):
    """The (tile rows, arrays) of every tile computed from now on, in order."""
    calls = []
    original = engine.compute_tile

    def recording(arch, rows, cols, names, *args):
        calls.append((rows.shape[0], tuple(names)))
        return original(arch, rows, cols, names, *args)

    monkeypatch.setattr(engine, "compute_tile", recording)
    return calls


def chunk_mtimes(path, name):
    return {p.relative_to(path): p.stat().st_mtime_ns for p in (path / name / "c").rglob("*") if p.is_file()}


# 1. damaged metadata of one array ------------------------------------------------------
@pytest.mark.parametrize("damage", ["nngp folder deleted", "nngp zarr.json damaged", "group zarr.json damaged"])
def test_damaged_metadata_costs_no_other_array_and_no_marker(damage, tmp_path, computed):
    """Before: the rerun failed with KeyError 'nngp' (or a JSON error naming no file) and
    deleted every marker.  Now `ntk` loads meanwhile, the rerun repairs the metadata and
    recomputes only the lost chunks (of `nngp` only), and both matrices equal the
    uninterrupted run's."""
    path = tmp_path / "k.zarr"
    store = compute_kernel(NET, POINTS, store=path, tile_size=4, progress=False)
    expected = {name: store.load(name) for name in ("nngp", "ntk")}
    np.testing.assert_allclose(expected["ntk"], NET.kernel(POINTS, get="ntk").numpy(), rtol=1e-13)
    ntk_chunks = chunk_mtimes(path, "ntk")
    if damage == "nngp folder deleted":
        shutil.rmtree(path / "nngp")
    else:
        (path / ("nngp/zarr.json" if damage.startswith("nngp") else "zarr.json")).write_text('{"shape": [10,')
    computed.clear()

    np.testing.assert_array_equal(KernelStore.open(path).load("ntk"), expected["ntk"])
    if damage.startswith("nngp"):
        with pytest.raises(ValueError, match=r"metadata of 'nngp', .*k\.zarr/nngp/zarr\.json, is missing or "
                                             r"damaged.*run the same compute_kernel call"):
            KernelStore.open(path).load("nngp")
    rerun = compute_kernel(NET, POINTS, store=path, tile_size=4, progress=False)
    # chunks whose metadata only was damaged are intact and verify: nothing is recomputed
    lost = TILES if damage == "nngp folder deleted" else []
    assert computed == [(min(4, 10 - 4 * i), ("nngp",)) for i, _ in lost]
    assert chunk_mtimes(path, "ntk") == ntk_chunks   # the intact array was not rewritten
    for name in ("nngp", "ntk"):
        np.testing.assert_array_equal(rerun.load(name), expected[name])
    computed.clear()
    compute_kernel(NET, POINTS, store=path, tile_size=4, progress=False)
    assert computed == []


# 2. an edited activation function ------------------------------------------------------
SOURCE = """
import numpy as np
import torch

SCALE = 1.0
SHIFT = np.float64(0.0)
OFFSET = torch.tensor(0.0, dtype=torch.float64)


def helper(z):
    return torch.sin(z)


def act(z):
    return SCALE * helper(z) + SHIFT + OFFSET
"""


@pytest.mark.parametrize("edit", [("return SCALE * helper(z)", "return SCALE * torch.cos(z)"),
                                  ("torch.sin(z)", "torch.cos(z)"),
                                  ("SCALE = 1.0", "SCALE = 2.0"),
                                  ("np.float64(0.0)", "np.float64(0.5)"),
                                  ("torch.tensor(0.0,", "torch.tensor(0.5,")])
def test_an_edited_elementwise_function_is_another_architecture(edit, tmp_path, monkeypatch):
    """Before: a function edited between two runs under the same name resumed, sin and cos
    tiles mixed.  Now the identity holds a digest of its code (and of the module's functions
    and literal globals it uses): the store refuses; an unedited reload resumes."""
    monkeypatch.setattr(sys, "dont_write_bytecode", True)   # an edit within the same second
    monkeypatch.syspath_prepend(str(tmp_path))
    module_file = tmp_path / "ntklab_test_activation.py"
    module_file.write_text(SOURCE)
    monkeypatch.setitem(sys.modules, "ntklab_test_activation", None)   # so that it is removed afterwards
    del sys.modules["ntklab_test_activation"]
    module = importlib.import_module("ntklab_test_activation")

    def net():
        return nk.serial(nk.Dense(4), nk.Elementwise(module.act, n_points=32), nk.Dense(1))

    x = POINTS[:6]
    store = compute_kernel(net(), x, store=tmp_path / "k.zarr", tile_size=3, progress=False)
    np.testing.assert_allclose(store.load("ntk"), net().kernel(x, get="ntk").numpy(), rtol=1e-13)
    module = importlib.reload(module)   # the same source: the same identity, resumed
    assert compute_kernel(net(), x, store=tmp_path / "k.zarr", tile_size=3, progress=False).complete
    module_file.write_text(SOURCE.replace(*edit))
    module = importlib.reload(module)
    assert float(module.act(torch.tensor(0.5))) != float(torch.sin(torch.tensor(0.5)))
    with pytest.raises(ValueError, match="refusing to resume.*architecture: store has "):
        compute_kernel(net(), x, store=tmp_path / "k.zarr", tile_size=3, progress=False)


def test_builtins_are_identified_by_name_and_anonymous_functions_not_at_all():
    assert nk.Elementwise(torch.sin).identity == "Elementwise(torch._VariableFunctionsClass.sin)"
    assert nk.Elementwise(lambda z: z).identity is None

    def local(z):
        return z
    assert nk.Elementwise(local).identity is None
    assert nk.Elementwise(_reads_an_object).identity is None    # a global that cannot be hashed


class _Scale:
    factor = 2.0


SCALER = _Scale()


def _reads_an_object(z):
    return SCALER.factor * z


# 3. chunks moved with their markers ----------------------------------------------------
def swap(a, b):
    data = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(data)


@pytest.mark.parametrize("move", ["positions", "arrays", "stores"])
def test_chunks_moved_with_their_markers_do_not_verify(move, tmp_path):
    """Before: swapping two tiles' chunks together with their markers (or two arrays' chunks
    and checksums, or copying a tile of another store) loaded a wrong matrix without error.
    Now the checksum binds array name, position and configuration: load names the tiles, and
    a rerun recomputes exactly those, giving the uninterrupted run's matrix."""
    x1, x2 = POINTS[:8], POINTS[2:]
    path = tmp_path / "k.zarr"
    store = compute_kernel(NET, x1, x2, store=path, tile_size=4, progress=False)
    expected = {name: store.load(name) for name in ("nngp", "ntk")}
    done, markers = path / "tiles_done", {t: (path / "tiles_done" / t).read_bytes() for t in ("0_0", "0_1")}
    if move == "positions":   # tiles 0_0 and 0_1 exchange places, chunks and markers alike
        for name in ("nngp", "ntk"):
            swap(path / name / "c/0/0", path / name / "c/0/1")
        swap(done / "0_0", done / "0_1")
        bad = "0_0, 0_1"
    elif move == "arrays":   # tile 0_0's nngp and ntk chunks exchanged, and their checksums
        swap(path / "nngp/c/0/0", path / "ntk/c/0/0")
        digests = json.loads(markers["0_0"])
        (done / "0_0").write_text(json.dumps({"nngp": digests["ntk"], "ntk": digests["nngp"]}))
        bad = "0_0"
    else:   # tile 0_1 of a store of other inputs, same shape
        other = compute_kernel(NET, x1 * 2, x2, store=tmp_path / "other.zarr", tile_size=4, progress=False)
        for name in ("nngp", "ntk"):
            shutil.copy(other.path / name / "c/0/1", path / name / "c/0/1")
        shutil.copy(other.path / "tiles_done/0_1", done / "0_1")
        bad = "0_1"
    with pytest.raises(ValueError, match=rf"damaged tile\(s\) \({bad}: "):
        KernelStore.open(path).load("ntk")
    rerun = compute_kernel(NET, x1, x2, store=path, tile_size=4, progress=False)
    for name in ("nngp", "ntk"):
        np.testing.assert_array_equal(rerun.load(name), expected[name])


def test_a_store_of_the_previous_format_loads_but_is_not_resumed(tmp_path):
    """Format 2 checksums hold the data alone: such a store still loads; resuming is refused."""
    path = tmp_path / "k.zarr"
    store = compute_kernel(NET, POINTS, store=path, tile_size=4, progress=False)
    expected = store.load("ntk")
    config = dict(store.config, format="ntklab-kernel-store/2")
    (path / "ntklab.json").write_text(json.dumps(config))
    for tile in store.tiles():
        rows, cols = store.tiling.slices(tile)
        digests = {name: engine._digest(np.ascontiguousarray(store._array(name)[rows, cols]))
                   for name in store.names}
        (path / "tiles_done" / f"{tile[0]}_{tile[1]}").write_text(json.dumps(digests))
    np.testing.assert_array_equal(KernelStore.open(path).load("ntk"), expected)
    with pytest.raises(ValueError, match="older ntklab .*ntklab-kernel-store/2.*new store path"):
        compute_kernel(NET, POINTS, store=path, tile_size=4, progress=False)
    (path / "ntklab.json").write_text('{"format": ')
    with pytest.raises(ValueError, match=r"configuration .*ntklab\.json' is damaged.*delete the store"):
        KernelStore.open(path)


# 4. several processes on one store -----------------------------------------------------
def test_a_store_created_by_another_process_meanwhile_is_joined(tmp_path, monkeypatch, computed):
    """Before: the process whose rename came second failed with a raw OSError [Errno 39].
    Here another creation (which also computes every tile) happens just before this one's
    rename: this call joins that store and computes nothing."""
    path = tmp_path / "k.zarr"
    real_replace = os.replace
    raced = []

    def replace(source, destination):
        if str(destination) == str(path) and not raced:
            raced.append(True)
            compute_kernel(NET, POINTS, store=path, tile_size=4, progress=False)
        return real_replace(source, destination)

    monkeypatch.setattr(os, "replace", replace)
    store = compute_kernel(NET, POINTS, store=path, tile_size=4, progress=False)
    assert raced and len(computed) == len(TILES)   # all by the other creation
    np.testing.assert_allclose(store.load("ntk"), NET.kernel(POINTS, get="ntk").numpy(), rtol=1e-13)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.zarr"]   # no staging folder left


def test_tiles_claimed_by_another_process_are_left_to_it_then_taken_over(tmp_path, monkeypatch):
    """Another process (a stdlib script) claims tiles 0_1 and 1_1 as a computing process does,
    and exits 0.5 s later without finishing them, as if killed.  This process computes the
    other tiles first, waits for those claims, then computes them itself: each tile once."""
    path = tmp_path / "k.zarr"
    expected = compute_kernel(NET, POINTS, store=path, tile_size=4, progress=False).load("ntk")
    store = KernelStore.open(path)
    store.forget(store.tiles())
    held = [(0, 1), (1, 1)]
    offsets = [1 + store.tiles().index(tile) for tile in held]
    script = (f"import fcntl, os, time\nfd = os.open({str(path / 'claims.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
              f"for k in {offsets}:\n    fcntl.lockf(fd, fcntl.LOCK_EX, 1, k)\n"
              f"print('held', flush=True)\ntime.sleep(0.5)\n")
    other = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "held"
        start, order = time.monotonic(), []
        original = engine.KernelStore.write_tile

        def write_tile(self, tile, arrays):
            order.append((tile, time.monotonic() - start))
            original(self, tile, arrays)

        monkeypatch.setattr(engine.KernelStore, "write_tile", write_tile)
        store = compute_kernel(NET, POINTS, store=path, tile_size=4, progress=False)
    finally:
        other.wait(timeout=10)
    assert [tile for tile, _ in order] == [t for t in TILES if t not in held] + held
    assert min(t for tile, t in order if tile in held) > 0.4   # after it let go
    assert max(t for tile, t in order if tile not in held) < 0.4   # the others at once
    np.testing.assert_array_equal(store.load("ntk"), expected)


WORKER = textwrap.dedent("""
    import json, os, sys, time
    import torch
    torch.set_num_threads(1)
    import ntklab as nk
    from ntklab.kernels import engine
    go, log, path = sys.argv[1:]
    written, compute, write = [], engine.compute_tile, engine.KernelStore.write_tile

    def slow(*args):
        time.sleep(0.05)
        return compute(*args)

    def logged(self, tile, arrays):
        written.append(list(tile))
        write(self, tile, arrays)

    engine.compute_tile, engine.KernelStore.write_tile = slow, logged
    net = nk.serial(nk.Dense(4, b_std=0.1), nk.Relu(), nk.Dense(1))
    x = torch.randn(24, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.001)
    engine.compute_kernel(net, x, store=path, tile_size=3, progress=False)
    with open(log, "w") as f:
        json.dump(written, f)
""")


@pytest.mark.slow
def test_two_processes_started_at_once_share_the_tiles(tmp_path):
    """Before: the second creation failed with OSError [Errno 39], and staggered starts both
    computed every tile.  Now two real processes released at the same instant both succeed,
    never compute a tile twice, share the work, and the matrix is the in-memory kernel."""
    path, go = tmp_path / "k.zarr", tmp_path / "go"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(go), str(tmp_path / f"log{i}"), str(path)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
               for i in range(2)]
    for worker in workers:
        assert worker.stdout.readline().strip() == "ready", worker.communicate()[1][-2000:]
    go.touch()
    for worker in workers:
        _, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err[-2000:]
    logs = [{tuple(t) for t in json.loads((tmp_path / f"log{i}").read_text())} for i in range(2)]
    store = KernelStore.open(path)
    assert not logs[0] & logs[1], "a tile was computed twice"
    assert logs[0] | logs[1] == set(store.tiles()) and logs[0] and logs[1]
    x = torch.randn(24, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    np.testing.assert_allclose(store.load("ntk"), NET.kernel(x, get="ntk").numpy(), rtol=1e-13)


# 5. a full disk ------------------------------------------------------------------------
@pytest.mark.parametrize("where, code", [("chunk", errno.ENOSPC), ("marker", errno.ENOSPC),
                                         ("marker", errno.EDQUOT)])
def test_a_full_disk_stops_with_one_message_and_the_rerun_resumes(where, code, tmp_path, monkeypatch):
    """Before: a raw ENOSPC traceback.  Now one ValueError naming the store, what is kept and
    the fix; the rerun keeps the finished tiles and ends with the uninterrupted run's matrix."""
    expected = compute_kernel(NET, POINTS, store=tmp_path / "whole.zarr", tile_size=4, progress=False)
    path = tmp_path / "k.zarr"
    writes = []
    if where == "chunk":
        import zarr.storage._local as local
        target, attribute = local, "_put"
    else:
        target, attribute = engine, "atomic_write_bytes"
    original = getattr(target, attribute)

    def write(file, *args, **kwargs):
        if str(path) in str(file) and "zarr.json" not in str(file):
            writes.append(file)
            if len(writes) > (2 * 2 if where == "chunk" else 2):   # after two finished tiles
                raise OSError(code, os.strerror(code), str(file))
        return original(file, *args, **kwargs)

    monkeypatch.setattr(target, attribute, write)
    with pytest.raises(ValueError, match=rf"no space left for the kernel store '.*k\.zarr' \({os.strerror(code)}\): "
                                         r"its 2 finished tile\(s\) are kept; free some space .*again to resume"):
        compute_kernel(NET, POINTS, store=path, tile_size=4, progress=False)
    monkeypatch.setattr(target, attribute, original)
    kept = {p.name: p.stat().st_mtime_ns for p in (path / "tiles_done").iterdir()}
    assert sorted(kept) == ["0_0", "0_1"]
    rerun = compute_kernel(NET, POINTS, store=path, tile_size=4, progress=False)
    assert all((path / "tiles_done" / name).stat().st_mtime_ns == mtime for name, mtime in kept.items())
    for name in ("nngp", "ntk"):
        np.testing.assert_array_equal(rerun.load(name), expected.load(name))
