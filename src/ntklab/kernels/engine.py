"""Tiled, resumable, optionally distributed kernel matrices on disk (zarr + Dask).

`compute_kernel(arch, x1, x2, store="k.zarr")` splits the `[N1, N2]` NNGP/NTK
matrices into `tile_size x tile_size` tiles, computes each tile with
`arch.kernel` on its rows and columns, and writes it into a zarr store (one zarr
chunk per tile and array).  For a symmetric matrix (`x2=None`) only the tiles on
and above the diagonal are computed; `KernelStore.load` mirrors them.

Resuming: a tile counts as finished only once its chunks are written and a marker
file `tiles_done/I_J` has been written after them (atomically), holding the SHA-256
of each array's chunk; the checksum binds the array's name, the tile's position and
the store's configuration, so a chunk moved to another place does not verify.
Killing the process at any point loses at most the tiles in flight.  Running the
same call again keeps every finished tile and computes the rest; each tile's numbers
do not depend on which run computed it, so the final matrix is identical to that of
an uninterrupted run.  The store records its configuration (architecture,
SHA-256 of the inputs, kernels, tile size, dtype) and refuses to resume into a
store made with a different one.

Damage: a rerun rewrites zarr metadata that is missing or damaged (the chunks are
kept and checked against their checksums), and recomputes exactly the chunks that
are missing or wrong, of that array only (a marker then lists the arrays still
valid); `load` of an intact array works meanwhile.  A full disk stops the run with
one message; the finished tiles stay and a rerun resumes.

Several processes may compute into the same store at once (e.g. the same command
started twice): each claims a tile before computing it with a POSIX lock on a byte
of `claims.lock` (released by the system when its process exits, even killed), skips
tiles claimed by others, and finally waits for those, so no tile is computed twice
and every process returns a complete store.

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
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .._core.extras import import_extra
from .._core.validation import (as_inputs, check_same_features, input_dtype, parse_memory, positive_int,
                           resolve_device)
from ..arch.serial import Serial, canonical_get
from ..arch.spec import parse_architecture
from .._core.files import (atomic_write_bytes, check_writable, default_mode, discard_folder,
                     make_temporary_folder, remove_stale_staging)
from .._core.tiling import Tile, Tiling

if TYPE_CHECKING:
    from .operator import StoredKernel

try:
    import fcntl
    POSIX_LOCKS = True
except ImportError:  # Windows: no POSIX locks, so no claims (one process per store)
    POSIX_LOCKS = False

FORMAT = "ntklab-kernel-store/3"   # 3: checksums bind array name, tile position and configuration
OLD_FORMAT = "ntklab-kernel-store/2"   # checksums of the data alone: loaded, never resumed
DONE = "tiles_done"
CLAIMS = "claims.lock"
SCHEDULER_TIMEOUT = "30s"   # to reach a Dask scheduler
DASK_SCHEMES = ("tcp", "tls", "ws", "wss", "ucx", "inproc")   # distributed's comm protocols
MARKER = re.compile(r"(\d+)_(\d+)")
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _digest(array: np.ndarray, binding: bytes = b"") -> str:
    digest = hashlib.sha256(str((array.dtype.str, array.shape)).encode())
    digest.update(binding)
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


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
    >>> store = nk.kernels.compute_kernel(nk.mlp(1, 8), torch.randn(6, 2), store="k.zarr", tile_size=3,
    ...                                   get="nngp", progress=False)
    >>> store.load("nngp").shape
    (6, 6)
    """

    path: Path
    config: dict

    @property
    def names(self) -> tuple[str, ...]:
        """The kernels the store holds ("nngp", "ntk"), in order."""
        return tuple(self.config["get"])

    @property
    def shape(self) -> tuple[int, int]:
        """(N1, N2): rows and columns of each kernel matrix."""
        return tuple(self.config["shape"])

    @property
    def symmetric(self) -> bool:
        """True for the kernel of x1 with itself (x2=None): only upper tiles are computed."""
        return self.config["x2_sha256"] is None

    @property
    def tile_size(self) -> int:
        """Rows and columns of one tile."""
        return self.config["tile_size"]

    @property
    def tiling(self) -> Tiling:
        """The tiles of the matrix, as the engine walks them."""
        return Tiling(*self.shape, self.tile_size, symmetric=self.symmetric)

    def tiles(self) -> list[Tile]:
        """(row tile, column tile) indices to compute: upper ones when symmetric."""
        return self.tiling.tiles()

    def _marker(self, tile: Tile) -> Path:
        return self.path / DONE / f"{tile[0]}_{tile[1]}"

    def _digests(self, tile: Tile) -> dict[str, str] | None:
        """The checksums in the tile's marker by array name: {} without a marker, None for a
        marker that cannot be read (the tile claims to be finished, and fails `verify`)."""
        try:
            digests = json.loads(self._marker(tile).read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return None
        return digests if isinstance(digests, dict) else None

    def _markers(self) -> dict[Tile, dict[str, str] | None]:
        """`_digests` of every tile with a marker `I_J`.  Anything else in the folder, e.g. an
        editor's backup file, is ignored."""
        if not (self.path / DONE).is_dir():
            return {}   # the folder was deleted: nothing is finished (a rerun makes it again)
        wanted = set(self.tiles())
        found = (MARKER.fullmatch(f.name) for f in (self.path / DONE).iterdir() if f.is_file())
        tiles = {tile for tile in ((int(m[1]), int(m[2])) for m in found if m) if tile in wanted}
        return {tile: self._digests(tile) for tile in tiles}

    def missing(self, tile: Tile) -> tuple[str, ...]:
        """The arrays that `tile` still needs (those its marker does not list)."""
        digests = self._digests(tile)
        return () if digests is None else tuple(n for n in self.names if n not in digests)

    def done(self, names: Sequence[str] | None = None) -> set[Tile]:
        """Tiles whose marker lists every array of `names` (default: all; claimed finished,
        `verify` checks their data)."""
        names = self.names if names is None else tuple(names)
        return {tile for tile, digests in self._markers().items()
                if digests is None or all(name in digests for name in names)}

    @property
    def complete(self) -> bool:
        """True once every tile is computed and checksummed."""
        return len(self.done()) == len(self.tiles())

    def _group(self, mode: str = "r"):
        zarr = import_extra("zarr", "engine")
        return zarr.open_group(store=str(self.path), mode=mode)

    def _array(self, name: str, mode: str = "r"):
        """The zarr array `name`, opened on its own (a damaged group or sibling costs nothing)."""
        zarr = import_extra("zarr", "engine")
        return zarr.open_array(store=str(self.path / name), mode=mode)

    def _binding(self, name: str, tile: Tile) -> bytes:
        """What a chunk's checksum binds besides its data: the array's name, the tile's
        position and the store's configuration (nothing in the old format)."""
        if self.config["format"] == OLD_FORMAT:
            return b""
        return json.dumps([name, list(tile), self.config], sort_keys=True).encode()

    def write_tile(self, tile: Tile, arrays: dict[str, np.ndarray]) -> None:
        """Write the chunks of one tile's `arrays` (all or some of `names`), then its marker
        with their SHA-256 added (the arrays are finished only then; the marker is written
        atomically)."""
        rows, cols = self.tiling.slices(tile)
        digests = self._digests(tile) or {}
        for name, values in arrays.items():
            array = self._array(name, "r+")
            stored = np.ascontiguousarray(values, dtype=array.dtype)
            array[rows, cols] = stored
            digests[name] = _digest(stored, self._binding(name, tile))
        atomic_write_bytes(self._marker(tile), json.dumps(digests).encode())

    def _read(self, array, tile: Tile, name: str, digests: dict | None, verify: bool = True) -> np.ndarray | None:
        """The chunk of `name` if it is readable and matches the marker's checksum (with `verify`; a
        marker listing `name` is required either way), else None.
        One chunk per read, whose failure is caught here: zarr logs nothing for it, so no
        logger is silenced (process-wide logger levels are never changed)."""
        if array is None or digests is None or name not in digests:
            return None
        rows, cols = self.tiling.slices(tile)
        try:
            values = np.ascontiguousarray(array[rows, cols])
        except Exception:  # noqa: BLE001  a corrupt chunk fails to decompress
            return None
        return values if not verify or digests[name] == _digest(values, self._binding(name, tile)) else None

    def _open_or_none(self, name: str):
        try:
            return self._array(name)
        except Exception:  # noqa: BLE001  missing or damaged metadata: every chunk is lost
            return None

    def damaged(self, names: Sequence[str] | None = None) -> dict[Tile, tuple[str, ...]]:
        """Finished tiles with the arrays whose chunks are missing, unreadable or differ from
        their checksum (an unreadable marker: all of them)."""
        names = self.names if names is None else tuple(names)
        arrays = {name: self._open_or_none(name) for name in names}
        damage = {}
        for tile, digests in sorted(self._markers().items()):
            lost = tuple(name for name in names if (digests is None or name in digests)
                         and self._read(arrays[name], tile, name, digests) is None)
            if lost:
                damage[tile] = lost
        return damage

    def verify(self, names: Sequence[str] | None = None) -> list[Tile]:
        """Finished tiles whose data are missing, unreadable or differ from their checksum."""
        return sorted(self.damaged(names))

    def forget(self, tiles: Sequence[Tile], names: Sequence[str] | None = None) -> None:
        """Mark the arrays `names` (default: all) of `tiles` as not computed (the next run
        computes them again); the marker keeps the other arrays' checksums."""
        for tile in tiles:
            digests = self._digests(tile)
            kept = {key: value for key, value in (digests or {}).items()
                    if names is not None and key not in names}
            if kept:
                atomic_write_bytes(self._marker(tile), json.dumps(kept).encode())
            else:
                self._marker(tile).unlink(missing_ok=True)

    def repair(self) -> list[Path]:
        """Rewrite the zarr metadata files (the group's and each array's `zarr.json`) that are
        missing, unreadable or disagree with the configuration; the chunks stay, and `verify`
        then finds those that are lost.  Returns the files rewritten."""
        zarr = import_extra("zarr", "engine")
        shape, chunks = self.shape, (self.tile_size,) * 2
        dtype = np.dtype(self.config["dtype"])

        def intact(name: str | None) -> bool:
            try:
                if name is None:
                    zarr.open_group(store=str(self.path), mode="r")
                    return True
                array = self._array(name)
                return array.shape == shape and array.chunks == chunks and array.dtype == dtype
            except Exception:  # noqa: BLE001  unreadable JSON, missing file, ...
                return False

        (self.path / DONE).mkdir(exist_ok=True)
        broken = [name for name in (None, *self.names) if not intact(name)]
        if not broken:
            return []
        files = [Path(*(() if name is None else (name,)), "zarr.json") for name in broken]
        with tempfile.TemporaryDirectory(prefix="ntklab-store-metadata-") as fresh:
            _layout(Path(fresh), self.config)
            for file in files:
                atomic_write_bytes(self.path / file, (Path(fresh) / file).read_bytes())
        return [self.path / file for file in files]

    def blocks(self, name: str) -> Iterator[tuple[slice, slice, np.ndarray]]:
        """`(rows, cols, values)` of every tile of `name`, checked against its checksum, one at a
        time (a matrix too large for memory is read in passes; `load` gathers them).  Of a
        symmetric store only the upper tiles are stored: a diagonal tile comes symmetrized (its
        upper triangle mirrored, as `load` keeps it), an off-diagonal one stands also for its
        transpose.  Missing or damaged tiles raise as in `load`."""
        array = self._checked_array(name)
        bad = []
        for tile, digests in sorted(self._markers().items()):
            values = self._read(array, tile, name, digests)
            if values is None:
                bad.append(tile)
                continue
            yield (*self.tiling.slices(tile), self._mirrored(tile, values))
        if bad:
            raise self._damaged_error(name, bad)

    def block(self, name: str, tile: Tile, verify: bool = True) -> tuple[slice, slice, np.ndarray]:
        """`(rows, cols, values)` of one tile of `name`, as `blocks` yields it (checked against its
        checksum unless `verify=False` -- for a tile checked before --, a diagonal tile of a symmetric
        store mirrored): for readers that choose their tiles (`StoredKernel`, processes)."""
        if name not in self.names:
            raise ValueError(f"the store {self.path} holds {list(self.names)}, not {name!r}")
        values = self._read(self._open_or_none(name), tile, name, self._digests(tile),   # this tile's marker only
                            verify=verify)
        if values is None:
            raise self._damaged_error(name, [tile])
        return (*self.tiling.slices(tile), self._mirrored(tile, values))

    def _mirrored(self, tile: Tile, values: np.ndarray) -> np.ndarray:
        return np.triu(values) + np.triu(values, 1).T if self.tiling.on_diagonal(tile) else values

    def _damaged_error(self, name: str, bad: list[Tile]) -> ValueError:
        shown = ", ".join(f"{i}_{j}" for i, j in bad[:10]) + (", ..." if len(bad) > 10 else "")
        return ValueError(f"the store {self.path} has {len(bad)} damaged tile(s) ({shown}: "
                          f"missing, unreadable or not matching their checksum) in {name!r}; run "
                          f"the same compute_kernel call (or ntklab kernel command) again to "
                          f"recompute exactly those")

    def check_complete(self, name: str) -> None:
        """ValueError unless the store holds `name` and every tile of it is marked finished."""
        if name not in self.names:
            raise ValueError(f"the store {self.path} holds {list(self.names)}, not {name!r}: compute a store "
                             f"with get=('nngp', 'ntk') for both")
        missing = len(self.tiles()) - len(self.done((name,)))
        if missing:
            raise ValueError(f"the store {self.path} is missing {missing} tile(s) of {name!r}; run "
                             f"the same compute_kernel call (or ntklab command) again to finish it")

    def _checked_array(self, name: str):
        """The zarr array `name`, after `check_complete`."""
        self.check_complete(name)
        try:
            return self._array(name)
        except Exception as err:  # noqa: BLE001
            raise ValueError(f"the store {self.path}: the metadata of {name!r}, "
                             f"{self.path / name / 'zarr.json'}, is missing or damaged ({err}); "
                             f"run the same compute_kernel call (or ntklab kernel command) again "
                             f"to repair it (the other arrays load meanwhile)") from None

    def computed_from(self, x1, x2=None) -> bool:
        """True when the store holds the kernels of `x1` (with `x2`, or with itself for x2=None), the inputs
        compared as `compute_kernel` keyed them: in the store's dtype and its architecture's input layout."""
        if (x2 is None) != self.symmetric:
            return False
        try:
            arch = parse_architecture(self.config["architecture"], argument="the store's architecture")
        except Exception:  # noqa: BLE001  an architecture without a textual identity: compare the raw values
            arch = None
        dtype = getattr(torch, self.config["dtype"])
        if arch is None:
            inputs = [None if x is None else torch.as_tensor(x).to(dtype) for x in (x1, x2)]
            return [_fingerprint(x) for x in inputs] == [self.config["x1_sha256"], self.config["x2_sha256"]]
        try:
            _, _, _, config = _computation(arch, x1, x2, get=self.names, dtype=dtype, tile_size=self.tile_size)
        except ValueError:   # inputs the architecture cannot take: not these kernels
            return False
        return (config["x1_sha256"], config["x2_sha256"]) == (self.config["x1_sha256"], self.config["x2_sha256"])

    def operator(self, name: str = "ntk", **options) -> "StoredKernel":
        """The square matrix `name` as an operator streaming the tiles (`nk.kernels.StoredKernel(self, name,
        **options)`), for the solvers of `nk.predict`."""
        from .operator import StoredKernel
        return StoredKernel(self, name, **options)

    def load(self, name: str) -> np.ndarray:
        """The whole `[N1, N2]` matrix `name` ("nngp" or "ntk"), mirrored if symmetric; every
        tile is checked against its checksum, and bad tiles (or a damaged array) are named."""
        array = self._checked_array(name)
        matrix = np.full(self.shape, np.nan, dtype=array.dtype)
        for rows, cols, values in self.blocks(name):
            matrix[rows, cols] = values
            if self.symmetric and rows != cols:
                matrix[cols, rows] = values.T
        return matrix

    @classmethod
    def open(cls, path: str | Path) -> "KernelStore":
        """An existing store at `path` (ValueError when `path` is not an ntklab kernel store)."""
        path = Path(path)
        meta = path / "ntklab.json"
        if not meta.is_file():
            raise ValueError(f"{str(path)!r} is not an ntklab kernel store (no ntklab.json); "
                             f"choose a new path for the store")
        try:
            config = json.loads(meta.read_text())
            known = config["format"] in (FORMAT, OLD_FORMAT)
        except (OSError, ValueError, TypeError, KeyError) as err:
            raise ValueError(f"the store's configuration {str(meta)!r} is damaged ({err}); without "
                             f"it no tile can be identified: delete the store {str(path)!r} and "
                             f"compute it again") from None
        if not known:
            raise ValueError(f"the store {str(path)!r} has format {config['format']!r}, which this "
                             f"ntklab does not read ({FORMAT!r}); compute it again into a new path")
        return cls(path, config)


class _Claims:
    """Which process computes which tile: a POSIX lock (`lockf`) on byte 1 + k of the store's
    `claims.lock` while a process computes tile k, and on byte 0 while it prepares the store
    (repair, verify).  The system releases a process's locks when it exits, however it ends.
    Locks are per process: all claims of one process are its own."""

    def __init__(self, store: KernelStore):
        self._offset = {tile: k + 1 for k, tile in enumerate(store.tiles())}
        try:
            self._fd = os.open(store.path / CLAIMS, os.O_RDWR | os.O_CREAT,
                               default_mode(directory=False)) if POSIX_LOCKS else None
        except OSError as err:  # a read-only store: nothing will be written into it
            if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            self._fd = None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)   # releases every lock of this process on the file

    def _lock(self, offset: int, wait: bool) -> bool:
        if self._fd is None:
            return True
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB), 1, offset)
        except OSError as err:
            if err.errno in (errno.EACCES, errno.EAGAIN):
                return False
            if err.errno != errno.ENOLCK:
                raise
            warnings.warn(f"the file system of {CLAIMS} has no POSIX locks: run one process per "
                          f"store at a time", stacklevel=2)
            os.close(self._fd)
            self._fd = None   # no claims from now on
        return True

    def _unlock(self, offset: int) -> None:
        if self._fd is not None:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, offset)

    def take(self, tile: Tile, wait: bool = False) -> bool:
        """Claim `tile`; False when another process holds it (`wait`: until it lets go)."""
        return self._lock(self._offset[tile], wait)

    def release(self, tile: Tile) -> None:
        self._unlock(self._offset[tile])

    @contextlib.contextmanager
    def preparing(self):
        """One process at a time repairs and verifies the store."""
        self._lock(0, wait=True)
        try:
            yield
        finally:
            self._unlock(0)


def _layout(folder: Path, config: dict) -> None:
    """The empty zarr group and arrays of `config` in `folder` (one chunk per tile), uncompressed: kernel
    values compress by ~15 % with zarr's default zstd, whose decoding (~0.5 GB/s per thread, measured) was
    most of a pass over the store for the iterative solvers; raw chunks read at ~1.5 GB/s.  Stores made
    compressed by earlier versions read as before (the codec is in each array's metadata)."""
    zarr = import_extra("zarr", "engine")
    group = zarr.open_group(store=str(folder), mode="w")
    for name in config["get"]:
        group.create_array(name, shape=tuple(config["shape"]), dtype=np.dtype(config["dtype"]),
                           chunks=(config["tile_size"],) * 2, fill_value=np.nan, compressors=None)


def _create(path: Path, config: dict) -> KernelStore | None:
    """Create the empty store in a staging folder and rename it into place.  When another
    process creates it at the same moment, the first rename wins: None for the others."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stage = make_temporary_folder(path.parent, prefix=f".{path.name}.partial-")
    try:
        _layout(stage, config)
        (stage / DONE).mkdir()
        (stage / CLAIMS).touch()
        (stage / "ntklab.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        os.replace(stage, path)
    except OSError:
        shutil.rmtree(stage, ignore_errors=True)
        if (path / "ntklab.json").is_file():   # another process's store (that one may also
            return None                         # have removed this staging folder as stale)
        raise
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    remove_stale_staging(path)   # left by creations that were killed
    return KernelStore(path, config)


def open_store(path: str | Path, config: dict) -> KernelStore:
    """The store at `path`: created if absent, resumed if its configuration matches."""
    path = Path(path)
    if not path.exists():
        created = _create(path, config)
        if created is not None:
            return created
    store = KernelStore.open(path)
    if config["architecture"] is None or store.config.get("architecture") is None:
        raise ValueError(f"refusing to resume into {str(path)!r}: the architecture cannot be "
                         f"identified exactly (an anonymous function such as a lambda in "
                         f"nk.Elementwise), so its tiles might be of another network; use a "
                         f"named module-level function, a new store path, or delete that one")
    if store.config["format"] != config["format"]:
        raise ValueError(f"refusing to resume into {str(path)!r}: it was made by an older ntklab "
                         f"(format {store.config['format']!r}, whose checksums do not bind a "
                         f"tile's position); KernelStore.open(path).load(name) still reads it; "
                         f"to compute, use a new store path, or overwrite=True (--overwrite) to "
                         f"replace it")
    differ = [key for key in sorted(set(config) | set(store.config))
              if config.get(key) != store.config.get(key)]
    if differ:
        short = lambda value: value[:12] + "..." if isinstance(value, str) and len(value) > 40 else value  # noqa: E731
        detail = "; ".join(f"{key}: store has {short(store.config.get(key))!r}, this run "
                           f"{short(config.get(key))!r}" for key in differ)
        raise ValueError(f"refusing to resume into {str(path)!r}: it was made with a different "
                         f"configuration ({detail}); use a new store path, or overwrite=True "
                         f"(--overwrite) to replace it")
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

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future:
        future: cf.Future = cf.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as err:  # delivered through the future, like other executors
            future.set_exception(err)
        return future


def check_scheduler(scheduler, workers: int | None = None, *, probe_timeout: float = 5.0) -> None:
    """Validate `scheduler` and `workers` before any work: `workers` only with
    "processes"; a "tcp://host:port" address is probed (a TCP connection, Dask's handshake
    and the service's identity, `probe_timeout` seconds at most), so a closed port, a
    service that is not Dask or a Dask worker's address is refused within seconds with a
    ValueError instead of hanging or failing in Dask's protocol code."""
    if workers is not None:
        positive_int(workers, "workers")
        if scheduler != "processes":
            raise ValueError(f"workers (--workers) applies to scheduler 'processes' only, not "
                             f"{scheduler or 'local'!r} (the local scheduler uses torch's threads, "
                             f"a Dask cluster its own workers); drop workers or use scheduler "
                             f"'processes'")
    if scheduler in (None, "local", "processes"):
        return
    if isinstance(scheduler, str) and "://" in scheduler:
        scheme = scheduler.split("://")[0]
        if scheme not in DASK_SCHEMES:
            raise ValueError(f"scheduler {scheduler!r} is not a Dask address ({scheme}:// is not one "
                             f"of Dask's protocols); give the scheduler's address, "
                             f"tcp://host:port (as `dask scheduler` prints it)")
        _probe_dask_scheduler(scheduler, probe_timeout)
        return
    if type(scheduler).__name__ != "Client":
        raise ValueError(f"scheduler must be 'local', 'processes', a Dask scheduler address "
                         f"'tcp://host:port' or a distributed.Client, got {scheduler!r}")


def _unreachable(address: str, why: str) -> ValueError:
    return ValueError(f"scheduler (--scheduler) {address!r}: cannot reach a Dask scheduler there ({why}); "
                      f"start one with `dask scheduler` and workers with `dask worker {address}`, "
                      f"and pass the address `dask scheduler` prints")


def _check_reachable(address: str, timeout: float) -> None:
    """Refuse what is not a Dask address, and a tcp:// address whose port does not accept a
    connection (a closed port or an unknown host fails here at once)."""
    import socket
    addressing = import_extra("distributed", "engine").comm.addressing
    try:
        protocol, _ = addressing.parse_address(address, strict=True)
        if protocol != "tcp":
            return
        host, port = addressing.get_address_host_port(address, strict=True)
    except ValueError as err:
        raise ValueError(f"scheduler (--scheduler) {address!r} is not a Dask address ({err}); expected "
                         f"tcp://host:port") from err
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        raise _unreachable(address, err.strerror or str(err) or type(err).__name__) from err


def _dask_identity(address: str, timeout: float) -> Any:
    """The reply of the Dask service at `address` to an identity request (ValueError when
    none comes within `timeout` or the service does not speak Dask's protocol)."""
    import asyncio

    async def identity():
        from distributed.comm import connect
        comm = await connect(address, timeout=timeout)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    outcome: dict[str, Any] = {}

    def ask() -> None:   # in a thread of its own: the caller may be inside an event loop
        try:
            outcome["reply"] = asyncio.run(asyncio.wait_for(identity(), timeout))
        except BaseException as err:   # noqa: BLE001  (a non-Dask peer: MemoryError, decode errors ...)
            outcome["error"] = err

    thread = threading.Thread(target=ask, daemon=True, name="ntklab-scheduler-probe")
    thread.start()
    thread.join(timeout + 2.0)
    error = outcome.get("error")
    if "reply" not in outcome and error is None or isinstance(error, (TimeoutError, asyncio.TimeoutError)):
        raise _unreachable(address, f"no Dask handshake within {timeout:g} s: is it a Dask scheduler?")
    if error is not None:   # a MemoryError's text ("Unable to allocate 3 EiB") would mislead
        detail = "" if isinstance(error, MemoryError) else f": {str(error)[:200]}"
        raise _unreachable(address, f"the service there does not speak Dask's protocol "
                                    f"({type(error).__name__}{detail})") from error
    return outcome["reply"]


def _probe_dask_scheduler(address: str, timeout: float) -> None:
    """Refuse `address` unless a Dask scheduler answers there within `timeout` seconds."""
    _check_reachable(address, timeout)
    reply = _dask_identity(address, timeout)
    kind = reply.get("type") if isinstance(reply, dict) else None
    if kind != "Scheduler":
        raise ValueError(f"scheduler (--scheduler) {address!r} is a Dask {str(kind).lower()}, not the scheduler"
                         + (f"; use the scheduler's address {reply['scheduler']!r}"
                            if isinstance(reply, dict) and reply.get("scheduler") else ""))


@contextlib.contextmanager
def executing(scheduler, workers: int | None) -> Iterator[tuple[cf.Executor, int]]:
    """(executor, tasks to keep in flight) of `_executor`, shut down or closed afterwards."""
    executor, window, owned = _executor(scheduler, workers)
    try:
        yield executor, window
    finally:
        if isinstance(owned, cf.Executor):
            owned.shutdown(wait=False, cancel_futures=True)
        elif owned is not None:
            owned.close()


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
        except (OSError, TimeoutError, MemoryError) as err:   # MemoryError: a non-Dask peer's bytes
            raise _unreachable(scheduler, f"{type(err).__name__}: {str(err)[:200]}") from err
        owned = client
    slots = max(1, sum(client.nthreads().values()))
    return client.get_executor(pure=False), 2 * slots, owned


def in_window(executor: cf.Executor, tasks: Iterator, window: int) -> Iterator[tuple[Any, Any]]:
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


def _disk_full(path: Path, err: OSError) -> ValueError:
    """The message for a full disk (or quota) while writing the store at `path`."""
    try:
        kept = f"its {len(KernelStore.open(path).done())} finished tile(s) are kept"
    except ValueError:
        kept = "the store was not created"
    return ValueError(f"no space left for the kernel store {str(path)!r} ({err.strerror or err}): "
                      f"{kept}; free some space (or raise the quota) and run the same "
                      f"compute_kernel call (or ntklab kernel command) again to resume")


def _claimed(store: KernelStore, claims: _Claims, todo: Sequence[Tile], busy: list[Tile],
             bar) -> Iterator[tuple[Tile, tuple[str, ...]]]:
    """The tiles of `todo` this process claims, with the arrays they still need; tiles that
    another process holds go to `busy`, those it finished meanwhile only to the progress bar."""
    for tile in todo:
        if not claims.take(tile):
            busy.append(tile)
            continue
        names = store.missing(tile)   # read after claiming: another process may have finished it
        if names:
            yield tile, names
        else:
            claims.release(tile)
            bar.update()


def compute_kernel(arch, x1, x2=None, *, store: str | Path, get: str | Sequence[str] | None = None,
                   tile_size: int = 256, dtype: torch.dtype | None = None,
                   scheduler=None, workers: int | None = None, device: str | None = None,
                   max_memory: int | str | None = None, progress: bool | None = None,
                   verify: bool = True, fused: bool = False, overwrite: bool = False) -> KernelStore:
    """Compute (or finish) the NNGP/NTK matrices of `arch` between `x1` and `x2`
    into the zarr store `store`, tile by tile; returns the `KernelStore`
    (`.load("ntk")` gives the matrix).  See the module docstring for resuming,
    repairs, several processes on one store and the schedulers; `max_memory` bounds
    each tile's working memory (default None: 1 GiB, as everywhere in ntklab).
    The store is keyed by `arch.identity`: an
    architecture that cannot be identified exactly (a lambda) is computed, but never
    resumed.  dtype as `Serial.kernel`.  `verify`: check every finished tile against
    its checksum first and compute the damaged arrays of those tiles again (reads the
    store once).  `fused`: as `Serial.kernel`.  `overwrite`: replace an existing store
    (of any computation) instead of resuming it; it is removed only after every argument has
    been checked and the scheduler reached, so a mistyped argument never costs it.

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
        For a store that cannot be written, holds a different computation, or whose disk
        is full (the finished tiles are kept: rerun to resume).

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> net = nk.mlp(2, 64, b_std=0.1)
    >>> x = torch.randn(10, 3, dtype=torch.float64)
    >>> store = nk.kernels.compute_kernel(net, x, store="k.zarr", tile_size=4, get="ntk", progress=False)
    >>> bool(torch.allclose(torch.as_tensor(store.load("ntk")), net.kernel(x, get="ntk"), rtol=1e-12))
    True
    """
    arch, x1, x2, config = _computation(arch, x1, x2, get=get, dtype=dtype, tile_size=tile_size)
    max_memory = parse_memory(max_memory)   # refused before the store exists
    if device is not None:
        resolve_device(device)
    check_scheduler(scheduler, workers)
    if not Path(store).exists():
        check_writable(store, "store")
    # the scheduler is reached (workers validated, tcp:// connected) before the store exists,
    # so a failed start leaves nothing behind
    with executing(scheduler, workers) as (executor, window):
        try:
            if overwrite and Path(store).exists():
                discard_folder(Path(store))
            kernel_store = open_store(store, config)
            claims = _Claims(kernel_store)
            try:
                with claims.preparing():
                    kernel_store.repair()
                    if verify:   # damaged arrays of finished tiles are computed again
                        for tile, lost in kernel_store.damaged().items():
                            kernel_store.forget([tile], lost)

                def tasks(claimed):
                    for tile, needed in claimed:
                        rows, cols = kernel_store.tiling.slices(tile)
                        same = kernel_store.tiling.on_diagonal(tile)
                        other = None if same else (x1 if x2 is None else x2)[cols]
                        yield tile, compute_tile, (arch, x1[rows], other, needed, device, max_memory,
                                                     fused)

                _fill(kernel_store, claims, tasks, executor, window, progress)
            finally:
                claims.close()
        except OSError as err:
            if err.errno not in DISK_FULL:
                raise
            raise _disk_full(Path(store), err) from err
    return kernel_store


def _computation(arch, x1, x2, *, get, dtype, tile_size) -> tuple[Serial, torch.Tensor, torch.Tensor | None, dict]:
    """The validated architecture and inputs, and the configuration that keys the store."""
    arch = parse_architecture(arch, argument="arch") if isinstance(arch, str) else arch
    if not isinstance(arch, Serial):
        raise ValueError(f"arch must be an nk.serial(...) architecture or a string such as "
                         f"'Conv(64, (3, 3), padding=\"SAME\"), Relu(), Flatten(), Dense(1)', got {arch!r}")
    names = canonical_get(get)
    dtype = input_dtype(x1, dtype, x2)
    x1 = as_inputs(x1, "x1", images=arch.takes_images, sequences=arch.takes_sequences, dtype=dtype)
    if x2 is not None:
        x2 = as_inputs(x2, "x2", images=arch.takes_images, sequences=arch.takes_sequences, dtype=dtype)
        check_same_features(x1, x2)
    config = {"format": FORMAT, "architecture": arch.identity, "get": list(names),
              "shape": [len(x1), len(x1 if x2 is None else x2)],
              "tile_size": positive_int(tile_size, "tile_size"),
              "dtype": str(dtype).replace("torch.", ""), "x1_sha256": _fingerprint(x1),
              "x2_sha256": _fingerprint(x2)}
    return arch, x1, x2, config


def _fill(kernel_store: KernelStore, claims: "_Claims", tasks, executor, window: int,
          progress: bool | None) -> None:
    """Compute and write every missing tile (`tasks(claimed)` yields their work), with a bar;
    tiles that other processes hold are waited for and looked at again."""
    todo = [tile for tile in kernel_store.tiles() if kernel_store.missing(tile)]
    total = len(kernel_store.tiles())
    show = total > 1 if progress is None else progress
    with tqdm(total=total, initial=total - len(todo), disable=not show or not todo,
              desc="kernel tiles", unit="tile", dynamic_ncols=True) as bar:
        while todo:
            busy: list[Tile] = []
            for tile, arrays in in_window(executor, tasks(_claimed(kernel_store, claims, todo, busy, bar)),
                                           window):
                kernel_store.write_tile(tile, arrays)
                claims.release(tile)
                bar.update()
            if busy:   # computed by other processes: wait until one lets go, then look again
                claims.take(busy[0], wait=True)
                claims.release(busy[0])
            todo = busy
