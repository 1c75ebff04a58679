"""Branching architectures (neural-tangents' `FanOut`, `parallel`, `FanInSum`,
`FanInConcat`, `FanInProd`, `Identity`): residual networks, concatenations, products.

A residual block reads
    serial(FanOut(2), parallel(serial(Relu(), Conv(64, (3, 3), padding="SAME"), ...), Identity()),
           FanInSum())
Between `FanOut(n)` and a fan-in layer the kernel state is a list of n states, one per
branch; `parallel` maps branch i through its layer i.

Kernels of the merges (Novak et al. 2020, neural-tangents' `stax.branching`):
  * FanInSum:    K = sum_i K_i,  Theta = sum_i Theta_i   (zero-mean Gaussian branches);
  * FanInConcat: K = sum_i (n_i / sum_j n_j) K_i, the same for Theta (channel widths n_i);
                 the result is not Gaussian (a mixture of the branches' covariances);
  * FanInProd:   K = prod_i K_i,  Theta = sum_i Theta_i prod_{j != i} K_j.
The sum and the product hold for branches z_1..z_n **independent** given their common input,
which neural-tangents assumes without checking.  At infinite width a branch that passes through
an affine layer with its own weights (Dense, Conv, attention) after the `FanOut` is independent
of the others unit by unit (`KernelState.fresh`), and the cross terms of the NTK vanish; the
sum and the product are exact when at most one branch is not such a branch (the residual
block's `Identity`), and refused otherwise: two `Identity` branches sum to 2z (kernel 4K, not
2K), `Identity` times `Relu` has E[z relu(z) z' relu(z')], not K times relu's kernel.  The
concatenation keeps each branch's units apart and needs no independence.
"""
from __future__ import annotations

import functools
import math

import torch
from torch import nn

from .._core.validation import positive_int
from .conv import flatten_state
from .layer import Layer, channel_axis
from .serial import Container, check_branching, located
from .state import KernelState, merged_freshness


class FanOutModule(nn.Module):
    """`num` references to the input, one per branch."""

    def __init__(self, num: int):
        super().__init__()
        self.num = num

    def forward(self, h: torch.Tensor) -> list[torch.Tensor]:
        return [h] * self.num

    def extra_repr(self) -> str:
        return str(self.num)


class ParallelModule(nn.Module):
    """Branch i of the input list through module i."""

    def __init__(self, branches: list[nn.Module]):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, hs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [branch(h) for branch, h in zip(self.branches, hs, strict=True)]


class FanInModule(nn.Module):
    """Merge branch outputs: "sum", "prod" or "concat" (along `dim`)."""

    def __init__(self, mode: str, dim: int = -1):
        super().__init__()
        self.mode, self.dim = mode, dim

    def forward(self, hs: list[torch.Tensor]) -> torch.Tensor:
        if self.mode == "concat":
            return torch.cat(hs, self.dim)
        return functools.reduce(torch.add if self.mode == "sum" else torch.mul, hs)

    def extra_repr(self) -> str:
        return self.mode + (f", dim={self.dim}" if self.mode == "concat" else "")


class Identity(Layer[KernelState, KernelState]):
    """`Identity()`: passes its input (the skip branch of a residual block).

    Examples
    --------
    The input kernel x x'/d passes unchanged:

    >>> import torch, ntklab as nk
    >>> x = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    >>> nk.serial(nk.Identity()).kernel(x, get="nngp")
    tensor([[0.5000, 0.3000],
            [0.3000, 0.5000]], dtype=torch.float64)
    """

    mask_rule = "elementwise"

    def build(self, in_shape, generator, dtype):
        return nn.Identity(), in_shape

    def kernel_map(self, k: KernelState) -> KernelState:
        return k


class FanOut(Layer[KernelState, list[KernelState]]):
    """`FanOut(num)`: `num` copies of the input, one per branch of the next `parallel`.

    Parameters
    ----------
    num : int
        Number of branches (copies of the input).

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> x = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    >>> residual = nk.serial(nk.FanOut(2), nk.parallel(nk.serial(nk.Relu(), nk.Dense(8)), nk.Identity()), nk.FanInSum())
    >>> nk.serial(nk.Dense(8), residual, nk.Dense(1)).kernel(x, get="nngp").shape
    torch.Size([2, 2])
    """

    def __init__(self, num: int):
        self.num = positive_int(num, "num (branches of FanOut)")

    def build(self, in_shape, generator, dtype):
        return FanOutModule(self.num), [in_shape] * self.num

    def kernel_map(self, k: KernelState) -> list[KernelState]:
        """`num` copies (branches consume their state), none of them `fresh` (all are the same
        units; see `KernelState.fresh`)."""
        k = k.fanned_out()
        return [k] + [k.clone() for _ in range(self.num - 1)]


class Parallel(Container):
    """`parallel(*layers)`: layer i acts on branch i (neural-tangents' `stax.parallel`).

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> branches = nk.parallel(nk.Dense(4), nk.Dense(4))
    >>> branches
    parallel(Dense(4), Dense(4))
    >>> len(branches.layers)
    2
    """

    name = "parallel"
    takes_branches = True

    def _check(self, branches: list) -> None:
        if len(branches) != len(self.layers):
            raise ValueError(f"it has {len(self.layers)} layers but gets {len(branches)} branches; "
                             f"give parallel(...) one layer per branch of the FanOut before it "
                             f"(nk.Identity() for a branch left unchanged)")

    def build(self, in_shape, generator, dtype):
        self._check(in_shape)
        modules, shapes = [], []
        for i, (layer, shape) in enumerate(zip(self.layers, in_shape, strict=True)):
            with located(self, i, layer):
                check_branching(layer, shape)
                module, shape = layer.build(shape, generator, dtype)
            modules.append(module)
            shapes.append(shape)
        return ParallelModule(modules), shapes

    def kernel_map(self, ks: list[KernelState]) -> list[KernelState]:
        self._check(ks)
        out = []
        for i, (layer, k) in enumerate(zip(self.layers, ks, strict=True)):
            with located(self, i, layer):
                check_branching(layer, k)
                out.append(layer.kernel_map(k))
        return out


def parallel(*layers: Layer) -> Parallel:
    """Apply `layers[i]` to branch i of a `FanOut`: `nk.parallel(nk.Dense(512), nk.Identity())`.

    Parameters
    ----------
    *layers : Layer
        One layer (or block) per branch; branch i of the incoming `FanOut` goes through layer i.

    Returns
    -------
    Parallel

    Examples
    --------
    A residual block, as neural-tangents' `stax`:

    >>> import torch, ntklab as nk
    >>> block = nk.serial(nk.FanOut(2), nk.parallel(nk.serial(nk.Relu(), nk.Dense(64)), nk.Identity()),
    ...                   nk.FanInSum())
    >>> net = nk.serial(nk.Dense(64), block, nk.Relu(), nk.Dense(1))
    >>> net.kernel(torch.randn(3, 4, dtype=torch.float64), get="ntk").shape
    torch.Size([3, 3])
    """
    return Parallel(*layers)


def _sample_channel_axis(shape: tuple[int, ...]) -> int:
    """The channel axis of one sample's shape (no batch axis): 0 for images `(C, H, W)`, the
    last one for vectors `(d,)` and token sequences `(T, C)`."""
    return channel_axis(shape) - 1 if len(shape) >= 3 else len(shape) - 1


def _at_each_position(k: KernelState, like: KernelState) -> KernelState:
    """A vector state `k` as a same-position layout with the positions of `like` (a flattened
    branch's) and `k.width / positions` channels (a multiple): every feature of a vector branch
    has the same kernel, so each position gets `k`'s."""
    ones = (1,) * len(like.spatial)
    spread = lambda t: t.reshape(*t.shape, *ones).expand(*t.shape, *like.spatial).contiguous()  # noqa: E731
    var1, var2 = k.map_variances(spread)
    return k.replace(nngp=spread(k.nngp), ntk=k.map_ntk(spread), var1=var1, var2=var2,
                     width=k.width // math.prod(like.spatial), spatial=like.spatial, full=False)


def _positions_lost(ks: list[KernelState]) -> str | None:
    """The first branch's `positions_lost` (see `KernelState`), None when none has it."""
    return next((k.positions_lost for k in ks if k.positions_lost is not None), None)


class _FanIn(Layer[list[KernelState], KernelState]):
    """Merge the branches of a `FanOut` into one representation."""

    takes_branches = True
    mode = "sum"

    def _check_shapes(self, shapes: list, same_channels: bool) -> None:
        shapes = [tuple(s) for s in shapes]
        axis = _sample_channel_axis(shapes[0])
        rest = {s[:axis] + s[axis + 1:] if not same_channels else s for s in shapes}
        if len({len(s) for s in shapes}) > 1 or len(rest) > 1:
            what = "shapes" if same_channels else "shapes apart from channels"
            raise ValueError(f"the branches' {what} differ: {shapes}; make every branch end with "
                             f"the same {'width and ' if same_channels else ''}spatial shape")

    def _check_states(self, ks: list[KernelState], same_channels: bool) -> None:
        self._check_shapes([k.sample_shape for k in ks], same_channels)
        if len({k.full for k in ks}) > 1:
            raise ValueError("the branches carry different pixel-pair layouts")

    def _check_independent(self, ks: list[KernelState]) -> None:
        """The sum's and the product's kernels are those of independent branches: refuse when
        two or more branches are not `fresh` (no Dense/Conv/attention of their own after the
        FanOut), which are functions of the same units (e.g. two Identity branches: z + z = 2z
        has kernel 4K, not K + K)."""
        shared = [i for i, k in enumerate(ks) if not k.fresh]
        if len(shared) > 1:
            what = "kernel of the sum is not K_0 + K_1" if self.mode == "sum" else \
                "kernel of the product is not K_0 K_1"
            raise ValueError(
                f"branches {', '.join(map(str, shared[:-1]))} and {shared[-1]} of the parallel "
                f"before it are not independent: none of them passes through a Dense/Conv/attention "
                f"layer of its own after the FanOut, so they are functions of the same units and the "
                f"{what} (neural-tangents assumes independent branches); put a Dense/Conv at the end "
                f"of all but one branch")

    def build(self, in_shape, generator, dtype):
        self._check_shapes(in_shape, self.mode != "concat")
        if self.mode != "concat":
            return FanInModule(self.mode), tuple(in_shape[0])
        axis, out = _sample_channel_axis(tuple(in_shape[0])), list(in_shape[0])
        out[axis] = sum(shape[axis] for shape in in_shape)
        return FanInModule("concat", channel_axis(tuple(in_shape[0]))), tuple(out)

    def _per_position(self, ks: list[KernelState]) -> KernelState | None:
        """For a merge acting on each feature (sum, product) of branches of which one or more
        are flattened images or sequences (`KernelState.positions`): the merge of the branches'
        same-position layouts, flattened; None when no branch is flattened.  A plain vector
        branch is the same at every position; branches flattened from different layouts
        (whose features pair up across positions) are refused, and so are branches whose
        positions were lost (`KernelState.positions_lost`) beside another flattened branch."""
        inner = [k.positions for k in ks if k.positions is not None]
        lost = [i for i, k in enumerate(ks) if k.positions_lost is not None]
        if lost and len(inner) + len(lost) > 1:
            raise ValueError(f"branch {lost[0]} is {ks[lost[0]].positions_lost}: its features cannot "
                             f"be paired position by position with those of the other flattened "
                             f"branch; concatenate before Flatten, or put a Dense layer after the "
                             f"FanInConcat")
        if not inner:
            return None
        layouts = {(k.width, k.spatial) for k in inner}
        if len(layouts) > 1:
            raise ValueError(f"the branches are flattened from different layouts (channels, "
                             f"positions) {sorted(layouts)}: their features pair up across "
                             f"positions, which this kernel does not track; merge before Flatten "
                             f"(or end each branch with a Dense layer)")
        like = inner[0]
        return flatten_state(self.kernel_map([_at_each_position(k, like) if k.positions is None
                                              else k.positions for k in ks]))


class FanInSum(_FanIn):
    """`FanInSum()`: the sum of the branches. Kernel: `K = sum_i K_i`, `Theta = sum_i Theta_i`,
    exact for independent zero-mean Gaussian branches: each is Gaussian (non-Gaussian branches
    are refused, as in neural-tangents) and all but at most one pass through a Dense/Conv/
    attention layer of their own after the `FanOut` (else refused: see the module docstring).

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> x = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    >>> block = nk.serial(nk.FanOut(2), nk.parallel(nk.serial(nk.Relu(), nk.Dense(8)), nk.Identity()), nk.FanInSum())
    >>> nk.serial(nk.Dense(8), block, nk.Dense(1)).kernel(x, get="ntk").shape
    torch.Size([2, 2])
    """

    def kernel_map(self, ks: list[KernelState]) -> KernelState:
        self._check_states(ks, same_channels=True)
        if len(ks) > 1 and not all(k.is_gaussian for k in ks):
            flags = [k.is_gaussian for k in ks]
            raise ValueError(f"FanInSum adds zero-mean Gaussian branches only (Gaussian: {flags}); "
                             f"end every branch with an affine layer (nk.Dense / nk.Conv), e.g. "
                             f"move the activation before the FanOut")
        self._check_independent(ks)
        if (merged := self._per_position(ks)) is not None:
            return merged
        def total(values: list) -> torch.Tensor | float:  # in place: branches are consumed
            return functools.reduce(lambda a, b: a + b if isinstance(a, float) else a.add_(b), values)

        ntk = None if ks[0].ntk is None else total([k.ntk for k in ks])
        var1 = total([k.var1 for k in ks])
        symmetric = all(k.symmetric for k in ks)
        var2 = var1 if symmetric else total([k.var2 for k in ks])
        return ks[0].replace(nngp=total([k.nngp for k in ks]), ntk=ntk, var1=var1,
                             var2=var2, symmetric=symmetric, is_gaussian=True,
                             positions_lost=_positions_lost(ks), **merged_freshness(ks))


class FanInProd(_FanIn):
    """`FanInProd()`: the elementwise product of the branches. Kernel (independent branches:
    all but at most one pass through a Dense/Conv/attention layer of their own after the
    `FanOut`, else refused; they need not be Gaussian): `K = prod_i K_i`,
    `Theta = sum_i Theta_i prod_{j != i} K_j` (product rule); the output is not Gaussian (for
    two or more branches).

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> x = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    >>> block = nk.serial(nk.FanOut(2), nk.parallel(nk.serial(nk.Relu(), nk.Dense(8)), nk.Identity()), nk.FanInProd())
    >>> nk.serial(nk.Dense(8), block, nk.Dense(1)).kernel(x, get="ntk").shape
    torch.Size([2, 2])
    """

    mode = "prod"

    def kernel_map(self, ks: list[KernelState]) -> KernelState:
        self._check_states(ks, same_channels=True)
        self._check_independent(ks)
        if (merged := self._per_position(ks)) is not None:
            return merged
        nngp, ntk = ks[0].nngp, ks[0].ntk
        for k in ks[1:]:
            if ntk is not None and k.ntk is not None:   # every branch carries it, or none
                ntk = ntk * k.nngp + nngp * k.ntk
            nngp = nngp * k.nngp
        var1 = math.prod([k.var1 for k in ks[1:]], start=ks[0].var1)
        symmetric = all(k.symmetric for k in ks)
        var2 = var1 if symmetric else math.prod([k.var2 for k in ks[1:]], start=ks[0].var2)
        return ks[0].replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2, symmetric=symmetric,
                             is_gaussian=len(ks) == 1 and ks[0].is_gaussian,
                             positions_lost=_positions_lost(ks), **merged_freshness(ks))


class FanInConcat(_FanIn):
    """`FanInConcat(axis=None)`: concatenate the branches along channels (the feature axis of
    vectors and sequences, axis 1 of NCHW images; ntklab concatenates channels only, so
    `axis` may only name that axis). Kernel: the width-weighted mean
    `K = sum_i (n_i / sum_j n_j) K_i`, likewise Theta; the output is not Gaussian (as in
    neural-tangents: an activation needs an affine layer after the concatenation).

    Parameters
    ----------
    axis : int, optional
        The channel axis of the concatenation (default: the last for vectors and sequences,
        1 for NCHW images).

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> x = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    >>> block = nk.serial(nk.FanOut(2), nk.parallel(nk.serial(nk.Relu(), nk.Dense(8)), nk.Identity()), nk.FanInConcat())
    >>> nk.serial(nk.Dense(8), block, nk.Dense(1)).kernel(x, get="ntk").shape
    torch.Size([2, 2])
    """

    mode = "concat"

    def __init__(self, axis: int | None = None):
        if axis not in (None, -1, 1, 2, -3):
            raise ValueError(f"FanInConcat concatenates channels only: axis must be None (channels), "
                             f"-1 (vectors, sequences) or 1 (NCHW images), got {axis!r}")
        self.axis = axis

    def _check_axis(self, shape: tuple) -> None:
        if self.axis is None:
            return
        ndim = len(shape) + 1  # with the batch axis
        if self.axis % ndim != channel_axis(shape) % ndim:
            raise ValueError(f"axis={self.axis} is not the channel axis of inputs of shape "
                             f"(N, *{tuple(shape)}); ntklab concatenates channels only: use "
                             f"FanInConcat() (axis {channel_axis(shape)} here)")

    def build(self, in_shape, generator, dtype):
        self._check_axis(tuple(in_shape[0]))
        return super().build(in_shape, generator, dtype)

    def kernel_map(self, ks: list[KernelState]) -> KernelState:
        """The width-weighted mean of the branches' states.  Of flattened branches (`positions`),
        the flattening of the concatenation of their same-position layouts, when the features sit
        where they would (see `_position_parts`); else the result's `positions_lost` says why."""
        self._check_axis(ks[0].sample_shape)
        self._check_states(ks, same_channels=False)
        parts, lost = _position_parts(ks)
        if parts is not None:
            return flatten_state(_concatenated(parts))
        return _concatenated(ks).replace(positions_lost=lost)


def _position_parts(ks: list[KernelState]) -> tuple[list[KernelState] | None, str | None]:
    """For a concatenation of vector branches of which some are flattened images (`positions`):
    their same-position layouts, whose concatenation along channels flattens to the
    concatenation of the flattened vectors (channels first: feature c * P + p of each branch is
    at position p), a plain vector branch spread over the positions (each position gets
    width / P of its features, when P divides its width); None when no branch is flattened.
    Else (None, why the positions are lost): when a branch has lost them, the flattened
    branches' positions differ, a vector's width is not a multiple of P, or the branches are
    flattened token sequences (whose features run token by token: [A, B] is not the flattening
    of A and B concatenated along channels)."""
    lost, flat = _positions_lost(ks), [k.positions for k in ks if k.positions is not None]
    if lost is not None or not flat:
        return None, lost
    spatials = sorted({p.spatial for p in flat})
    if len(spatials) > 1:
        return None, f"a FanInConcat of branches flattened from different positions {spatials}"
    like, count = flat[0], math.prod(flat[0].spatial)
    if len(like.spatial) == 1 and count > 1:
        return None, ("a FanInConcat of flattened token sequences (their features run token by "
                      "token, so the concatenation's do not sit at the tokens of any flattened "
                      "sequence)")
    odd = [k.width for k in ks if k.positions is None and k.width % count]
    if odd:
        return None, (f"a FanInConcat of a flattened image of {count} positions and a vector of "
                      f"{odd[0]} features (not a multiple of {count})")
    return [k.positions if k.positions is not None else _at_each_position(k, like) for k in ks], None


def _concatenated(ks: list[KernelState]) -> KernelState:
    """`FanInConcat`'s kernel: the width-weighted mean of the branches' (checked) states."""
    widths = [k.width for k in ks]
    total = sum(widths)

    def mean(values: list) -> torch.Tensor | float:
        weighted = [v * (w / total) for v, w in zip(values, widths, strict=True)]
        return functools.reduce(lambda a, b: a + b, weighted)

    var1 = mean([k.var1 for k in ks])
    symmetric = all(k.symmetric for k in ks)
    var2 = var1 if symmetric else mean([k.var2 for k in ks])
    ntk = None if ks[0].ntk is None else mean([k.ntk for k in ks])
    return ks[0].replace(nngp=mean([k.nngp for k in ks]), ntk=ntk, var1=var1, var2=var2,
                         width=total, symmetric=symmetric, is_gaussian=False, positions=None,
                         **merged_freshness(ks))
