"""`Aggregate`: message passing on a graph given with the inputs (neural-tangents'
`stax.Aggregate`, dense implementation; the graph neural tangent kernel of Du, Hou, Salakhutdinov,
Poczos, Wang & Xu 2019, "Graph Neural Tangent Kernel: Fusing Graph Neural Networks with Graph
Kernels").

Each sample n comes with a weighted adjacency `pattern[n, i, j]` (an arc from node i to node j)
over its positions: the tokens of a sequence `[N, T, C]` (pattern `[N, T, T]`) or the pixels of
an image `[N, C, H, W]` (pattern `[N, H, W, H, W]`; or over one image axis, `aggregate_axis=2`
or `3`, pattern `[N, H, H]` or `[N, W, W]`, each row or column alike).  Finite layer: every node
becomes the weighted sum of its predecessors, per channel,
    y[n, j] = sum_i pattern[n, i, j] x[n, i],   i.e. y_c = A_n^T x_c.

Kernel: no parameters, so K'(x, x') = A^T K(x, x') A' over all pairs of positions
(neural-tangents: `pattern[0].T @ nngp @ pattern[1]`), the NTK likewise; Gaussian inputs stay
Gaussian.  The graphs travel with the inputs: `net.kernel(x1, x2, pattern=(p1, p2))` and
`net.module(...)(x, pattern=p)`; they reach this layer in `KernelState.pattern`.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .attention import pair_products
from .layer import Layer
from .state import KernelState


def aggregated_axes(aggregate_axis: int | Sequence[int] | None, spatial: tuple[int, ...]) -> tuple[int, ...]:
    """The positions' axes (0-based, among `spatial`) that `aggregate_axis` (axes of the batch
    in ntklab's layout: 2, 3 of `[N, C, H, W]`, 1 of `[N, T, C]`) names; None: all of them."""
    if aggregate_axis is None:
        return tuple(range(len(spatial)))
    axes = (aggregate_axis,) if isinstance(aggregate_axis, int) else tuple(aggregate_axis)
    allowed = (2, 3) if len(spatial) == 2 else (1,)
    if not axes or any(a not in allowed for a in axes) or len(set(axes)) != len(axes):
        raise ValueError(f"aggregate_axis={aggregate_axis!r} must name the position axes "
                         f"{allowed} of the inputs ({'[N, C, H, W]' if len(spatial) == 2 else '[N, T, C]'}), "
                         f"or be None for all of them")
    return tuple(sorted(a - allowed[0] for a in axes))


def node_pattern(pattern: torch.Tensor, spatial: tuple[int, ...], axes: tuple[int, ...]) -> torch.Tensor:
    """`[N, P, P]` over all P positions: the graph over the aggregated `axes` of `spatial`, each
    slice along the other axis alike (the Kronecker product with the identity)."""
    shape = tuple(spatial[a] for a in axes)
    if pattern.ndim != 1 + 2 * len(shape) or tuple(pattern.shape[1:]) != shape + shape:
        raise ValueError(f"pattern must have shape [N, *{shape}, *{shape}] (a graph over the "
                         f"positions {shape} it aggregates), got {tuple(pattern.shape)}")
    graphs = pattern.reshape(len(pattern), math.prod(shape), math.prod(shape))
    if len(axes) == len(spatial):
        return graphs
    eye = torch.eye(spatial[1 - axes[0]], dtype=graphs.dtype, device=graphs.device)
    kron = (lambda a: torch.kron(a, eye)) if axes == (0,) else (lambda a: torch.kron(eye, a))
    return torch.stack([kron(a) for a in graphs])


class AggregateModule(nn.Module):
    """Finite-width `Aggregate` on `[N, C, H, W]` or `[N, T, C]`: forward(x, pattern)."""

    takes_pattern = True

    def __init__(self, layer: "Aggregate", spatial: tuple[int, ...]):
        super().__init__()
        self.layer, self.spatial = layer, spatial
        self.axes = aggregated_axes(layer.aggregate_axis, spatial)

    def forward(self, x: torch.Tensor, pattern: torch.Tensor | None = None) -> torch.Tensor:
        if pattern is None:
            raise ValueError(f"{self.layer.label} needs the graph of each sample: call the network "
                             f"as model(x, pattern=p) (inside nk.parallel branches the finite "
                             f"module cannot pass it; the kernel can)")
        if len(pattern) != len(x):
            raise ValueError(f"pattern has {len(pattern)} graphs for {len(x)} samples")
        graphs = node_pattern(pattern.to(x.dtype), self.spatial, self.axes)
        if len(self.spatial) == 1:                                     # [N, T, C]
            return torch.einsum("nij,nic->njc", graphs, x)
        return torch.einsum("nij,nci->ncj", graphs, x.flatten(2)).reshape(x.shape)


class Aggregate(Layer[KernelState, KernelState]):
    """`Aggregate(aggregate_axis=None)`: each node (token or pixel) replaced by the weighted sum
    of its predecessors in the sample's graph (neural-tangents' `stax.Aggregate`, its "DENSE"
    implementation; see the module docstring).  The graphs are given with the inputs:
    `net.kernel(x1, x2, pattern=(p1, p2))` (`(p1, None)` when `x2=None`) and
    `model(x, pattern=p)` for the finite network `model = net.module(...)`.

    Parameters
    ----------
    aggregate_axis : int, tuple of int or None
        The position axes of the inputs in ntklab's layout (2, 3 of `[N, C, H, W]`; 1 of
        `[N, T, C]`) the graph connects; None: all of them.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> gnn = nk.serial(nk.Dense(64), nk.Aggregate(), nk.Relu(), nk.Dense(64), nk.Aggregate(),
    ...                 nk.Relu(), nk.GlobalAvgPool(), nk.Dense(1))
    >>> nodes = torch.randn(4, 6, 3, dtype=torch.float64)                 # [N, nodes, features]
    >>> graphs = (torch.rand(4, 6, 6) < 0.4).double()                     # [N, nodes, nodes]
    >>> gnn.kernel(nodes, get="ntk", pattern=(graphs, None)).shape
    torch.Size([4, 4])
    >>> gnn.module((6, 3), dtype=torch.float64)(nodes, pattern=graphs).shape
    torch.Size([4, 1])
    """

    needs_all_pixel_pairs = True
    takes_pattern = True

    def __init__(self, aggregate_axis: int | Sequence[int] | None = None):
        if aggregate_axis is not None and not isinstance(aggregate_axis, int):
            aggregate_axis = tuple(aggregate_axis)
        self.aggregate_axis = aggregate_axis

    def build(self, in_shape, generator, dtype):
        if len(in_shape) not in (2, 3):
            raise ValueError(f"it aggregates the nodes of token sequences [N, T, C] or images "
                             f"[N, C, H, W], got samples of shape {tuple(in_shape)}")
        spatial = tuple(in_shape[1:]) if len(in_shape) == 3 else tuple(in_shape[:1])
        return AggregateModule(self, spatial), tuple(in_shape)

    def kernel_map(self, k: KernelState) -> KernelState:
        if not k.spatial:
            raise ValueError("it aggregates the nodes of token sequences [N, T, C] or images "
                             "[N, C, H, W], but gets vectors; apply it before Flatten/GlobalAvgPool")
        if k.pattern is None:
            raise ValueError("it needs the graph of each sample: pass pattern=(p1, p2) to "
                             "net.kernel (p2=None when x2 is None)")
        if not k.full:
            raise ValueError("it needs the covariance of all position pairs: compute the kernel "
                             "through nk.serial(...).kernel, which tracks them")
        axes = aggregated_axes(self.aggregate_axis, k.spatial)
        graphs1, graphs2 = k.pattern
        left = node_pattern(graphs1, k.spatial, axes).to(k.nngp).transpose(1, 2)   # A^T
        right = left if graphs2 is None else node_pattern(graphs2, k.spatial, axes).to(k.nngp).transpose(1, 2)
        n1, n2, p = k.nngp.shape[0], k.nngp.shape[1], left.shape[-1]

        def mapped(t: torch.Tensor) -> torch.Tensor:
            return pair_products(t.reshape(n1, n2, p, p), left, right).reshape(t.shape)

        def mapped_self(a: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
            return torch.bmm(torch.bmm(a, var.reshape(len(a), p, p)), a.transpose(1, 2)).reshape(var.shape)

        var1 = mapped_self(left, k.var1)
        return k.replace(nngp=mapped(k.nngp), ntk=k.map_ntk(mapped), var1=var1,
                         var2=var1 if k.symmetric else mapped_self(right, k.var2))
