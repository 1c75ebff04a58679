"""Empirical neural tangent kernel of any `torch.nn.Module`.

    Theta(x, x')_{ab} = sum_p  d f_a(x; w) / d w_p  *  d f_b(x'; w) / d w_p

(lecture 21-22: the tangent kernel H_t(x, x') = <grad_w f(w_t; x), grad_w f(w_t; x')>;
Jacot, Gabriel & Hongler 2018), summed over the selected parameters p, for
outputs a, b of a model with O outputs.  `mode` says which part is returned:

    "full"      [N1, N2, O, O]   Theta_{ab}
    "trace"     [N1, N2]         (1/O) sum_a Theta_{aa}   (neural-tangents' trace_axes
                                  convention: the trace divided by O, so that it
                                  is comparable with the analytic per-output NTK)
    "diagonal"  [N1, N2, O]      Theta_{aa}

or, as neural-tangents' `empirical_ntk_fn`, `trace_axes` / `diagonal_axes` name axes of the
outputs f(x) `[N, *S]` to trace (mean) or take the diagonal of (`contractions.output_axes`).

Three strategies (Novak, Sohl-Dickstein & Schoenholz 2022, "Fast Finite Width
NTK", name the same three for JAX):

- "jacobian": per-sample Jacobians J(x) [O, P] by `torch.func.vmap(jacrev)`,
  contracted as one matrix product per tile (trace and diagonal directly, never
  through the full tensor);
- "ntk_vp": NTK-vector products, Theta v = J1 (J2^T v), by `vjp` then `jvp`,
  vectorised over the O * n2 basis cotangents of a tile;
- "structured": affine layers (`nn.Linear`, `nn.Conv2d`, and ntklab's own `Dense`
  and `Conv` modules, so `net.module(...)` takes this path) from activations and
  output cotangents without forming dW (`ntklab.kernels.structured`); the
  remaining parameters use "jacobian".  A layer used twice in one forward pass
  contributes over all pairs of calls.

`implementation="auto"` counts the floating-point operations of the candidates on
small probes (`ntklab.kernels.autotune`, as neural-tangents counts FLOPs) and uses the
one with the fewest at the requested sizes: a choice by shapes, never by timings, so
the default is reproducible bitwise.  Samples are tiled (`ntklab._core.tiling.Tiling`, upper tiles only for x2=None) so
the working memory (beyond the result itself) stays under `max_memory`.

Modules: `model_inputs` (input policy), `contractions`, `structured` (features and
plans), `autotune`, `spectrum` (largest eigenvalue, GD step size); this one drives.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .._core.validation import check_result_fits, parse_memory
from .._core.tiling import Tiling, store_tile
from .autotune import choose
from .contractions import MODES, output_axes
from .model_inputs import check_model, model_input, reference_tensor, select_parameters, takes_indices
from .structured import Features, Plan

IMPLEMENTATIONS = ("auto", "structured", "jacobian", "ntk_vp")


def _mirror(block: torch.Tensor) -> torch.Tensor:
    """Theta(x', x)_{ab} = Theta(x, x')_{ba}."""
    return block.transpose(0, 1).transpose(2, 3) if block.ndim == 4 else block.transpose(0, 1)


def _run(plan: Plan, implementation: str, x1: torch.Tensor, x2: torch.Tensor | None, mode: str,
         n_out: int, max_memory: int, progress: bool | None, dtype: torch.dtype) -> torch.Tensor:
    """The kernel [N1, N2, ...] in `dtype` (the model's; inputs may be integer indices), tile by tile."""
    other = x1 if x2 is None else x2
    n1, n2 = len(x1), len(other)
    shape = {"full": (n1, n2, n_out, n_out), "trace": (n1, n2), "diagonal": (n1, n2, n_out)}[mode]
    check_result_fits(shape, 1, dtype, x1.device, "use mode='trace' (one number per pair), "
                      "or fewer samples per call")
    if implementation == "ntk_vp":
        params = sum(p.numel() for p in plan.chosen.values())
        per_sample = 3.0 * n_out * (params + n_out) * dtype.itemsize
        size = int(max_memory / per_sample)
    else:
        per_sample = plan.feature_bytes(x1)
        size = int(max_memory / (2 * per_sample + 1))   # a row and a column tile
    if size < 1:
        raise ValueError(f"implementation={implementation!r} needs {per_sample / 2 ** 30:.2f} GiB per "
                         f"sample (its per-sample Jacobians or products and their work space), more "
                         f"than max_memory={max_memory / 2 ** 30:.2f} GiB allows for one tile; raise "
                         f"max_memory, or use implementation='structured' where the model's "
                         f"parameters are mostly in Linear/Conv2d layers")
    result = torch.empty(shape, dtype=dtype, device=x1.device)
    tiling = Tiling(n1, n2, size, symmetric=x2 is None)
    # feature strategies: if a row tile and all of x2's features fit, make each column tile once
    keep_columns = implementation != "ntk_vp" and per_sample * (n2 + size) < max_memory
    row_features: dict[int, Features] = {}
    column_features: dict[int, Features] = {}
    tiles = tiling.tiles()
    bar = tqdm(total=len(tiles), desc="empirical NTK", unit="tile", leave=False,
               disable=(len(tiles) < 4) if progress is None else not progress)
    with bar:
        for tile in tiles:
            rows, cols = tiling.slices(tile)
            if implementation == "ntk_vp":
                block = plan.ntk_vp_block(x1[rows], other[cols], mode)
            else:
                if tile[0] not in row_features:   # tiles come row by row: one row tile alive
                    row_features = {tile[0]: plan.features(x1[rows])}
                f1 = row_features[tile[0]]
                if tiling.on_diagonal(tile):
                    f2 = f1
                elif tile[1] in column_features:
                    f2 = column_features[tile[1]]
                else:
                    f2 = plan.features(other[cols])
                    if keep_columns:
                        column_features[tile[1]] = f2
                with torch.no_grad():
                    block = plan.kernel_block(f1, f2, mode)
            store_tile(result, tiling, tile, block, _mirror)
            bar.update()
    return result


def empirical_ntk(model: nn.Module, x1, x2=None, *, mode: str | None = None,
                  params: Sequence[str] | Sequence[torch.Tensor] | None = None,
                  implementation: str = "auto", max_memory: int | str | None = None,
                  progress: bool | None = None, trace_axes: int | Sequence[int] | None = None,
                  diagonal_axes: int | Sequence[int] | None = None) -> torch.Tensor:
    """Empirical NTK of `model` between the samples of `x1` [N1, ...] and `x2`
    [N2, ...] (`x2=None`: `x1` with itself; only upper tiles are computed).

    `params`: the parameters w of Theta = J_w J_w^T (default: all with
    requires_grad; e.g. `params=["fc.weight", "fc.bias"]` for the last layer).
    Computed in the model's dtype and on its device (the inputs must be on it: the
    model and the inputs decide, there is no `device` argument); `max_memory` (bytes
    or '2GiB', default None: 1 GiB as everywhere in ntklab) bounds the working memory
    beyond the returned tensor.  The model
    must map each sample independently (eval mode for BatchNorm).
    `implementation`: "auto" (the fewest counted operations, deterministic, see
    `ntklab.kernels.autotune`), or pin
    "structured", "jacobian" or "ntk_vp".

    `trace_axes`, `diagonal_axes` (instead of `mode`): neural-tangents' arguments, with its
    meaning and defaults ((-1,) and ()): axes of the outputs `[N, *S]` whose pairs are traced
    (averaged: the trace divided by their size) or reduced to their diagonal; the result is
    neural-tangents' `[N1, N2, ...]` (an axis kept whole gives a pair of axes, a diagonal one a
    single axis, in the outputs' order).  Computed by the mode that suffices: "trace" when every
    output axis is traced, "diagonal" when every one is traced or diagonal, else "full".

    Returns
    -------
    torch.Tensor
        `[N1, N2]` ("trace", the default), `[N1, N2, O, O]` ("full"), `[N1, N2, O]`
        ("diagonal"), or neural-tangents' shape for `trace_axes` / `diagonal_axes`.

    Raises
    ------
    ValueError
        For a model that is not an `nn.Module`, an unknown `mode` or `implementation`,
        inputs whose sample shapes differ, or a model whose output is not one row per
        sample (e.g. one scalar per batch); `mode` together with `trace_axes`/`diagonal_axes`,
        and axes that are the batch axis, out of range, repeated, or both traced and diagonal.

    Parameters
    ----------
    model : nn.Module
        Maps `[N, ...]` to `[N, O]` sample by sample.
    x1, x2 : tensor or array
        Samples; `x2=None`: `x1` with itself.  Converted to the model's dtype, except
        integer inputs of a model with `nn.Embedding`/`nn.EmbeddingBag`, which are its
        indices and are passed unchanged (Θ is a Jacobian in the parameters only).
    mode : {"trace", "full", "diagonal"}, optional
        Mean over outputs (None: "trace"), every output pair, or each output with itself.
    params : sequence of str or tensors, optional
        The parameters w of Θ = J_w J_wᵀ.
    implementation : {"auto", "structured", "jacobian", "ntk_vp"}
    max_memory : int or str, optional
        Bound on the working memory, e.g. "2GiB" (default None: 1 GiB).
    progress : bool, optional
    trace_axes, diagonal_axes : int or sequence of int, optional
        neural-tangents' arguments (instead of `mode`).

    Examples
    --------
    >>> import torch, ntklab as nk
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.Tanh(), torch.nn.Linear(64, 2))
    >>> x1, x2 = torch.randn(5, 3), torch.randn(4, 3)
    >>> nk.empirical_ntk(model, x1, x2).shape
    torch.Size([5, 4])
    >>> nk.empirical_ntk(model, x1, x2, mode="full").shape
    torch.Size([5, 4, 2, 2])
    >>> nk.empirical_ntk(model, x1, x2, trace_axes=(), diagonal_axes=(-1,)).shape   # neural-tangents'
    torch.Size([5, 4, 2])
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    neural_tangents = trace_axes is not None or diagonal_axes is not None
    if neural_tangents and mode is not None:
        raise ValueError(f"pass either mode={mode!r} or neural-tangents' trace_axes=/diagonal_axes=, not both")
    mode = "trace" if mode is None else mode
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    max_memory = parse_memory(max_memory)
    chosen = select_parameters(model, params)
    reference = reference_tensor(model)
    indices = takes_indices(model)   # integer inputs of an Embedding stay integers
    x1 = model_input(x1, "x1", reference, indices=indices)
    if x2 is not None:
        x2 = model_input(x2, "x2", reference, indices=indices)
        if x2.shape[1:] != x1.shape[1:]:
            raise ValueError(f"x1 and x2 must have the same sample shape, got {tuple(x1.shape[1:])} "
                             f"and {tuple(x2.shape[1:])}")
    n_out = check_model(model, x1, "x1", x2)
    to_axes = None
    if neural_tangents:
        with torch.no_grad():   # the per-sample output shape S (check_model ran the model on x1)
            sample_shape = tuple(model(x1[:1]).shape[1:])
        mode, to_axes = output_axes(trace_axes, diagonal_axes, sample_shape)
    if implementation == "auto":
        plans = {"structured": Plan(model, chosen, True, x1)}
        if not plans["structured"].structured:   # nothing structured: same as "jacobian"
            plans = {"jacobian": Plan(model, chosen, False, x1)}
        plans["ntk_vp"] = Plan(model, chosen, False, x1)
        implementation = choose(model, x1, x2, mode, plans) if len(x1) >= 16 else next(iter(plans))
        plan = plans[implementation]
    else:
        plan = Plan(model, chosen, implementation == "structured", x1)
    kernel = _run(plan, implementation, x1, x2, mode, n_out, max_memory, progress, reference.dtype)
    return kernel if to_axes is None else to_axes(kernel)
