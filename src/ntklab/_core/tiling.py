"""Tilings of pairwise matrices: the one place that decides which blocks of an
`[N1, N2]` matrix are computed, used by the analytic kernels (`Serial.kernel`), the
empirical NTK and the tiled zarr engine.  It sits below `arch/` and `kernels/`.

A symmetric matrix (`x2=None`: the samples with themselves) computes only the tiles
on and above the diagonal and mirrors them; `tiled_pairs` assembles a whole matrix
in memory with a constant number of `size^2` temporaries beyond the result.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch
from tqdm.auto import tqdm

Tile = tuple[int, int]
T = TypeVar("T")


@dataclass(frozen=True)
class Tiling:
    """Square tiles of `size` rows and columns over an `[n1, n2]` matrix; with
    `symmetric` (then n1 = n2) only the upper tiles, `(i, j)` with `j >= i`."""

    n1: int
    n2: int
    size: int
    symmetric: bool = False

    def __post_init__(self):
        if self.symmetric and self.n1 != self.n2:
            raise ValueError(f"a symmetric tiling needs a square matrix, got {self.n1} x {self.n2}")

    def tiles(self) -> list[Tile]:
        """Tile indices to compute, row-major."""
        t1, t2 = math.ceil(self.n1 / self.size), math.ceil(self.n2 / self.size)
        return [(i, j) for i in range(t1) for j in range(t2) if not self.symmetric or j >= i]

    def slices(self, tile: Tile) -> tuple[slice, slice]:
        """Rows and columns of `tile` (the last ones may be short)."""
        (i, j), s = tile, self.size
        return slice(i * s, min((i + 1) * s, self.n1)), slice(j * s, min((j + 1) * s, self.n2))

    def on_diagonal(self, tile: Tile) -> bool:
        """A tile of a symmetric matrix whose rows and columns are the same samples."""
        return self.symmetric and tile[0] == tile[1]

    def __len__(self) -> int:
        return len(self.tiles())


def store_tile(out: torch.Tensor, tiling: Tiling, tile: Tile, block: torch.Tensor,
               transpose: Callable[[torch.Tensor], torch.Tensor] = lambda b: b.transpose(0, 1)
               ) -> None:
    """Write `block` at `tile` of `out`, and its mirror image (`transpose`) below the
    diagonal of a symmetric matrix."""
    rows, cols = tiling.slices(tile)
    out[rows, cols] = block
    if tiling.symmetric and tile[0] != tile[1]:
        out[cols, rows] = transpose(block)


def symmetrized(block: torch.Tensor) -> torch.Tensor:
    """(B + B^T) / 2 over the two sample axes of a block of inputs with themselves (in place):
    exactly symmetric, whatever the rounding of each entry."""
    return (block + block.transpose(0, 1)).mul_(0.5)


TileFn = Callable[[torch.Tensor, "torch.Tensor | None", Callable[[], None]], dict[str, torch.Tensor]]
PROGRESS_DELAY = 2.0   # seconds: `progress=None` shows a bar only for work that lasts longer


def tiled_pairs(fn: TileFn, x1: torch.Tensor, x2: torch.Tensor | None, names: tuple[str, ...],
                *, block_size: int, progress: bool | None = None, workers: int | None = None,
                steps_per_tile: int = 1) -> dict[str, torch.Tensor]:
    """Evaluate `fn(x1_block, x2_block, advance)` on all tiles and assemble the `[N1, N2, ...]`
    matrices `names` (`x2_block=None` on the diagonal tiles of a symmetric matrix, `x2=None`;
    those tiles are symmetrised exactly; entries of the shape of the blocks' trailing axes).
    `fn` calls `advance()` after each of its `steps_per_tile` steps (e.g. layers), which moves
    the progress bar.

    `workers` threads process tiles concurrently (torch releases the GIL in its
    kernels), each single-threaded, with no other thread's torch thread count changed
    (`in_threads`); the default, 1, lets torch parallelize inside each tile instead.
    `progress=None` shows a bar once the work has lasted
    `PROGRESS_DELAY` seconds (a deep network's single tile included), True at once, False never.
    """
    other = x1 if x2 is None else x2
    tiling = Tiling(len(x1), len(other), block_size, symmetric=x2 is None)
    tiles = tiling.tiles()
    out: dict[str, torch.Tensor] = {}   # allocated at the first block, which gives the entry shape
    workers = max(1, min(workers or 1, len(tiles)))

    bar = tqdm(total=len(tiles) * steps_per_tile, disable=progress is False, leave=False,
               delay=PROGRESS_DELAY if progress is None else 0.0, desc="kernel",
               unit="layer" if steps_per_tile > 1 else "block")
    lock = threading.Lock()

    def advance() -> None:
        with lock:
            bar.update()

    def run(tile: Tile) -> None:
        rows, cols = tiling.slices(tile)
        same = tiling.on_diagonal(tile)
        # fresh copies: BLAS products (MKL) round differently at other memory alignments, and a
        # slice of the caller's array (numpy's are 16-byte aligned) lies wherever malloc put it;
        # torch allocates 64-byte aligned, so every run computes each tile bitwise the same
        blocks = fn(x1[rows].clone(), None if same else other[cols].clone(), advance)
        for name in names:
            block = symmetrized(blocks[name]) if same else blocks[name]
            with lock:
                if name not in out:
                    out[name] = block.new_empty((tiling.n1, tiling.n2, *block.shape[2:]))
            store_tile(out[name], tiling, tile, block)

    with bar:
        if workers == 1:
            for tile in tiles:
                run(tile)
        else:
            in_threads(run, tiles, workers)
    return out


_THREAD_COUNT = threading.Lock()


def _on_new_thread(fn: Callable[[], T]) -> T:
    """`fn()` run on a thread of its own (which sees torch's process-wide thread count)."""
    result: list[T] = []
    thread = threading.Thread(target=lambda: result.append(fn()), name="ntklab-thread-count")
    thread.start()
    thread.join()
    return result[0]


def in_threads(run: Callable[[Tile], None], tiles: list[Tile], workers: int) -> None:
    """`run(tile)` for every tile on `workers` new threads, each running torch single-threaded
    (parallelism across tiles, not inside them); the first error stops the others and is
    raised here, as is a Ctrl-C (after the tiles in flight).

    Torch's thread count is per thread (OpenMP's `nthreads` of the thread that calls
    `torch.set_num_threads`), plus one process-wide value that a thread takes when it first
    uses torch and that every `torch.set_num_threads` call also sets.  Each worker sets 1
    for itself; once all have, a short-lived thread sets the process-wide value back to what
    it was, before any tile runs.  So the caller's count, every other thread's and the count
    of threads started later are unchanged, during the call and after it."""
    queue = _TileQueue(run, tiles, workers)
    pool = [threading.Thread(target=queue.work, name=f"ntklab-tiles-{i}", daemon=True)
            for i in range(workers)]
    try:
        with _THREAD_COUNT:   # concurrent calls must not read each other's workers' value
            process_wide = _on_new_thread(torch.get_num_threads)
            for thread in pool:
                thread.start()
            queue.ready.wait()
            _on_new_thread(lambda: torch.set_num_threads(process_wide))
        queue.ready.wait()
        for thread in pool:
            thread.join()
    except BaseException:   # e.g. Ctrl-C: the workers finish their tile and stop
        queue.stop.set()
        queue.ready.abort()
        for thread in pool:
            if thread.ident is not None:   # started
                thread.join()
        raise
    if queue.errors:
        raise queue.errors[0]


class _TileQueue:
    """The tiles of `in_threads`, handed out one at a time to its workers; the first error
    stops them all."""

    def __init__(self, run: Callable[[Tile], None], tiles: list[Tile], workers: int):
        self.run, self.pending, self.lock = run, iter(tiles), threading.Lock()
        self.ready = threading.Barrier(workers + 1)
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.grad = torch.is_grad_enabled()  # thread-local: the workers take the caller's mode

    def work(self) -> None:
        """One worker: single-threaded torch, then tiles until none are left or one failed."""
        torch.get_num_threads()   # torch's lazy per-thread setup first: it would undo the 1 below
        torch.set_num_threads(1)
        torch.set_grad_enabled(self.grad)
        try:
            self.ready.wait()   # all workers single-threaded, then
            self.ready.wait()   # the process-wide count restored
        except threading.BrokenBarrierError:
            return
        while not self.stop.is_set():
            with self.lock:
                tile = next(self.pending, None)
            if tile is None:
                return
            try:
                self.run(tile)
            except BaseException as err:  # noqa: BLE001  raised by the caller
                self.errors.append(err)
                self.stop.set()
