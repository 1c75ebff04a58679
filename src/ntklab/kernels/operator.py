"""A kernel matrix in a store as a linear operator: products K V streamed tile by tile.

The iterative solvers of `ntklab.predict` (`conjugate_gradients`, `nystrom_preconditioner`) need only
products K V and the diagonal of K.  `StoredKernel` computes them from the tiles of a
`KernelStore` (each checked against its checksum), one tile in memory at a time, so the matrix itself
never is: a float64 kernel of n = 100,000 samples is 80 GB, its product with one vector takes a read
of the store and 8 bytes per number of working memory per tile.  A symmetric store holds only its
upper tiles; an off-diagonal tile is used twice, as itself and as its transpose.

Each tile is checked against its checksum the first time this operator reads it (`verify="once"`, the
default; "always" checks it at every product: SHA-256 at ~0.8 GB/s, about 20 % of a product's time,
measured), and the next tile is read (decompressed, for a compressed store) and checked in a thread while
the current one is multiplied.

With a `scheduler` (as `compute_kernel`'s: "processes" or a Dask scheduler address / Client) each
product is spread over processes, one task per tile, each reading its own tile; the partial products
are added in tile order, so the result does not depend on which process computed what, and on a Dask
cluster a worker lost in the middle of a product only has its tiles recomputed by the others.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import functools
import weakref

import numpy as np
import torch
from tqdm.auto import tqdm

from .._core.tiling import Tile
from .._core.validation import DEFAULT_DTYPE
from .engine import KernelStore, check_scheduler, executing, in_window


@functools.lru_cache(maxsize=4)
def _opened(path: str) -> KernelStore:
    return KernelStore.open(path)


def tile_product(path: str, name: str, tile: Tile, left: np.ndarray, right: np.ndarray | None,
                 verify: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """One tile's share of K V (a task of `StoredKernel.matmul` with a scheduler): block @ V[cols]
    and, for an off-diagonal tile of the symmetric store, block.T @ V[rows]."""
    _, _, values = _opened(path).block(name, tile, verify=verify)
    block = torch.from_numpy(values).to(torch.from_numpy(left).dtype)
    first = (block @ torch.from_numpy(left)).numpy()
    return first, None if right is None else (block.T @ torch.from_numpy(right)).numpy()


class StoredKernel:
    """The square matrix `name` of a symmetric `KernelStore` as an operator (`shape`, `dtype`,
    `matmul`, `diagonal`), in `dtype` (default float64) on `device` (default CPU).

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> x = torch.randn(10, 3, dtype=torch.float64)
    >>> store = nk.kernels.compute_kernel(nk.mlp(2, 8), x, store="k.zarr", tile_size=4, progress=False)
    >>> k = nk.kernels.StoredKernel(store, "ntk")
    >>> v = torch.randn(10, 2, dtype=torch.float64)
    >>> bool(torch.allclose(k.matmul(v), torch.as_tensor(store.load("ntk")) @ v))
    True
    """

    def __init__(self, store: KernelStore | str, name: str = "ntk", *, dtype: torch.dtype | None = None,
                 device=None, progress: bool | None = None, scheduler=None, workers: int | None = None,
                 verify: str = "once"):
        check_scheduler(scheduler, workers)
        if verify not in ("once", "always"):
            raise ValueError(f"verify must be 'once' (each tile's checksum at its first read) or 'always', "
                             f"got {verify!r}")
        self.store = store if isinstance(store, KernelStore) else KernelStore.open(store)
        if not self.store.symmetric:
            raise ValueError(f"the store {self.store.path} holds a kernel between two different input sets "
                             f"(x2 was given); a solver needs the square train-train kernel: compute it "
                             f"with x2=None")
        self.store.check_complete(name)
        self.name = name
        self.verify = verify
        self.verified: set[Tile] = set()   # tiles whose checksum this operator has checked
        self.shape = self.store.shape
        self.dtype = DEFAULT_DTYPE if dtype is None else dtype
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.progress = progress
        self.passes = 0   # reads of the whole store so far (one per matmul)
        self.scheduler, self.workers = scheduler, workers
        self._pool: tuple | None = None     # (executor, window), opened at the first product
        self._resources = contextlib.ExitStack()
        weakref.finalize(self, self._resources.close)

    def __enter__(self) -> "StoredKernel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Shut down the processes or close the Dask client of `scheduler` (if any were opened)."""
        self._resources.close()
        self._pool = None

    def _read(self, tile: Tile) -> tuple[slice, slice, np.ndarray]:
        verify = self.verify == "always" or tile not in self.verified
        rows, cols, values = self.store.block(self.name, tile, verify=verify)
        self.verified.add(tile)
        return rows, cols, values

    def _blocks(self, what: str, tiles: list[Tile] | None = None):
        """(rows, cols, block) of every tile (or of `tiles`) in order, as `dtype` on `device`: the next
        tile is read in a thread meanwhile.  A block converted to another dtype or device is a view of one
        buffer that the next block overwrites: use each block before asking for the next."""
        tiles = sorted(self.store.tiles()) if tiles is None else tiles
        show = len(tiles) > 64 if self.progress is None else self.progress
        buffer: torch.Tensor | None = None
        with cf.ThreadPoolExecutor(1) as reader:
            ahead = reader.submit(self._read, tiles[0])
            for index in tqdm(range(len(tiles)), desc=what, unit="tile", leave=False, disable=not show):
                rows, cols, values = ahead.result()
                if index + 1 < len(tiles):
                    ahead = reader.submit(self._read, tiles[index + 1])
                block = torch.from_numpy(values)
                if block.dtype != self.dtype or block.device != self.device:
                    if buffer is None or buffer.shape[0] < block.shape[0] or buffer.shape[1] < block.shape[1]:
                        buffer = torch.empty(self.store.tile_size, self.store.tile_size, dtype=self.dtype,
                                             device=self.device)
                    block = buffer[:block.shape[0], :block.shape[1]].copy_(block)
                yield rows, cols, block

    def matmul(self, v: torch.Tensor) -> torch.Tensor:
        """K v for `v` of shape `[n]` or `[n, m]`: one pass over the store."""
        matrix = v.reshape(len(v), -1).to(dtype=self.dtype, device=self.device)
        out = torch.zeros_like(matrix)
        if self.scheduler in (None, "local"):
            for rows, cols, block in self._blocks("K v from the store"):
                out[rows] += block @ matrix[cols]
                if rows != cols:
                    out[cols] += block.T @ matrix[rows]
        else:
            for (rows, cols), (first, second) in self._spread(matrix):
                out[rows] += torch.from_numpy(first).to(out.device)
                if second is not None:
                    out[cols] += torch.from_numpy(second).to(out.device)
        self.passes += 1
        return out.reshape(v.shape)

    def _spread(self, matrix: torch.Tensor):
        """((rows, cols), (block @ V[cols], block.T @ V[rows] or None)) of every tile, in tile order,
        computed by the scheduler's processes (one task per tile)."""
        if self._pool is None:
            self._pool = self._resources.enter_context(executing(self.scheduler, self.workers))
        executor, window = self._pool
        host = matrix.detach().cpu().numpy()
        tiling, path = self.store.tiling, str(self.store.path)
        tiles = sorted(self.store.tiles())

        def tasks():
            for tile in tiles:
                rows, cols = tiling.slices(tile)
                yield tile, tile_product, (path, self.name, tile, host[cols],
                                           None if rows == cols else host[rows],
                                           self.verify == "always" or tile not in self.verified)
        results = {}
        show = len(tiles) > 64 if self.progress is None else self.progress
        for tile, result in tqdm(in_window(executor, tasks(), window), total=len(tiles), unit="tile",
                                 desc="K v on the scheduler", leave=False, disable=not show):
            results[tile] = result
            self.verified.add(tile)
        return [(tiling.slices(tile), results[tile]) for tile in tiles]

    def diagonal(self) -> torch.Tensor:
        """diag K, `[n]`: reads only the diagonal tiles."""
        out = torch.empty(self.shape[0], dtype=self.dtype, device=self.device)
        for rows, _, block in self._blocks("diag K from the store", [t for t in self.store.tiles() if t[0] == t[1]]):
            out[rows] = block.diagonal()
        return out
