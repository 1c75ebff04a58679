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
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .._extras import import_extra
from .._validation import as_inputs, check_same_features, input_dtype, positive_int
from ..arch.serial import Serial, canonical_get
from ..arch.spec import parse_architecture
from ..files import atomic_write_bytes, check_writable, remove_stale_staging
from ..tiling import Tile, Tiling

FORMAT = "ntklab-kernel-store/2"   # 2: markers hold each tile's SHA-256
DONE = "tiles_done"
SCHEDULER_TIMEOUT = "30s"   # to reach a Dask scheduler
MARKER = re.compile(r"(\d+)_(\d+)")


def _digest(array: np.ndarray) -> str:
    digest = hashlib.sha256(str((array.dtype.str, array.shape)).encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


@contextlib.contextmanager
def _quiet_zarr():
    """zarr logs a traceback per failed chunk decode (asyncio tasks); the failure itself is
    reported by `KernelStore` as a damaged tile, so those logs are silenced meanwhile."""
    loggers = [logging.getLogger(name) for name in ("asyncio", "zarr")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _fingerprint(x: torch.Tensor | None) -> str | None:
    if x is None:
        return None
    array = np.ascontiguousarray(x.detach().cpu().numpy())
    digest = hashlib.sha256(str((array.dtype.str, array.shape)).encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class KernelStore:
    """A zarr store of kernel matrices, complete or partly computed.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> store = nk.kernels.compute_kernel(nk.mlp(1, 8), torch.randn(6, 2), store="k.zarr", tile_size=3, get="nngp", progress=False)
    >>> store.load("nngp").shape
    (6, 6)
    """
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
        """Tiles with a marker `I_J` (claimed finished; `verify` checks their data).  Anything
        else in the folder, e.g. an editor's backup file, is ignored."""
        wanted = set(self.tiles())
        found = (MARKER.fullmatch(f.name) for f in (self.path / DONE).iterdir() if f.is_file())
        return {tile for tile in ((int(m[1]), int(m[2])) for m in found if m) if tile in wanted}

    @property
    def complete(self) -> bool:
        return len(self.done()) == len(self.tiles())

    def _group(self, mode: str = "r"):
        zarr = import_extra("zarr", "engine")
        return zarr.open_group(store=str(self.path), mode=mode)

    def _marker(self, tile: Tile) -> Path:
        return self.path / DONE / f"{tile[0]}_{tile[1]}"

    def write_tile(self, tile: Tile, arrays: dict[str, np.ndarray]) -> None:
        """Write one tile's chunks, then its marker holding the SHA-256 of each array as
        stored (the tile is finished only then; the marker itself is written atomically)."""
        rows, cols = self.tiling.slices(tile)
        group = self._group("r+")
        digests = {}
        for name in self.names:
            stored = np.ascontiguousarray(arrays[name], dtype=group[name].dtype)
            group[name][rows, cols] = stored
            digests[name] = _digest(stored)
        atomic_write_bytes(self._marker(tile), json.dumps(digests).encode())

    def _read_tile(self, group, tile: Tile, names: Sequence[str]) -> dict[str, np.ndarray] | None:
        """The tile's arrays if they are readable and match the marker's checksums, else None."""
        try:
            digests = json.loads(self._marker(tile).read_text())
            rows, cols = self.tiling.slices(tile)
            arrays = {name: group[name][rows, cols] for name in names}
        except Exception:  # unreadable marker or chunk (a corrupt chunk fails to decompress)
            return None
        if any(digests.get(name) != _digest(np.ascontiguousarray(arrays[name])) for name in names):
            return None
        return arrays

    def verify(self, names: Sequence[str] | None = None) -> list[Tile]:
        """Finished tiles whose data are missing, unreadable or differ from their checksum."""
        group = self._group()
        names = self.names if names is None else tuple(names)
        with _quiet_zarr():
            return sorted(t for t in self.done() if self._read_tile(group, t, names) is None)

    def forget(self, tiles: Sequence[Tile]) -> None:
        """Mark `tiles` as not computed (the next run computes them again)."""
        for tile in tiles:
            self._marker(tile).unlink(missing_ok=True)

    def load(self, name: str) -> np.ndarray:
        """The whole `[N1, N2]` matrix `name` ("nngp" or "ntk"), mirrored if symmetric; every
        tile is checked against its checksum, and bad tiles are named."""
        if name not in self.names:
            raise ValueError(f"the store {self.path} holds {list(self.names)}, not {name!r}")
        missing = len(self.tiles()) - len(self.done())
        if missing:
            raise ValueError(f"the store {self.path} is missing {missing} tile(s); run the same "
                             f"compute_kernel call (or ntklab command) again to finish it")
        group = self._group()
        matrix = np.full(self.shape, np.nan, dtype=group[name].dtype)
        bad = []
        with _quiet_zarr():
            for tile in self.tiles():
                arrays = self._read_tile(group, tile, (name,))
                if arrays is None:
                    bad.append(tile)
                    continue
                rows, cols = self.tiling.slices(tile)
                matrix[rows, cols] = arrays[name]
                if self.symmetric and tile[0] != tile[1]:
                    matrix[cols, rows] = arrays[name].T
        if bad:
            shown = ", ".join(f"{i}_{j}" for i, j in bad[:10]) + (", ..." if len(bad) > 10 else "")
            raise ValueError(f"the store {self.path} has {len(bad)} damaged tile(s) ({shown}: "
                             f"missing, unreadable or not matching their checksum); run the same "
                             f"compute_kernel call (or ntklab kernel command) again to recompute "
                             f"exactly those")
        if self.symmetric:  # diagonal tiles hold both triangles; keep the upper one, mirrored
            matrix = np.triu(matrix) + np.triu(matrix, 1).T
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
    zarr = import_extra("zarr", "engine")
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
        remove_stale_staging(path)   # left by creations that were killed
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
                 device: str | None, max_memory, fused: bool = False) -> dict[str, np.ndarray]:
    """One tile: `arch.kernel(rows, cols)` as numpy arrays (runs on a worker)."""
    result = arch.kernel(rows, cols, tuple(names), dtype=rows.dtype, device=device,
                         max_memory=max_memory, progress=False, fused=fused)
    return {name: getattr(result, name).cpu().numpy() for name in names}


def _init_worker(threads: int, parent: int) -> None:
    """A process-pool worker: `threads` torch threads, and it exits when its parent dies
    (a `kill -9` of the submitting process must not leave workers running)."""
    torch.set_num_threads(threads)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="ntklab-parent-watch").start()


class _InProcess(cf.Executor):
    """Runs each task when it is submitted (the "local" scheduler)."""

    def submit(self, fn, /, *args, **kwargs):
        future = cf.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as err:  # delivered through the future, like other executors
            future.set_exception(err)
        return future


def check_scheduler(scheduler, workers: int | None = None) -> None:
    """Validate `scheduler` and `workers` (cheap: nothing is started or connected)."""
    if workers is not None:
        positive_int(workers, "workers")
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
                                      initializer=_init_worker, initargs=(threads, os.getpid()))
        return pool, 2 * workers, pool
    Client = import_extra("distributed", "engine").Client
    if isinstance(scheduler, Client):
        client, owned = scheduler, None
    else:
        try:
            client = Client(scheduler, timeout=SCHEDULER_TIMEOUT)
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
                   max_memory: int | str | None = "1GiB", progress: bool | None = None,
                   verify: bool = True, fused: bool = False) -> KernelStore:
    """Compute (or finish) the NNGP/NTK matrices of `arch` between `x1` and `x2`
    into the zarr store `store`, tile by tile; returns the `KernelStore`
    (`.load("ntk")` gives the matrix).  See the module docstring for resuming
    and for the schedulers; `max_memory` bounds each tile's working memory.  The
    store is keyed by `arch.identity`: an architecture that cannot be identified
    exactly (a lambda) is computed, but never resumed.  dtype as `Serial.kernel`.
    `verify`: check every finished tile against its checksum first and compute the
    damaged ones again (reads the store once).  `fused`: as `Serial.kernel`.

    Parameters
    ----------
    arch : Serial
    x1, x2 : tensor or array
        Inputs (`x2=None`: `x1` with itself, upper tiles only).
    store : str or Path
        The zarr store (created, or resumed when it holds the same computation).
    get : {"nngp", "ntk"} or tuple, optional
    tile_size : int
        Rows and columns per tile.
    scheduler : None, "local", "processes" or "tcp://host:port"
        Where the tiles are computed (a Dask cluster for an address).
    workers, device, max_memory, progress, verify, fused, dtype
        See above.

    Returns
    -------
    KernelStore

    Raises
    ------
    ValueError
        For a store that cannot be written or holds a different computation.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> net = nk.mlp(2, 64, b_std=0.1)
    >>> x = torch.randn(10, 3, dtype=torch.float64)
    >>> store = nk.kernels.compute_kernel(net, x, store="k.zarr", tile_size=4, get="ntk", progress=False)
    >>> bool(torch.allclose(torch.as_tensor(store.load("ntk")), net.kernel(x, get="ntk"), rtol=1e-12))
    True
    """
    arch = parse_architecture(arch, argument="arch") if isinstance(arch, str) else arch
    if not isinstance(arch, Serial):
        raise ValueError(f"arch must be an nk.serial(...) architecture or a string such as "
                         f"'Conv(64, (3, 3), \"SAME\"), Relu(), Flatten(), Dense(1)', got {arch!r}")
    names = canonical_get(get)
    dtype = input_dtype(x1, dtype)
    x1 = as_inputs(x1, "x1", images=arch.takes_images, sequences=arch.takes_sequences, dtype=dtype)
    if x2 is not None:
        x2 = as_inputs(x2, "x2", images=arch.takes_images, sequences=arch.takes_sequences, dtype=dtype)
        check_same_features(x1, x2)
    tile_size = positive_int(tile_size, "tile_size")
    check_scheduler(scheduler, workers)
    config = {"format": FORMAT, "architecture": arch.identity, "get": list(names),
              "shape": [len(x1), len(x1 if x2 is None else x2)], "tile_size": tile_size,
              "dtype": str(dtype).replace("torch.", ""), "x1_sha256": _fingerprint(x1),
              "x2_sha256": _fingerprint(x2)}
    if not Path(store).exists():
        check_writable(store, "store")
    # the scheduler is reached (workers validated, tcp:// connected) before the store exists,
    # so a failed start leaves nothing behind
    executor, window, owned = _executor(scheduler, workers)
    try:
        kernel_store = open_store(store, config, dtype)
        if verify:
            kernel_store.forget(kernel_store.verify())   # damaged tiles are computed again
        done = kernel_store.done()
        todo = [tile for tile in kernel_store.tiles() if tile not in done]

        def tasks():
            for tile in todo:
                rows, cols = kernel_store.tiling.slices(tile)
                same = kernel_store.tiling.on_diagonal(tile)
                other = None if same else (x1 if x2 is None else x2)[cols]
                yield tile, compute_tile, (arch, x1[rows], other, names, device, max_memory,
                                             fused)

        total = len(kernel_store.tiles())
        show = total > 1 if progress is None else progress
        with tqdm(total=total, initial=total - len(todo), disable=not show or not todo,
                  desc="kernel tiles", unit="tile", dynamic_ncols=True) as bar:
            for tile, arrays in _in_window(executor, tasks(), window):
                kernel_store.write_tile(tile, arrays)
                bar.update()
    finally:
        if isinstance(owned, cf.Executor):
            owned.shutdown(wait=False, cancel_futures=True)
        elif owned is not None:
            owned.close()
    return kernel_store
