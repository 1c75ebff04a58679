"""Per-sample features of the empirical NTK, and how a model's kernel is assembled
from them (`Plan`): the "structured", "jacobian" and "ntk_vp" strategies of
`empirical_ntk` (Novak, Sohl-Dickstein & Schoenholz 2022 name the same three).

Structured rule.  An affine layer y = s_W W h + s_b b (`nn.Linear`, ntklab's `Dense`
module with its parameterization's scales s_W, s_b; or a convolution) whose weight is
used only there has dy/dW = s_W delta (x) h for the output cotangent
delta_a = d f_a / d y, so a Linear layer contributes

    sum_{calls c, c'} (delta_a^c(x) . delta_b^c'(x')) (s_W^2 h^c(x) . h^c'(x') + s_b^2 1[b])

to Theta_ab(x, x'): activations and cotangents (one backward pass per output for a
whole tile), never dW.  A convolution (`nn.Conv2d` with zero padding and one group,
or ntklab's `Conv` module) forms its per-sample Jacobian from the same cotangents and
the unfolded input patches, dW = s_W sum_p delta_p (x) patch_p.  The remaining
parameters use vmap(jacrev).  Each candidate layer is kept only if its structured
gradients, summed over a probe batch, reproduce autograd's (a weight shared with
another layer, or inputs with extra axes, fall back to "jacobian").
"""
from __future__ import annotations

import functools
import math
import operator
from dataclasses import dataclass, field
from typing import Iterable, Iterator, cast

import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap
from torch.nn import functional as F

from ..arch.conv import ConvModule
from ..arch.dense import DenseModule
from .contractions import contract, expand_to


@dataclass(frozen=True)
class AffineForm:
    """How a module applies its weight and bias: y = s_W W * h + s_b b, with `*` a
    matrix product (`conv=False`) or a convolution of `F.pad(h, pads)`."""

    weight_scale: float
    bias_scale: float
    conv: bool = False
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    stride: tuple[int, ...] | int = 1
    dilation: tuple[int, ...] | int = 1


def affine_form(module: nn.Module) -> AffineForm | None:
    """The affine form of torch's and ntklab's dense and convolutional modules, or None."""
    if isinstance(module, nn.Linear):
        return AffineForm(1.0, 1.0)
    if isinstance(module, DenseModule):
        return AffineForm(module.weight_scale, module.bias_scale)
    if isinstance(module, ConvModule) and module.pads is not None:
        return AffineForm(module.weight_scale, module.bias_scale, True, module.pads)
    if (isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros"
            and module.padding != "same"):
        ph, pw = (0, 0) if isinstance(module.padding, str) else module.padding   # "valid" (not "same")
        return AffineForm(1.0, 1.0, True, (pw, pw, ph, ph), module.stride, module.dilation)
    return None


def _total(terms: Iterable[torch.Tensor]) -> torch.Tensor:
    """The sum of a non-empty sequence of tensors, added in order as they come (a generator's
    terms are not held at once)."""
    return functools.reduce(operator.add, terms)


@dataclass
class LayerUse:
    """An affine module whose selected weight/bias use the structured rule."""

    module: nn.Module
    form: AffineForm
    weight: bool
    bias: bool

    @property
    def is_linear(self) -> bool:
        """True for a Linear (dense) layer, False for a convolution."""
        return not self.form.conv

    @property
    def weight_tensor(self) -> torch.Tensor:
        """The module's weight."""
        # every module `affine_form` recognizes has a weight tensor; nn.Module's attributes
        # are typed Tensor | Module
        return cast(torch.Tensor, self.module.weight)

    @property
    def bias_tensor(self) -> torch.Tensor | None:
        """The module's bias (None without one)."""
        # as `weight_tensor`: a tensor or None in every module `affine_form` recognizes
        return cast("torch.Tensor | None", getattr(self.module, "bias", None))

    def own_tensors(self) -> list[torch.Tensor]:
        """The layer's chosen parameters (weight and/or bias) whose Jacobian this use covers."""
        bias = self.bias_tensor
        return ([self.weight_tensor] if self.weight else []) + ([bias] if self.bias and bias is not None else [])

    def patches(self, h: torch.Tensor) -> torch.Tensor:
        """Unfolded input patches [n, C_in kh kw, L] of a convolution."""
        return F.unfold(F.pad(h, self.form.pads), tuple(self.weight_tensor.shape[2:]),
                        dilation=self.form.dilation, stride=self.form.stride)

    def conv_jacobian(self, h: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Per-sample Jacobian of the outputs w.r.t. the convolution's weight and bias:
        dW[i, a] = s_W sum_p delta_a[i, :, p] (x) patch_p(h_i), db[i, a] = s_b sum_p delta_a[i, :, p]
        (delta [n, O, C_out, H', W'] -> [n, O, C_out * C_in * kh * kw (+ C_out)])."""
        n, n_out = delta.shape[:2]
        delta = delta.reshape(n, n_out, delta.shape[2], -1)                  # [n, O, C_out, L]
        parts = []
        if self.weight:
            parts.append(torch.einsum("naol,nkl->naok", delta, self.patches(h)).reshape(n, n_out, -1)
                         .mul_(self.form.weight_scale))
        if self.bias:
            parts.append(delta.sum(-1).mul_(self.form.bias_scale))
        return torch.cat(parts, 2)


@dataclass
class Features:
    """Per-sample quantities of one tile from which kernel blocks are contracted."""

    jacobian: torch.Tensor | None                      # [n, O, P_rest + P_conv]
    linear: list[list[tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=list)
    # per structured Linear layer: per call (h [n, in], delta [n, O, out])


class Plan:
    """What one model's kernel is made of: the structured layers and the rest."""

    def __init__(self, model: nn.Module, chosen: dict[str, torch.Tensor], structured: bool,
                 x_probe: torch.Tensor):
        self.model = model
        self.chosen = chosen
        self.structured: list[LayerUse] = self._structured_layers(x_probe) if structured else []
        self.linear = [use for use in self.structured if use.is_linear]
        claimed = {id(t) for use in self.structured for t in use.own_tensors()}
        self.rest = {name: p for name, p in chosen.items() if id(p) not in claimed}

    # -- structured layers ---------------------------------------------------
    def _structured_layers(self, x_probe: torch.Tensor) -> list[LayerUse]:
        ids = {id(p) for p in self.chosen.values()}
        candidates = []
        for module in self.model.modules():
            form = affine_form(module)
            if form is not None:
                bias = getattr(module, "bias", None)
                use = LayerUse(module, form, id(module.weight) in ids, bias is not None and id(bias) in ids)
                if use.weight or use.bias:
                    candidates.append(use)
        if not candidates:
            return []
        tracked = {id(t): t.detach().requires_grad_() for use in candidates for t in use.own_tensors()}
        outputs, calls = self._forward_with_probes(candidates, x_probe[:2], tracked)
        probes = [probe for _, _, probe in calls]
        grads = torch.autograd.grad(outputs.sum(), probes + list(tracked.values()), allow_unused=True)
        delta_of = dict(zip(map(id, probes), grads[:len(probes)], strict=True))
        grad_of = dict(zip(tracked, grads[len(probes):], strict=True))
        kept = []
        for use in candidates:
            mine = [(h, delta_of[id(probe)]) for owner, h, probe in calls if owner is use]
            if not mine or any(h.ndim != (2 if use.is_linear else 4) for h, _ in mine):
                continue
            if use.is_linear:
                summed = [use.form.weight_scale * _total(d.T @ h for h, d in mine)] if use.weight else []
                summed += [use.form.bias_scale * _total(d.sum(0) for _, d in mine)] if use.bias else []
            else:
                total = _total(use.conv_jacobian(h, d[:, None]) for h, d in mine).sum((0, 1))
                size = use.weight_tensor.numel() if use.weight else 0
                summed = [total[:size]] if use.weight else []
                summed += [total[size:]] if use.bias else []
            expected = [grad_of[id(t)] for t in use.own_tensors()]
            # exact up to rounding, or wrong by O(1): a relative Frobenius test tells them apart
            if all(g is not None and float((got.reshape(g.shape) - g).norm())
                   <= 1e-5 * float(g.norm()) + 1e-12 for got, g in zip(summed, expected, strict=True)):
                kept.append(use)
        return kept

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
        """What the NTK of a tile needs from samples `x`: the Jacobian of the unstructured parameters
        and each structured layer's inputs and output cotangents."""
        parts = [self._jacobian(x)] if self.rest else []
        linear = []
        if self.structured:
            for use, calls in zip(self.structured, self._structured_features(x), strict=True):
                if use.is_linear:
                    linear.append(calls)
                else:
                    parts.append(_total(use.conv_jacobian(h, d) for h, d in calls))
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
        deltas: list[list[torch.Tensor]] = [[] for _ in probes]   # one backward pass per output for the whole tile
        for a in range(n_out):
            grads = torch.autograd.grad(outputs[:, a].sum(), probes,
                                        retain_graph=a < n_out - 1, allow_unused=True)
            for i, g in enumerate(grads):
                deltas[i].append(torch.zeros_like(probes[i]) if g is None else g)
        return [[(h, torch.stack(deltas[i], 1)) for i, (owner, h, _) in enumerate(calls)
                 if owner is use] for use in self.structured]

    def kernel_block(self, f1: Features, f2: Features, mode: str) -> torch.Tensor:
        """The NTK block between two tiles' features, sum of the Jacobian contraction and each
        structured layer's (input products x cotangent products)."""
        return _total(self._block_terms(f1, f2, mode))

    def _block_terms(self, f1: Features, f2: Features, mode: str) -> Iterator[torch.Tensor]:
        """The terms of `kernel_block`, one at a time (the plan has a Jacobian, a structured
        Linear layer, or both)."""
        if f1.jacobian is not None and f2.jacobian is not None:   # both or neither: one plan
            yield contract(f1.jacobian, f2.jacobian, mode)
        for use, calls1, calls2 in zip(self.linear, f1.linear, f2.linear, strict=True):
            w2, b2 = use.form.weight_scale ** 2, use.form.bias_scale ** 2 * use.bias
            for h1, d1 in calls1:
                for h2, d2 in calls2:
                    # weight: s_W^2 (delta . delta')(h . h'); bias: s_b^2 (delta . delta')
                    gram = (h1 @ h2.T).mul_(w2) if use.weight else h1.new_zeros(len(h1), len(h2))
                    yield contract(d1, d2, mode) * expand_to(gram.add_(b2), mode)

    def feature_bytes(self, x_probe: torch.Tensor) -> float:
        """Bytes per sample of the features and the work space that makes them
        (measured on one sample): Jacobians and Linear cotangents, plus for each
        convolution its unfolded patches and cotangents; times 3 for temporaries."""
        one = x_probe[:1]
        size = self._jacobian(one).numel() if self.rest else 0
        for use, calls in zip(self.structured, self._structured_features(one) if self.structured else [], strict=True):
            if use.is_linear:
                size += sum(h.numel() + d.numel() for h, d in calls)
            else:
                n_out = calls[0][1].shape[1]
                size += n_out * sum(t.numel() for t in use.own_tensors())   # its Jacobian
                size += sum(h.numel() * math.prod(use.weight_tensor.shape[2:]) + d.numel() for h, d in calls)
        return 3.0 * size * x_probe.element_size()

    # -- NTK-vector products ---------------------------------------------------
    def ntk_vp_block(self, x1: torch.Tensor, x2: torch.Tensor, mode: str) -> torch.Tensor:
        """The NTK block by NTK-vector products (jvp of a vjp), without materialising Jacobians."""
        detached = {name: p.detach() for name, p in self.chosen.items()}

        def f(p, x):
            return functional_call(self.model, p, (x,)).reshape(len(x), -1)

        result = vjp(lambda p: f(p, x2), detached)   # (output, pullback) without has_aux
        out2, pullback = result[0], result[1]
        n2, n_out = out2.shape
        basis = torch.eye(n2 * n_out, dtype=out2.dtype, device=out2.device).reshape(-1, n2, n_out)
        cotangents = vmap(pullback)(basis)[0]
        pushed = vmap(lambda v: jvp(lambda p: f(p, x1), (detached,), (v,))[1])(cotangents)
        full = pushed.reshape(n2, n_out, len(x1), n_out).permute(2, 0, 3, 1)   # [n1, n2, a, b]
        if mode == "full":
            return full
        diagonal = torch.diagonal(full, dim1=2, dim2=3)
        return diagonal.mean(-1) if mode == "trace" else diagonal
