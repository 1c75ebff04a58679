"""Tiled, resumable, optionally distributed kernel matrices on disk (zarr + Dask).

`compute_kernel(arch, x1, x2, store="k.zarr")` splits the `[N1, N2]` NNGP/NTK
matrices into `tile_size x tile_size` tiles, computes each tile with
`arch.kernel` on its rows and columns, and writes it into a zarr store (one zarr
chunk per tile).  For a symmetric matrix (`x2=None`) only the tiles on and above
the diagonal are computed; `KernelStore.load` mirrors them.

Resuming: a tile counts as finished only once its chunks are written and an
empty marker file `tiles_done/I_J` has been created after them, so killing the
process at any point loses at most the tiles in flight.  Running the same call
again keeps every finished tile and computes the rest; each tile's numbers do
not depend on which run computed it, so the final matrix is identical to that of
an uninterrupted run.  The store records its configuration (architecture,
SHA-256 of the inputs, kernels, tile size, dtype) and refuses to resume into a
store made with a different one.

Schedulers: `None`/"local" computes tiles one after another in this process
(torch parallelises inside each tile); "processes" uses `workers` local
processes; "tcp://host:port" (or a `distributed.Client`) sends tiles to a Dask
cluster (`dask.distributed`), e.g. of GPU machines with `device="auto"`.  Tiles
travel to the workers with their rows and columns and come back as arrays; only
this process writes the store, so workers need no shared file system.
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .._validation import as_inputs, check_same_features, input_dtype, positive_int
from ..arch.serial import Serial, canonical_get
from ..arch.spec import parse_architecture
from ..tiling import Tile, Tiling

FORMAT = "ntklab-kernel-store/1"
DONE = "tiles_done"
MARKER = re.compile(r"(\d+)_(\d+)")


def _fingerprint(x: torch.Tensor | None) -> str | None:
    if x is None:
        return None
    array = np.ascontiguousarray(x.detach().cpu().numpy())
    digest = hashlib.sha256(str((array.dtype.str, array.shape)).encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class KernelStore:
    """A zarr store of kernel matrices, complete or partly computed."""
    path: Path
    config: dict

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.config["get"])

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.config["shape"])

    @property
    def symmetric(self) -> bool:
        return self.config["x2_sha256"] is None

    @property
    def tile_size(self) -> int:
        return self.config["tile_size"]

    @property
    def tiling(self) -> Tiling:
        return Tiling(*self.shape, self.tile_size, symmetric=self.symmetric)

    def tiles(self) -> list[Tile]:
        """(row tile, column tile) indices to compute: upper ones when symmetric."""
        return self.tiling.tiles()

    def done(self) -> set[Tile]:
        """Finished tiles: markers named `I_J` of a tile of this store (anything else in
        the folder, e.g. an editor's backup file, is ignored)."""
        wanted = set(self.tiles())
        found = (MARKER.fullmatch(f.name) for f in (self.path / DONE).iterdir() if f.is_file())
        return {tile for tile in ((int(m[1]), int(m[2])) for m in found if m) if tile in wanted}

    @property
    def complete(self) -> bool:
        return len(self.done()) == len(self.tiles())

    def _group(self, mode: str = "r"):
        import zarr
        return zarr.open_group(store=str(self.path), mode=mode)

    def write_tile(self, tile: Tile, arrays: dict[str, np.ndarray]) -> None:
        """Write one tile's chunks, then its marker (the tile is finished only then)."""
        rows, cols = self.tiling.slices(tile)
        group = self._group("r+")
        for name in self.names:
            group[name][rows, cols] = arrays[name]
        (self.path / DONE / f"{tile[0]}_{tile[1]}").touch()

    def load(self, name: str) -> np.ndarray:
        """The whole `[N1, N2]` matrix `name` ("nngp" or "ntk"), mirrored if symmetric."""
        if name not in self.names:
            raise ValueError(f"the store {self.path} holds {list(self.names)}, not {name!r}")
        missing = len(self.tiles()) - len(self.done())
        if missing:
            raise ValueError(f"the store {self.path} is missing {missing} tile(s); run the same "
                             f"compute_kernel call (or ntklab command) again to finish it")
        matrix = self._group()[name][:]
        if self.symmetric:
            upper = np.triu(matrix)
            matrix = upper + np.triu(matrix, 1).T
        return matrix

    @classmethod
    def open(cls, path: str | Path) -> "KernelStore":
        path = Path(path)
        meta = path / "ntklab.json"
        if not meta.is_file():
            raise ValueError(f"{str(path)!r} is not an ntklab kernel store (no ntklab.json); "
                             f"choose a new path for the store")
        return cls(path, json.loads(meta.read_text()))


def _create(path: Path, config: dict, dtype: torch.dtype) -> KernelStore:
    """Create the empty store in a staging folder and rename it into place."""
    import zarr
    path.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.partial-"))
    try:
        group = zarr.open_group(store=str(stage), mode="w")
        numpy_dtype = torch.empty((), dtype=dtype).numpy().dtype
        for name in config["get"]:
            group.create_array(name, shape=tuple(config["shape"]), dtype=numpy_dtype,
                               chunks=(config["tile_size"],) * 2, fill_value=np.nan)
        (stage / DONE).mkdir()
        (stage / "ntklab.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        os.replace(stage, path)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return KernelStore(path, config)


def open_store(path: str | Path, config: dict, dtype: torch.dtype) -> KernelStore:
    """The store at `path`: created if absent, resumed if its configuration matches."""
    path = Path(path)
    if not path.exists():
        return _create(path, config, dtype)
    store = KernelStore.open(path)
    if config["architecture"] is None or store.config.get("architecture") is None:
        raise ValueError(f"refusing to resume into {str(path)!r}: the architecture cannot be "
                         f"identified exactly (an anonymous function such as a lambda in "
                         f"nk.Elementwise), so its tiles might be of another network; use a "
                         f"named module-level function, a new store path, or delete that one")
    differ = [key for key in sorted(set(config) | set(store.config))
              if config.get(key) != store.config.get(key)]
    if differ:
        short = lambda value: value[:12] + "..." if isinstance(value, str) and len(value) > 40 else value  # noqa: E731
        detail = "; ".join(f"{key}: store has {short(store.config.get(key))!r}, this run "
                           f"{short(config.get(key))!r}" for key in differ)
        raise ValueError(f"refusing to resume into {str(path)!r}: it was made with a different "
                         f"configuration ({detail}); use a new store path or delete that one")
    return store


# ----------------------------------------------------------------------------- tiles

def compute_tile(arch, rows: torch.Tensor, cols: torch.Tensor | None, names: Sequence[str],
                 device: str | None, max_memory) -> dict[str, np.ndarray]:
    """One tile: `arch.kernel(rows, cols)` as numpy arrays (runs on a worker)."""
    result = arch.kernel(rows, cols, tuple(names), dtype=rows.dtype, device=device,
                         max_memory=max_memory, progress=False)
    return {name: getattr(result, name).cpu().numpy() for name in names}


def _set_threads(threads: int) -> None:
    torch.set_num_threads(threads)


class _InProcess(cf.Executor):
    """Runs each task when it is submitted (the "local" scheduler)."""

    def submit(self, fn, /, *args, **kwargs):
        future = cf.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as err:  # delivered through the future, like other executors
            future.set_exception(err)
        return future


def _check_scheduler(scheduler) -> None:
    if scheduler in (None, "local", "processes") or (isinstance(scheduler, str) and "://" in scheduler):
        return
    if type(scheduler).__name__ != "Client":
        raise ValueError(f"scheduler must be 'local', 'processes', a Dask scheduler address "
                         f"'tcp://host:port' or a distributed.Client, got {scheduler!r}")


def _executor(scheduler, workers: int | None) -> tuple[cf.Executor, int, Any]:
    """(executor, tasks to keep in flight, object to close afterwards)."""
    if scheduler is None or scheduler == "local":
        return _InProcess(), 1, None
    if scheduler == "processes":
        workers = positive_int(workers or os.cpu_count() or 1, "workers")
        threads = max(1, (os.cpu_count() or 1) // workers)
        import multiprocessing
        pool = cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                      initializer=_set_threads, initargs=(threads,))
        return pool, 2 * workers, pool
    try:
        from distributed import Client
    except ImportError as err:  # pragma: no cover - dask[distributed] is a dependency
        raise ValueError("scheduler='tcp://...' needs dask.distributed: pip install "
                         "'dask[distributed]'") from err
    if isinstance(scheduler, Client):
        client, owned = scheduler, None
    else:
        try:
            client = Client(scheduler, timeout="30s")
        except OSError as err:
            raise ValueError(f"scheduler {scheduler!r}: cannot reach the Dask scheduler ({err}); "
                             f"start one with `dask scheduler` and workers with `dask worker "
                             f"{scheduler}`") from err
        owned = client
    slots = max(1, sum(client.nthreads().values()))
    return client.get_executor(pure=False), 2 * slots, owned


def _in_window(executor: cf.Executor, tasks: Iterator, window: int) -> Iterator[tuple[Any, Any]]:
    """Yield (key, result) as tasks finish, keeping at most `window` in flight."""
    pending: dict[cf.Future, Any] = {}
    for key, fn, args in tasks:
        pending[executor.submit(fn, *args)] = key
        while len(pending) >= window:
            finished, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for future in finished:
                yield pending.pop(future), future.result()
    for future in cf.as_completed(list(pending)):
        yield pending.pop(future), future.result()


def compute_kernel(arch, x1, x2=None, *, store: str | Path, get: str | Sequence[str] | None = None,
                   tile_size: int = 256, dtype: torch.dtype | None = None,
                   scheduler=None, workers: int | None = None, device: str | None = None,
                   max_memory: int | str | None = "1GiB", progress: bool | None = None
                   ) -> KernelStore:
    """Compute (or finish) the NNGP/NTK matrices of `arch` between `x1` and `x2`
    into the zarr store `store`, tile by tile; returns the `KernelStore`
    (`.load("ntk")` gives the matrix).  See the module docstring for resuming
    and for the schedulers; `max_memory` bounds each tile's working memory.  The
    store is keyed by `arch.identity`: an architecture that cannot be identified
    exactly (a lambda) is computed, but never resumed.  dtype as `Serial.kernel`."""
    arch = parse_architecture(arch) if isinstance(arch, str) else arch
    if not isinstance(arch, Serial):
        raise ValueError(f"arch must be an nk.serial(...) architecture or a string such as "
                         f"'Conv(64, (3, 3), \"SAME\"), Relu(), Flatten(), Dense(1)', got {arch!r}")
    names = canonical_get(get)
    dtype = input_dtype(x1, dtype)
    x1 = as_inputs(x1, "x1", images=arch.takes_images, dtype=dtype)
    if x2 is not None:
        x2 = as_inputs(x2, "x2", images=arch.takes_images, dtype=dtype)
        check_same_features(x1, x2)
    tile_size = positive_int(tile_size, "tile_size")
    _check_scheduler(scheduler)
    config = {"format": FORMAT, "architecture": arch.identity, "get": list(names),
              "shape": [len(x1), len(x1 if x2 is None else x2)], "tile_size": tile_size,
              "dtype": str(dtype).replace("torch.", ""), "x1_sha256": _fingerprint(x1),
              "x2_sha256": _fingerprint(x2)}
    kernel_store = open_store(store, config, dtype)
    done = kernel_store.done()
    todo = [tile for tile in kernel_store.tiles() if tile not in done]
    if not todo:
        return kernel_store

    def tasks():
        for tile in todo:
            rows, cols = kernel_store.tiling.slices(tile)
            same = kernel_store.tiling.on_diagonal(tile)
            other = None if same else (x1 if x2 is None else x2)[cols]
            yield tile, compute_tile, (arch, x1[rows], other, names, device, max_memory)

    executor, window, owned = _executor(scheduler, workers)
    total = len(kernel_store.tiles())
    show = total > 1 if progress is None else progress
    try:
        with tqdm(total=total, initial=total - len(todo), disable=not show, desc="kernel tiles",
                  unit="tile", dynamic_ncols=True) as bar:
            for tile, arrays in _in_window(executor, tasks(), window):
                kernel_store.write_tile(tile, arrays)
                bar.update()
    finally:
        if isinstance(owned, cf.Executor):
            owned.shutdown(wait=False, cancel_futures=True)
        elif owned is not None:
            owned.close()
    return kernel_store
