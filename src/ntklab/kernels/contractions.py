"""Contractions of per-sample features into kernel blocks, in the three output modes of
`empirical_ntk`: "full" [n1, n2, O, O], "trace" [n1, n2] (mean over outputs, as
neural-tangents' trace_axes) and "diagonal" [n1, n2, O]; `output_axes` maps neural-tangents'
`trace_axes` / `diagonal_axes` onto them."""
from __future__ import annotations

import math
from typing import Any, Callable

import torch

MODES = ("trace", "full", "diagonal")


def contract(left: torch.Tensor, right: torch.Tensor, mode: str) -> torch.Tensor:
    """sum_f left[i, a, f] right[j, b, f] as `mode` asks ([n1, n2, O, O] / trace / diagonal)."""
    n1, n_out, width = left.shape
    n2 = right.shape[0]
    if mode == "full":
        return (left.reshape(n1 * n_out, width) @ right.reshape(n2 * n_out, width).T
                ).reshape(n1, n_out, n2, n_out).permute(0, 2, 1, 3)
    if mode == "trace":
        return left.reshape(n1, -1) @ right.reshape(n2, -1).T / n_out
    return torch.bmm(left.permute(1, 0, 2), right.permute(1, 2, 0)).permute(1, 2, 0)


def expand_to(factor: torch.Tensor, mode: str) -> torch.Tensor:
    """`factor` [N1, N2] shaped to broadcast against a block of `mode` ("full", "trace", "diagonal")."""
    return {"full": factor[:, :, None, None], "trace": factor, "diagonal": factor[:, :, None]}[mode]


def _axes(value: Any, name: str, ndim: int) -> tuple[int, ...]:
    """neural-tangents' axes of f(x) `[N, *S]` (`ndim` = 1 + len(S)) as positive output axes
    1..ndim-1; the batch axis 0, out-of-range and repeated axes are refused by name."""
    items = (value,) if isinstance(value, int) else value
    if not isinstance(items, (tuple, list)) or not all(isinstance(a, int) and not isinstance(a, bool)
                                                        for a in items):
        raise ValueError(f"{name} must be an int or a tuple of ints (axes of the model's output "
                         f"[N, ...]), got {value!r}")
    axes = []
    for a in items:
        if not -ndim <= a < ndim:
            raise ValueError(f"{name}={value!r}: axis {a} is out of range for the model's outputs of "
                             f"{ndim} axes [N, ...] (use -1 for the last)")
        if a % ndim == 0:
            raise ValueError(f"{name}={value!r}: axis {a} is the batch axis of the outputs [N, ...]; "
                             f"name output axes only (for per-sample kernels take the diagonal "
                             f"over samples of the result)")
        axes.append(a % ndim)
    if len(set(axes)) < len(axes):
        raise ValueError(f"{name}={value!r} names an axis twice")
    return tuple(axes)


def output_axes(trace_axes: Any, diagonal_axes: Any, sample_shape: tuple[int, ...]) -> tuple[str, Callable]:
    """neural-tangents' `trace_axes` / `diagonal_axes` (of `empirical_ntk_fn`; None: its
    defaults (-1,) and ()) for outputs of per-sample shape `sample_shape`, as the `empirical_ntk`
    mode to compute and the map from that mode's block to neural-tangents' kernel:

    * every output axis traced: "trace" (the mean over outputs, neural-tangents' trace / size);
    * every axis traced or diagonal: "diagonal" `[N1, N2, O]`, viewed as `[N1, N2, *S]` and
      averaged over the traced axes;
    * otherwise "full" `[N1, N2, O, O]`, viewed as `[N1, N2, *S, *S]`, traced (mean) and
      diagonalised along the named axes; the axes left are in neural-tangents' order, a pair
      `(s, s')` for each axis kept whole and one axis for each diagonal one."""
    ndim = 1 + len(sample_shape)
    traced = _axes((-1,) if trace_axes is None else trace_axes, "trace_axes", ndim)
    diagonal = _axes(() if diagonal_axes is None else diagonal_axes, "diagonal_axes", ndim)
    both = sorted(set(traced) & set(diagonal))
    if both:
        given = "(-1,) (neural-tangents' default)" if trace_axes is None else repr(trace_axes)
        raise ValueError(f"output axis {both[0]} is in both trace_axes={given} and diagonal_axes="
                         f"{diagonal_axes!r}: an axis is traced or diagonal, not both (e.g. pass trace_axes=())")
    kept = [a for a in range(1, ndim) if a not in traced and a not in diagonal]
    n1_n2 = "ab"
    left = "".join(chr(ord("c") + i) for i in range(ndim - 1))
    right = "".join(left[i] if i + 1 in traced or i + 1 in diagonal else left[i].upper() for i in range(ndim - 1))
    out = "".join(left[i] + (right[i] if i + 1 in kept else "") for i in range(ndim - 1) if i + 1 not in traced)
    size = math.prod(sample_shape[a - 1] for a in traced)
    if not kept:
        if len(traced) == ndim - 1:
            return "trace", lambda block: block
        return "diagonal", lambda block: torch.einsum(
            f"{n1_n2}{left}->{n1_n2}{out}", block.reshape(block.shape[:2] + sample_shape)) / size
    return "full", lambda block: torch.einsum(
        f"{n1_n2}{left}{right}->{n1_n2}{out}", block.reshape(block.shape[:2] + sample_shape * 2)) / size
