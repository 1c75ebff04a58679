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

Three strategies (Novak, Sohl-Dickstein & Schoenholz 2022, "Fast Finite Width
NTK", name the same three for JAX):

- "jacobian": per-sample Jacobians J(x) [O, P] by `torch.func.vmap(jacrev)`,
  contracted as one matrix product per tile (trace and diagonal directly, never
  through the full tensor);
- "ntk_vp": NTK-vector products, Theta v = J1 (J2^T v), by `vjp` then `jvp`,
  vectorised over the O * n2 basis cotangents of a tile;
- "structured": for every `nn.Linear` y = W h + b whose weight is only used
  there, dy/dW is the outer product of h with the output cotangent
  delta_a = d f_a / d y, so its contribution is
      sum_{calls c, c'} (delta_a^c(x) . delta_b^c'(x')) (h^c(x) . h^c'(x') + 1[b]),
  computed from activations and cotangents (one backward pass per output for a
  whole tile) without forming dW; for `nn.Conv2d` (zero padding, one group) the
  per-sample Jacobian is formed from the same cotangents and the unfolded input
  patches, dW = sum_p delta_p (x) patch_p, instead of by vmap(jacrev); the
  remaining parameters use "jacobian".
  A layer used twice in one forward pass contributes over all pairs of calls.

`implementation="auto"` times the candidates on two small probe sets, fits
cost(n) = alpha n + beta n^2 to each, and uses the one predicted fastest at
the requested sizes.  Samples are tiled so the working memory (beyond the
result itself) stays under `max_memory`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.func import functional_call, jacrev, jvp, vjp, vmap
from tqdm.auto import tqdm

from .._validation import parse_memory, positive_int

MODES = ("trace", "full", "diagonal")
IMPLEMENTATIONS = ("auto", "structured", "jacobian", "ntk_vp")


# --------------------------------------------------------------------------- input checks

def select_parameters(model: nn.Module, params) -> dict[str, torch.Tensor]:
    """name -> parameter for `params`: None (every parameter with requires_grad),
    an iterable of parameter names, or an iterable of parameter tensors."""
    named = dict(model.named_parameters())
    if params is None:
        chosen = {name: p for name, p in named.items() if p.requires_grad}
        if not chosen:
            raise ValueError("the model has no parameter with requires_grad=True; pass "
                             "params=[names] to choose the parameters of the kernel")
        return chosen
    if isinstance(params, (str, torch.Tensor)) or not isinstance(params, Iterable):
        raise ValueError("params must be None, a list of parameter names, or a list of "
                         f"parameter tensors, got {type(params).__name__}")
    by_id = {id(p): name for name, p in named.items()}
    chosen = {}
    for item in params:
        if isinstance(item, str):
            if item not in named:
                known = ", ".join(list(named)[:8]) + (", ..." if len(named) > 8 else "")
                raise ValueError(f"params: the model has no parameter {item!r}; its parameters "
                                 f"are {known} (see model.named_parameters())")
            chosen[item] = named[item]
        elif isinstance(item, torch.Tensor) and id(item) in by_id:
            chosen[by_id[id(item)]] = item
        else:
            raise ValueError(f"params: {type(item).__name__} is not a parameter of the model; "
                             "give names from model.named_parameters() or the tensors themselves")
    if not chosen:
        raise ValueError("params is empty; choose at least one parameter")
    return chosen


def _reference_tensor(model: nn.Module) -> torch.Tensor:
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            return tensor
    raise ValueError("model has no floating-point parameters")


def model_input(x: Any, name: str, reference: torch.Tensor) -> torch.Tensor:
    """`x` as a tensor of the model's dtype and device; a torch tensor of another
    float dtype or device is an error (silently casting hides precision bugs)."""
    if isinstance(x, torch.Tensor):
        if x.device != reference.device:
            raise ValueError(f"{name} is on {x.device} but the model is on {reference.device}; "
                             f"move one of them, e.g. {name}.to({str(reference.device)!r})")
        if x.is_floating_point() and x.dtype != reference.dtype:
            raise ValueError(f"{name} has dtype {x.dtype} but the model's parameters are "
                             f"{reference.dtype}; convert with {name}.to({reference.dtype}) "
                             f"or model.to({x.dtype})")
        t = x.detach().to(reference.dtype)
    else:
        try:
            t = torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=reference.dtype,
                                device=reference.device)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name} must be a numeric array, got {type(x).__name__}") from err
    if t.ndim < 2 or t.shape[0] == 0:
        raise ValueError(f"{name} must have a batch axis first and at least one feature axis, "
                         f"got shape {tuple(t.shape)}; for one sample use {name}[None]")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN/inf values")
    return t


def check_batch_independent(model: nn.Module, x: torch.Tensor, name: str) -> None:
    """Per-sample strategies assume f(x_i) depends on x_i alone.  A module that
    mixes samples (BatchNorm in train mode, batch statistics) would give wrong
    kernels silently, so it is refused."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
            raise ValueError(f"{type(module).__name__} is in train mode, so each output depends "
                             "on the whole batch and per-sample tangent kernels are not defined; "
                             "call model.eval() first (running statistics are then used)")
    if len(x) < 2:
        return
    with torch.no_grad():
        both = model(x[:2])
        alone = model(x[:1])
    if not torch.allclose(both[:1], alone, rtol=1e-4, atol=1e-6 * (1 + float(alone.abs().max()))):
        raise ValueError(f"the model's output for {name}[0] changes when {name}[1] is in the "
                         "same batch: outputs depend on other samples (batch statistics, "
                         "train-mode normalisation?), so per-sample tangent kernels are not "
                         "defined; put the model in eval mode")


# --------------------------------------------------------------------------- contractions
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


def _expand_to(factor: torch.Tensor, mode: str) -> torch.Tensor:
    return {"full": factor[:, :, None, None], "trace": factor, "diagonal": factor[:, :, None]}[mode]


# --------------------------------------------------------------------------- features
@dataclass
class LayerUse:
    """A `nn.Linear` or `nn.Conv2d` whose selected weight/bias use the structured rule."""
    module: nn.Module
    weight: bool
    bias: bool

    @property
    def is_linear(self) -> bool:
        return isinstance(self.module, nn.Linear)


def _conv_padding(conv: nn.Conv2d):
    """Integer padding of a zero-padded, ungrouped Conv2d, or None if not supported."""
    if conv.groups != 1 or conv.padding_mode != "zeros" or conv.padding == "same":
        return None
    return 0 if conv.padding == "valid" else conv.padding


def _conv_jacobian(conv: nn.Conv2d, h: torch.Tensor, delta: torch.Tensor, weight: bool,
                   bias: bool) -> torch.Tensor:
    """Per-sample Jacobian of a convolution's output cotangents w.r.t. its weight and
    bias: dW[i, a] = sum_p delta_a[i, :, p] (x) patch_p(h_i), db[i, a] = sum_p delta_a[i, :, p]
    (delta [n, O, C_out, H', W'] -> [n, O, C_out * C_in * kh * kw (+ C_out)])."""
    n, n_out = delta.shape[:2]
    delta = delta.reshape(n, n_out, delta.shape[2], -1)                      # [n, O, C_out, L]
    parts = []
    if weight:
        patches = F.unfold(h, conv.kernel_size, dilation=conv.dilation,
                           padding=_conv_padding(conv), stride=conv.stride)   # [n, K, L]
        parts.append(torch.einsum("naol,nkl->naok", delta, patches).reshape(n, n_out, -1))
    if bias:
        parts.append(delta.sum(-1))
    return torch.cat(parts, 2)


@dataclass
class Features:
    """Per-sample quantities of one tile from which kernel blocks are contracted."""
    jacobian: torch.Tensor | None                      # [n, O, P_rest + P_conv]
    linear: list[list[tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=list)
    # per structured Linear layer: per call (h [n, in], delta [n, O, out])


class Plan:
    """What the kernel is made of for one model: parameter groups and strategy."""

    def __init__(self, model: nn.Module, chosen: dict[str, torch.Tensor], structured: bool,
                 x_probe: torch.Tensor):
        self.model = model
        self.chosen = chosen
        self.structured: list[LayerUse] = self._structured_layers(x_probe) if structured else []
        self.linear = [use for use in self.structured if use.is_linear]
        claimed = {id(t) for use in self.structured for t in self._own_tensors(use)}
        self.rest = {name: p for name, p in chosen.items() if id(p) not in claimed}

    # -- structured layers ---------------------------------------------------
    def _structured_layers(self, x_probe: torch.Tensor) -> list[LayerUse]:
        ids = {id(p) for p in self.chosen.values()}
        candidates = [LayerUse(m, id(m.weight) in ids, m.bias is not None and id(m.bias) in ids)
                      for m in self.model.modules()
                      if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d)
                                                      and _conv_padding(m) is not None)]
        candidates = [use for use in candidates if use.weight or use.bias]
        if not candidates:
            return []
        # Keep a layer only if the structured per-sample gradients, summed over the
        # batch, reproduce autograd's gradient of its weight and bias: a weight also
        # used outside this layer, or inputs with extra axes, fail and go to "jacobian".
        tracked = {id(t): t.detach().requires_grad_() for use in candidates
                   for t in self._own_tensors(use)}
        outputs, calls = self._forward_with_probes(candidates, x_probe[:2], tracked)
        probes = [probe for _, _, probe in calls]
        grads = torch.autograd.grad(outputs.sum(), probes + list(tracked.values()), allow_unused=True)
        delta_of = dict(zip(map(id, probes), grads[:len(probes)]))
        grad_of = dict(zip(tracked, grads[len(probes):]))
        kept = []
        for use in candidates:
            mine = [(h, delta_of[id(probe)]) for owner, h, probe in calls if owner is use]
            if not mine or any(h.ndim != (2 if use.is_linear else 4) for h, _ in mine):
                continue
            if use.is_linear:
                summed = [sum(d.T @ h for h, d in mine)] if use.weight else []
                summed += [sum(d.sum(0) for _, d in mine)] if use.bias else []
            else:
                total = sum(_conv_jacobian(use.module, h, d[:, None], use.weight, use.bias)
                            for h, d in mine).sum((0, 1))
                size = use.module.weight.numel() if use.weight else 0
                summed = [total[:size]] if use.weight else []
                summed += [total[size:]] if use.bias else []
            expected = [grad_of[id(t)] for t in self._own_tensors(use)]
            if all(g is not None and torch.allclose(got.reshape(g.shape), g, rtol=1e-5,
                                                    atol=1e-7 * (1 + float(g.abs().max())))
                   for got, g in zip(summed, expected)):
                kept.append(use)
        return kept

    @staticmethod
    def _own_tensors(use: LayerUse) -> list[torch.Tensor]:
        return ([use.module.weight] if use.weight else []) + ([use.module.bias] if use.bias else [])

    def _forward_with_probes(self, uses: list[LayerUse], x: torch.Tensor,
                             tracked: dict[int, torch.Tensor] | None = None):
        """Forward pass adding a zero probe to each structured layer's output, so that
        d f / d probe is the cotangent delta of that call.  Returns the outputs
        [n, O] and, per call, (layer, input h, probe).  `tracked`: parameters
        (by id) replaced by copies that require grad."""
        calls: list[tuple[LayerUse, torch.Tensor, torch.Tensor]] = []
        by_module = {id(use.module): use for use in uses}

        def hook(module, inputs, output):
            probe = torch.zeros_like(output, requires_grad=True)
            calls.append((by_module[id(module)], inputs[0].detach(), probe))
            return output + probe

        replaced = {name: tracked[id(p)] for name, p in self.model.named_parameters()
                    if tracked and id(p) in tracked}
        handles = [use.module.register_forward_hook(hook) for use in uses]
        try:
            with torch.enable_grad():
                outputs = functional_call(self.model, replaced, (x,))
        finally:
            for handle in handles:
                handle.remove()
        return outputs.reshape(len(x), -1), calls

    # -- features of a tile ----------------------------------------------------
    def features(self, x: torch.Tensor) -> Features:
        parts = [self._jacobian(x)] if self.rest else []
        linear = []
        if self.structured:
            per_layer = self._structured_features(x)
            for use, calls in zip(self.structured, per_layer):
                if use.is_linear:
                    linear.append(calls)
                else:
                    parts.append(sum(_conv_jacobian(use.module, h, d, use.weight, use.bias)
                                     for h, d in calls))
        return Features(torch.cat(parts, 2) if parts else None, linear)

    def _jacobian(self, x: torch.Tensor) -> torch.Tensor:
        names = list(self.rest)

        def single(p, xi):
            return functional_call(self.model, p, (xi[None],)).reshape(-1)

        detached = {name: self.rest[name].detach() for name in names}
        jac = vmap(jacrev(single), in_dims=(None, 0))(detached, x)   # name -> [n, O, *shape]
        return torch.cat([jac[name].reshape(len(x), jac[name].shape[1], -1) for name in names], 2)

    def _structured_features(self, x: torch.Tensor) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        """Per structured layer, per call: (input h, cotangents delta [n, O, *out])."""
        outputs, calls = self._forward_with_probes(self.structured, x)
        probes = [probe for _, _, probe in calls]
        n_out = outputs.shape[1]
        deltas = [[] for _ in probes]   # one backward pass per output for the whole tile
        for a in range(n_out):
            grads = torch.autograd.grad(outputs[:, a].sum(), probes,
                                        retain_graph=a < n_out - 1, allow_unused=True)
            for i, g in enumerate(grads):
                deltas[i].append(torch.zeros_like(probes[i]) if g is None else g)
        return [[(h, torch.stack(deltas[i], 1)) for i, (owner, h, _) in enumerate(calls)
                 if owner is use] for use in self.structured]

    def kernel_block(self, f1: Features, f2: Features, mode: str) -> torch.Tensor:
        block = contract(f1.jacobian, f2.jacobian, mode) if f1.jacobian is not None else 0
        for use, calls1, calls2 in zip(self.linear, f1.linear, f2.linear):
            for h1, d1 in calls1:
                for h2, d2 in calls2:
                    # weight: (delta . delta')(h . h'); bias: (delta . delta') * 1
                    gram = (h1 @ h2.T if use.weight else h1.new_zeros(len(h1), len(h2))) + float(use.bias)
                    block = block + contract(d1, d2, mode) * _expand_to(gram, mode)
        return block

    def feature_bytes(self, x_probe: torch.Tensor) -> float:
        """Bytes per sample of the features and the work space that makes them
        (measured on one sample): Jacobians and Linear cotangents, plus for each
        convolution its unfolded patches and cotangents; times 3 for temporaries."""
        one = x_probe[:1]
        size = self._jacobian(one).numel() if self.rest else 0
        for use, calls in zip(self.structured, self._structured_features(one) if self.structured else []):
            if use.is_linear:
                size += sum(h.numel() + d.numel() for h, d in calls)
            else:
                n_out = calls[0][1].shape[1]
                size += n_out * sum(t.numel() for t in self._own_tensors(use))   # its Jacobian
                size += sum(h.numel() * math.prod(use.module.kernel_size) + d.numel() for h, d in calls)
        return 3.0 * size * x_probe.element_size()

    # -- NTK-vector products ---------------------------------------------------
    def ntk_vp_block(self, x1: torch.Tensor, x2: torch.Tensor, mode: str) -> torch.Tensor:
        detached = {name: p.detach() for name, p in self.chosen.items()}

        def f(p, x):
            return functional_call(self.model, p, (x,)).reshape(len(x), -1)

        out2, pullback = vjp(lambda p: f(p, x2), detached)
        n2, n_out = out2.shape
        basis = torch.eye(n2 * n_out, dtype=out2.dtype, device=out2.device).reshape(-1, n2, n_out)
        cotangents = vmap(pullback)(basis)[0]
        pushed = vmap(lambda v: jvp(lambda p: f(p, x1), (detached,), (v,))[1])(cotangents)
        full = pushed.reshape(n2, n_out, len(x1), n_out).permute(2, 0, 3, 1)   # [n1, n2, a, b]
        if mode == "full":
            return full
        diagonal = torch.diagonal(full, dim1=2, dim2=3)
        return diagonal.mean(-1) if mode == "trace" else diagonal


# --------------------------------------------------------------------------- driver
def _tiles(n: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def _run(plan: Plan, implementation: str, x1: torch.Tensor, x2: torch.Tensor | None, mode: str,
         n_out: int, max_memory: int, progress: bool | None) -> torch.Tensor:
    symmetric = x2 is None
    x2_ = x1 if symmetric else x2
    n1, n2 = len(x1), len(x2_)
    shape = {"full": (n1, n2, n_out, n_out), "trace": (n1, n2), "diagonal": (n1, n2, n_out)}[mode]
    result = torch.empty(shape, dtype=x1.dtype, device=x1.device)

    if implementation == "ntk_vp":
        params = sum(p.numel() for p in plan.chosen.values())
        per_sample = 3.0 * n_out * (params + n_out) * x1.element_size()
        size = max(1, int(max_memory / per_sample))
        compute_block = lambda r, c: plan.ntk_vp_block(x1[r], x2_[c], mode)
    else:
        per_sample = plan.feature_bytes(x1)
        size = int(max(1, max_memory / (2 * per_sample + 1)))   # a row and a column tile
    rows, cols = _tiles(n1, size), _tiles(n2, size)
    pairs = [(i, j) for i in range(len(rows)) for j in range(len(cols)) if not symmetric or j >= i]
    bar = tqdm(total=len(pairs), desc="empirical NTK", unit="tile", leave=False,
               disable=(len(pairs) < 4) if progress is None else not progress)
    with bar:
        if implementation == "ntk_vp":
            for i, j in pairs:
                _store(result, rows[i], cols[j], compute_block(rows[i], cols[j]), symmetric and i != j)
                bar.update()
        else:
            cached_cols = {}
            # if a row tile and all of x2's features fit, compute each column tile once
            keep_all_cols = per_sample * (n2 + size) < max_memory
            for i in range(len(rows)):
                f1 = plan.features(x1[rows[i]])
                for j in range(i if symmetric else 0, len(cols)):
                    if symmetric and i == j:
                        f2 = f1
                    elif j in cached_cols:
                        f2 = cached_cols[j]
                    else:
                        f2 = plan.features(x2_[cols[j]])
                        if keep_all_cols:
                            cached_cols[j] = f2
                    with torch.no_grad():
                        block = plan.kernel_block(f1, f2, mode)
                    _store(result, rows[i], cols[j], block, symmetric and i != j)
                    bar.update()
    return result


def _store(result: torch.Tensor, rows: slice, cols: slice, block: torch.Tensor, mirror: bool) -> None:
    result[rows, cols] = block
    if mirror:   # Theta(x', x)_{ab} = Theta(x, x')_{ba}
        result[cols, rows] = block.transpose(0, 1).transpose(2, 3) if block.ndim == 4 else block.transpose(0, 1)


_AUTO_CACHE: dict[tuple, str] = {}


def _measure(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _choose(model: nn.Module, chosen: dict, x1: torch.Tensor, x2: torch.Tensor | None, mode: str,
            plans: dict[str, Plan]) -> str:
    """Time each strategy on small probes and pick the one predicted fastest at
    (N1, N2): feature strategies cost a * (samples) + b * (pairs), with a, b
    fitted through timings on 2 and 4 samples; NTK-vector products cost the same
    per pair of samples (timed on one pair, and only when a lower bound from the
    measured forward time does not already rule them out)."""
    n1 = len(x1)
    samples, pairs = (n1, n1 * (n1 + 1) / 2) if x2 is None else (n1 + len(x2), n1 * len(x2))
    key = (id(model), tuple(x1.shape[1:]), samples, pairs, mode, tuple(chosen), x1.dtype)
    if key in _AUTO_CACHE:
        return _AUTO_CACHE[key]
    m = 2
    probe = x1[:2 * m]
    costs = {}
    for name, plan in plans.items():   # feature strategies first, then NTK-vector products
        if name == "ntk_vp":
            # a vjp + jvp per output and pair costs at least ~3 O forward passes of a sample;
            # time it only if that lower bound could beat the best feature strategy
            with torch.no_grad():
                forward = min(_measure(lambda: model(probe)) for _ in range(3)) / len(probe)
            n_out = model(probe[:1]).numel()
            if costs and 3 * n_out * forward * pairs > min(costs.values()):
                continue
            run = lambda xs, plan=plan: plan.ntk_vp_block(xs[:1], xs[:1], mode)
            run(probe)   # warm-up
            costs[name] = _measure(lambda: run(probe)) * pairs
            continue
        run = lambda xs, plan=plan: plan.kernel_block(plan.features(xs), plan.features(xs), mode)
        run(probe[:m])   # warm-up
        t1, t2 = _measure(lambda: run(probe[:m])), _measure(lambda: run(probe[:2 * m]))
        # features of 2n samples and n^2 pairs per run: t(n) = 2 a n + b n^2
        b = max((t2 - 2 * t1) / (2 * m * m), 0.0)
        a = max((t1 - b * m * m) / (2 * m), 0.0)
        costs[name] = a * samples + b * pairs
    _AUTO_CACHE[key] = min(costs, key=costs.get)
    return _AUTO_CACHE[key]


def empirical_ntk(model: nn.Module, x1, x2=None, *, mode: str = "trace",
                  params: Sequence[str] | Sequence[torch.Tensor] | None = None,
                  implementation: str = "auto", max_memory: int | str | None = None,
                  progress: bool | None = None) -> torch.Tensor:
    """Empirical NTK of `model` between the samples of `x1` [N1, ...] and `x2`
    [N2, ...] (`x2=None`: `x1` with itself; only upper tiles are computed).

    `params`: the parameters w of Theta = J_w J_w^T (default: all with
    requires_grad; e.g. `params=["fc.weight", "fc.bias"]` for the last layer).
    Computed in the model's dtype and on its device; `max_memory` (bytes or
    '2GiB') bounds the working memory beyond the returned tensor.  The model
    must map each sample independently (eval mode for BatchNorm)."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    max_memory = parse_memory(max_memory)
    chosen = select_parameters(model, params)
    reference = _reference_tensor(model)
    x1 = model_input(x1, "x1", reference)
    if x2 is not None:
        x2 = model_input(x2, "x2", reference)
        if x2.shape[1:] != x1.shape[1:]:
            raise ValueError(f"x1 and x2 must have the same sample shape, got {tuple(x1.shape[1:])} "
                             f"and {tuple(x2.shape[1:])}")
    check_batch_independent(model, x1, "x1")
    with torch.no_grad():
        n_out = model(x1[:1]).reshape(1, -1).shape[1]
    if implementation == "auto":
        plans = {"structured": Plan(model, chosen, True, x1)}
        if not plans["structured"].linear:   # nothing structured: same as "jacobian"
            plans = {"jacobian": Plan(model, chosen, False, x1)}
        plans["ntk_vp"] = Plan(model, chosen, False, x1)
        implementation = _choose(model, chosen, x1, x2, mode, plans) if len(x1) >= 16 else next(iter(plans))
        plan = plans[implementation]
    else:
        plan = Plan(model, chosen, implementation == "structured", x1)
    return _run(plan, implementation, x1, x2, mode, n_out, max_memory, progress)


def largest_ntk_eigenvalue(model: nn.Module, x, *, params=None, iterations: int = 100,
                           rtol: float = 1e-3, seed: int = 0) -> float:
    """lambda_max of the empirical NTK over all outputs of `x`, Theta = J J^T
    ([N*O x N*O], J the Jacobian of the outputs in the parameters), by power
    iteration on Theta v = J (J^T v): one vjp and one jvp per step, no kernel
    matrix formed.  Full-batch GD on 1/2 sum ||f - y||^2 is stable, near
    initialization, for steps below 2 / lambda_max (lecture 21)."""
    chosen = select_parameters(model, params)
    reference = next(iter(chosen.values()))
    x = model_input(x, "x", reference)
    names, primals = list(chosen), tuple(p.detach() for p in chosen.values())

    def outputs(*values):
        return functional_call(model, dict(zip(names, values)), (x,))

    out, pullback = vjp(outputs, *primals)
    generator = torch.Generator(device=out.device).manual_seed(seed)
    v = torch.randn(out.shape, generator=generator, dtype=out.dtype, device=out.device)
    v /= v.norm()
    estimate = 0.0
    for _ in range(positive_int(iterations, "iterations")):
        _, theta_v = jvp(outputs, primals, pullback(v))
        previous, estimate = estimate, float((v * theta_v).sum())  # Rayleigh quotient
        v = theta_v / theta_v.norm()
        if abs(estimate - previous) <= rtol * abs(estimate):
            break
    return estimate
