"""A kernel matrix in a store as a linear operator: products K V streamed tile by tile.

The iterative solvers of `ntklab.predict` (`conjugate_gradients`, `nystrom_preconditioner`) need only
products K V and the diagonal of K.  `StoredKernel` computes them from the tiles of a
`KernelStore` (each checked against its checksum), one tile in memory at a time, so the matrix itself
never is: a float64 kernel of n = 100,000 samples is 80 GB, its product with one vector takes a read
of the store and 8 bytes per number of working memory per tile.  A symmetric store holds only its
upper tiles; an off-diagonal tile is used twice, as itself and as its transpose.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .._core.validation import DEFAULT_DTYPE
from .engine import KernelStore


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
                 device=None, progress: bool | None = None):
        self.store = store if isinstance(store, KernelStore) else KernelStore.open(store)
        if not self.store.symmetric:
            raise ValueError(f"the store {self.store.path} holds a kernel between two different input sets "
                             f"(x2 was given); a solver needs the square train-train kernel: compute it "
                             f"with x2=None")
        if name not in self.store.names:
            raise ValueError(f"the store {self.store.path} holds {list(self.store.names)}, not {name!r}")
        self.name = name
        self.shape = self.store.shape
        self.dtype = DEFAULT_DTYPE if dtype is None else dtype
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.progress = progress
        self.passes = 0   # reads of the whole store so far (one per matmul)

    def _blocks(self, what: str):
        tiles = len(self.store.tiles())
        show = tiles > 64 if self.progress is None else self.progress
        blocks = self.store.blocks(self.name)
        for rows, cols, values in tqdm(blocks, total=tiles, desc=what, unit="tile", leave=False,
                                       disable=not show):
            yield rows, cols, torch.from_numpy(values).to(dtype=self.dtype, device=self.device)

    def matmul(self, v: torch.Tensor) -> torch.Tensor:
        """K v for `v` of shape `[n]` or `[n, m]`: one pass over the store."""
        matrix = v.reshape(len(v), -1).to(dtype=self.dtype, device=self.device)
        out = torch.zeros_like(matrix)
        for rows, cols, block in self._blocks("K v from the store"):
            out[rows] += block @ matrix[cols]
            if rows != cols:
                out[cols] += block.T @ matrix[rows]
        self.passes += 1
        return out.reshape(v.shape)

    def diagonal(self) -> torch.Tensor:
        """diag K, `[n]` (one pass: every tile is read and checked against its checksum)."""
        out = torch.empty(self.shape[0], dtype=self.dtype, device=self.device)
        for rows, cols, block in self._blocks("diag K from the store"):
            if rows == cols:
                out[rows] = block.diagonal()
        return out
