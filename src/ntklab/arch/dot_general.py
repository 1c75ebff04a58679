"""`DotGeneral`: contraction with a fixed constant (neural-tangents' `stax.DotGeneral`).

Finite layer: `lax.dot_general(x, rhs, dimension_numbers)` or `lax.dot_general(lhs, x, ...)`
(XLA's DotGeneral: output axes = the batch axes, then the free axes of the left factor, then
of the right one), with the sample axis moved back first and the channel axis to ntklab's
layout for the output's rank (`[N, C, H, W]` images, `[N, T, C]` sequences, `[N, d]` vectors);
the axes in `dimension_numbers` are the input's, in that layout.  The sample and channel axes
may not be contracted or batched, so each channel of each sample goes through the same linear
map of positions, y_c = M x_c (M `[P', P]`, P positions in, P' out).

Kernel: no parameters, so K'[s, t] = sum_{p, q} M[s, p] M[t, q] K[p, q] over all position pairs
(`needs_all_pixel_pairs`) and the NTK likewise; a scalar constant c gives c^2 K.  Gaussian
inputs stay Gaussian.  neural-tangents 0.6.5 `Kernel.dot_general` computes the same.
"""
from __future__ import annotations

import math
import string
from typing import Any

import numpy as np
import torch
from torch import nn

from .layer import Layer
from .state import KernelState


def _axes(value: Any, name: str) -> tuple[int, ...]:
    try:
        axes = tuple(int(a) for a in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a tuple of axes, got {value!r}") from None
    if any(isinstance(a, bool) for a in value):
        raise ValueError(f"{name} must be a tuple of integer axes, got {value!r}")
    return axes


def _dimension_numbers(value: Any) -> tuple[tuple[tuple[int, ...], ...], ...]:
    """`((lhs_contracting, rhs_contracting), (lhs_batch, rhs_batch))`, validated as tuples."""
    try:
        (lc, rc), (lb, rb) = value
    except (TypeError, ValueError):
        raise ValueError(f"dimension_numbers must be ((lhs_contracting, rhs_contracting), "
                         f"(lhs_batch, rhs_batch)), got {value!r}") from None
    names = ("lhs contracting", "rhs contracting", "lhs batch", "rhs batch")
    lc, rc, lb, rb = (_axes(v, f"dimension_numbers' {n} axes") for v, n in zip((lc, rc, lb, rb), names, strict=True))
    if len(lc) != len(rc) or len(lb) != len(rb):
        raise ValueError(f"dimension_numbers pairs axes of lhs and rhs: {value!r} has pairs of "
                         f"different lengths")
    return (lc, rc), (lb, rb)


class DotGeneralModule(nn.Module):
    """Finite-width `DotGeneral`: one einsum with the constant, axes in ntklab's layout."""

    def __init__(self, equation: str, other: torch.Tensor):
        super().__init__()
        self.equation, self.other_shape = equation, tuple(other.shape)
        self.register_buffer("other", other)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum(self.equation, x, self.other.to(x.dtype))

    def extra_repr(self) -> str:
        return f"{self.equation!r}, constant of shape {self.other_shape}"


class DotGeneral(Layer[KernelState, KernelState]):
    """`DotGeneral(lhs=None, rhs=None, dimension_numbers=(((), ()), ((), ())))`: the inputs
    dotted with a constant array (neural-tangents' `stax.DotGeneral`; see the module docstring
    for the layout of the output).  At most one of `lhs`, `rhs` is given: the other factor is
    the input; neither is the identity.  The axes of `dimension_numbers` count the input's
    axes in ntklab's layout (`[N, C, H, W]`, `[N, T, C]`, `[N, d]`); the sample axis 0 and the
    channel axis cannot be among them (their kernel would not be the network's: refused).

    Parameters
    ----------
    lhs, rhs : float, array or tensor, optional
        The constant factor, on the left or on the right of the input.
    dimension_numbers : ((tuple, tuple), (tuple, tuple))
        `((lhs_contracting, rhs_contracting), (lhs_batch, rhs_batch))`, as `jax.lax.dot_general`.

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> difference = torch.tensor([[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0]]).T   # [W, W']
    >>> net = nk.serial(nk.Conv(64, (3, 3), padding="SAME"), nk.Relu(),
    ...                 nk.DotGeneral(rhs=difference, dimension_numbers=(((3,), (0,)), ((), ()))),
    ...                 nk.GlobalAvgPool(), nk.Dense(1))                  # width 4 -> 2
    >>> net.kernel(torch.randn(3, 2, 5, 4, dtype=torch.float64), get="nngp").shape
    torch.Size([3, 3])
    """

    def __init__(self, *, lhs: Any = None, rhs: Any = None,
                 dimension_numbers: Any = (((), ()), ((), ()))):
        if lhs is not None and rhs is not None:
            raise ValueError("at most one of the constants lhs and rhs can be given: the other "
                             "factor is the layer's input")
        self.is_lhs = rhs is None
        constant = lhs if self.is_lhs else rhs
        self.other = None if constant is None else torch.as_tensor(
            constant.detach() if isinstance(constant, torch.Tensor) else np.asarray(constant, dtype=float),
            dtype=torch.float64)
        if self.other is not None and not bool(torch.isfinite(self.other).all()):
            raise ValueError(f"{'lhs' if self.is_lhs else 'rhs'} must be finite")
        self.dimension_numbers = _dimension_numbers(dimension_numbers)
        if self.other is None and self.dimension_numbers != (((), ()), ((), ())):
            raise ValueError("dimension_numbers needs a constant lhs or rhs to contract with")
        self.scalar = self.other is None or (self.other.ndim == 0 and not any(map(any, self.dimension_numbers)))
        self.needs_all_pixel_pairs = not self.scalar

    def _equation(self, in_rank: int, other_rank: int) -> str:
        """The einsum of the finite layer for inputs of rank `in_rank` (sample axis included) and
        a constant of rank `other_rank`, checked."""
        (lc, rc), (lb, rb) = self.dimension_numbers
        (given_c, given_oc), (given_b, given_ob) = ((rc, lc), (rb, lb)) if self.is_lhs else ((lc, rc), (lb, rb))
        channel = 1 if in_rank == 4 else in_rank - 1
        for axes, rank, whose in ((given_c + given_b, in_rank, "input"),
                                  (given_oc + given_ob, other_rank, "constant")):
            if any(not -rank <= a < rank for a in axes) or len({a % rank for a in axes}) != len(axes):
                raise ValueError(f"dimension_numbers {self.dimension_numbers} name axes out of range "
                                 f"or twice for the {whose}, of rank {rank}")
        input_c, input_b = [a % in_rank for a in given_c], [a % in_rank for a in given_b]
        other_c, other_b = [a % other_rank for a in given_oc], [a % other_rank for a in given_ob]
        if 0 in input_c + input_b or channel in input_c + input_b:
            raise ValueError(f"dimension_numbers {self.dimension_numbers} contract or batch the "
                             f"{'sample axis 0' if 0 in input_c + input_b else f'channel axis {channel}'} "
                             f"of the input (layout [N, C, H, W], [N, T, C] or [N, d]); only "
                             f"positions can be mixed (the kernel treats the channels as infinitely many)")
        letters = iter(string.ascii_letters)
        x_axes = [next(letters) for _ in range(in_rank)]
        o_axes = [next(letters) for _ in range(other_rank)]
        for i, o in zip(input_c + input_b, other_c + other_b, strict=True):
            o_axes[o] = x_axes[i]
        free_x = [x_axes[i] for i in range(in_rank) if i not in input_c + input_b]
        free_o = [o_axes[i] for i in range(other_rank) if i not in other_c + other_b]
        batch = [x_axes[i] for i in input_b]
        out = batch + (free_o + free_x if self.is_lhs else free_x + free_o)
        if len(out) not in (2, 3, 4):
            raise ValueError(f"the output would have rank {len(out)}; ntklab's layouts are "
                             f"[N, d], [N, T, C] and [N, C, H, W]")
        sample, chan = x_axes[0], x_axes[channel]
        rest = [a for a in out if a not in (sample, chan)]
        layout = [sample, chan, *rest] if len(out) == 4 else [sample, *rest, chan]
        return f"{''.join(x_axes)},{''.join(o_axes)}->{''.join(layout)}"

    def _module(self, in_shape: tuple[int, ...]) -> tuple[DotGeneralModule, tuple[int, ...]]:
        other = self.other
        if other is None:
            raise ValueError("DotGeneral without a constant is the identity: it has no contraction")
        equation = self._equation(len(in_shape) + 1, other.ndim)
        module = DotGeneralModule(equation, other)
        try:
            out = module(torch.zeros(1, *in_shape, dtype=torch.float64))
        except RuntimeError as err:
            raise ValueError(f"dimension_numbers {self.dimension_numbers} pair axes of "
                             f"different sizes for inputs of shape {in_shape} and a constant "
                             f"of shape {tuple(other.shape)}: {err}") from None
        return module, tuple(out.shape[1:])

    def build(self, in_shape, generator, dtype):
        if self.other is None:
            return nn.Identity(), in_shape
        module, out_shape = self._module(tuple(in_shape))
        return module, out_shape

    def position_map(self, k: KernelState) -> tuple[torch.Tensor, tuple[int, ...]]:
        """M `[P', P]` (the map of positions of each channel) and the output's spatial shape,
        found by applying the finite layer to one input per position with one channel."""
        positions = math.prod(k.spatial)
        sample_shape = (1, *k.spatial) if len(k.spatial) == 2 else (*k.spatial, 1)
        module, out_shape = self._module(sample_shape)
        basis = torch.eye(positions, dtype=torch.float64)
        probe = basis.reshape(positions, *sample_shape) if len(k.spatial) == 2 else \
            basis.reshape(positions, *k.spatial, 1)
        out = module(probe)
        spatial = out_shape[1:] if len(out_shape) == 3 else out_shape[:-1]
        return out.reshape(positions, -1).T.to(k.nngp), tuple(spatial)

    def kernel_map(self, k: KernelState) -> KernelState:
        if self.scalar:
            c2 = 1.0 if self.other is None else float(self.other) ** 2
            return _scaled(k, c2)
        if k.positions is not None or k.positions_lost is not None:
            raise ValueError("it mixes the positions of a vector flattened from images or token "
                             "sequences; apply it before nk.Flatten()")
        if k.spatial and not k.full:
            raise ValueError("it needs the covariance of all position pairs: compute the kernel "
                             "through nk.serial(...).kernel, which tracks them")
        m, spatial = self.position_map(k)
        p = m.shape[1]

        def mapped(t: torch.Tensor, batch: tuple[int, ...]) -> torch.Tensor:
            pairs = t.reshape(*batch, p, p)
            return (m @ pairs @ m.T).reshape(*batch, *spatial, *spatial)

        n1, n2 = k.nngp.shape[:2]
        var1, var2 = k.map_variances(lambda var: mapped(var, (var.shape[0],)))
        return k.replace(nngp=mapped(k.nngp, (n1, n2)), ntk=k.map_ntk(lambda t: mapped(t, (n1, n2))),
                         var1=var1, var2=var2, spatial=spatial, full=bool(spatial),
                         positions=None)


def _scaled(k: KernelState, c2: float) -> KernelState:
    """`k` of the inputs times a constant c: every covariance times c^2 (the per-position
    layout of a flattened vector too)."""
    if c2 == 1.0:
        return k
    var1, var2 = k.map_variances(lambda var: var * c2)
    return k.replace(nngp=k.nngp * c2, ntk=k.map_ntk(lambda t: t * c2), var1=var1, var2=var2,
                     positions=None if k.positions is None else _scaled(k.positions, c2),
                     positions_lost=k.positions_lost)
