"""Masked inputs: padded tokens of variable-length sequences (or padded pixels) excluded from the
network, `net.kernel(x1, x2, mask_constant=c)` and `net.module(...)(x, mask_constant=c)`
(neural-tangents' `kernel_fn(x1, x2, mask_constant=c)` / `apply_fn(params, x, mask_constant=c)`,
`stax.requirements.supports_masking`; used there for IMDB reviews of different lengths).

Which positions are masked: as neural-tangents reads its inputs, every entry equal to `c` is
replaced by 0, and a token of `[N, T, C]` (a pixel of `[N, C, H, W]`) is masked when all its
channels equal `c` (its mask reduced over the channel axis by the first `Dense`).  `c` must be a
finite number (ntklab refuses NaN inputs everywhere).

The finite network zeroes the masked positions of every layer's output (neural-tangents zeroes
them in every layer's input: the same network), so that they never reach an unmasked one:
  * elementwise activations, `Dense` and `LayerNorm` act on each position alone (rules
    "elementwise", "affine", "channels");
  * `GlobalSelfAttention` gives the masked keys zero weight (softmax logits -inf; the other
    mechanisms' logits of a zeroed key are 0 already), rule "attention";
  * `GlobalAvgPool` averages over the unmasked positions only ("mean"), `GlobalSumPool` sums them
    ("sum"); the mask ends there;
  * `Flatten` keeps the zeros at the masked features ("flatten"): a following activation's
    outputs there are zeroed again, and the next `Dense` mixes all features (the mask ends).
    `LayerNorm` or attention after `Flatten` of masked inputs is refused (neural-tangents
    neither): its statistics over features would count the padded ones.
Every other layer is refused while a mask is alive (before any work, naming it); after the
pooling, or the `Dense` after `Flatten`, any layer may follow.

Kernel: the same, pair by pair: the covariance of every pair of positions of which one is masked
is zeroed after each layer (neural-tangents' `Kernel.mask`), and the global mean pool of the
all-pairs covariance divides by the unmasked counts, `K'(x, x') = sum_{p, q unmasked} K[p, q] /
(n(x) n(x'))` (its `mean_and_var(..., mask=)`).  The kernel state carries the masks of the block's
samples (`KernelState.mask`, `[N, *spatial]`, True where masked), computed from the rows of each
block as `masked_inputs` does: they travel with the inputs through the tiling for free.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .._core import transforms
from .conv import flatten_state
from .layer import Layer
from .state import KernelState

MASK_RULES = ("elementwise", "affine", "channels", "attention", "mean", "sum", "flatten")
SUPPORTED = ("Dense, elementwise activations, LayerNorm, GlobalSelfAttention (without positional "
             "embeddings), GlobalAvgPool, GlobalSumPool, Flatten and Identity")


def mask_value(mask_constant) -> float:
    """`mask_constant` as a float: a finite real number."""
    if isinstance(mask_constant, torch.Tensor) and mask_constant.numel() == 1:
        mask_constant = mask_constant.item()
    if isinstance(mask_constant, bool) or not isinstance(mask_constant, (int, float)) \
            or not math.isfinite(mask_constant):
        raise ValueError(f"mask_constant must be a finite number, the value of the padded entries "
                         f"(e.g. 0.0 or -1.0; NaN padding is not supported: ntklab refuses NaN "
                         f"inputs), got {mask_constant!r}")
    return float(mask_constant)


def masked_inputs(x: torch.Tensor, mask_constant: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(`x` with its entries equal to `mask_constant` replaced by 0, the mask `[N, *spatial]`: True
    at the tokens of `[N, T, C]` (pixels of `[N, C, H, W]`) whose channels all equal it)."""
    if x.ndim not in (3, 4):
        raise ValueError(f"mask_constant= masks the tokens of sequences [N, T, C] or the pixels of "
                         f"images [N, C, H, W], got inputs of shape {tuple(x.shape)}; for vectors "
                         f"drop the padded samples instead")
    equal = x == mask_constant
    return x.masked_fill(equal, 0), equal.all(1 if x.ndim == 4 else -1)


def check_unmasked(mask: torch.Tensor, name: str, mask_constant: float) -> None:
    """Refuse a sample whose positions are all masked (nothing of it is left to pool or attend to)."""
    empty = torch.nonzero(transforms.values(mask).flatten(1).all(1)).flatten().tolist()
    if empty:
        raise ValueError(f"{name} sample(s) {empty[:5]} have every position equal to "
                         f"mask_constant={mask_constant}: nothing of them is left; drop them")


def first_refused(layers: Sequence[Layer]) -> tuple[int, str] | None:
    """(position, reason) of the first of `layers` (in order) that cannot take the masked
    representation reaching it, None when all can (see the module docstring)."""
    flattened = False
    for i, layer in enumerate(layers):
        rule = layer.mask_rule
        if rule is None:
            return i, (f"masked inputs (mask_constant=) go through {SUPPORTED} only, until a global "
                       f"pooling or the Dense after Flatten; pool before this layer")
        if flattened and rule in ("channels", "attention"):
            return i, ("after Flatten of masked inputs its statistics over the features would count "
                       "the padded ones (neural-tangents refuses it too); apply it before Flatten")
        if rule in ("mean", "sum") or (flattened and rule == "affine"):
            return None
        flattened = flattened or rule == "flatten"
    return None


def pair_masks(k: KernelState) -> tuple[torch.Tensor, torch.Tensor]:
    """The unmasked positions (1.0, else 0.0) of the block's two sides, `[N, *spatial]`."""
    assert k.mask is not None
    m1, m2 = k.mask
    valid1 = (~m1).to(k.nngp.dtype)
    return valid1, valid1 if m2 is None else (~m2).to(k.nngp.dtype)


def zeroed(k: KernelState) -> KernelState:
    """`k` with the covariances of every pair of positions of which one is masked set to 0."""
    valid1, valid2 = pair_masks(k)
    n_spatial = len(k.spatial)
    if k.full:   # [N1, N2, *spatial, *spatial]: position p of x1 with position q of x2
        ones = (1,) * n_spatial
        first = lambda v: v.reshape(v.shape + ones)                        # noqa: E731
        second = lambda v: v.reshape(v.shape[:1] + ones + v.shape[1:])     # noqa: E731
        pairs = first(valid1)[:, None] * second(valid2)[None]
        own1, own2 = first(valid1) * second(valid1), first(valid2) * second(valid2)
    else:        # [N1, N2, *spatial]: same-position pairs
        pairs, own1, own2 = valid1[:, None] * valid2[None], valid1, valid2
    var1 = k.var1 * own1
    return k.replace(nngp=k.nngp * pairs, ntk=k.map_ntk(lambda t: t * pairs), var1=var1,
                     var2=var1 if k.symmetric else k.var2 * own2)


def mean_over_unmasked(k: KernelState) -> KernelState:
    """The state after `GlobalAvgPool` (the mean over all position pairs, masked ones 0) turned
    into the mean over the unmasked pairs: times P / n(x) and P / n(x') (P positions, n unmasked)."""
    valid1, valid2 = pair_masks(k)
    positions = valid1[0].numel()
    scale1, scale2 = positions / valid1.flatten(1).sum(1), positions / valid2.flatten(1).sum(1)
    pairs = scale1[:, None] * scale2[None]
    var1 = k.var1 * (scale1 * scale1)
    return k.replace(nngp=k.nngp * pairs, ntk=k.map_ntk(lambda t: t * pairs), var1=var1,
                     var2=var1 if k.symmetric else k.var2 * (scale2 * scale2), mask=None)


def remasked(rule: str | None, k: KernelState) -> KernelState:
    """The state after a layer of `rule` with the masks applied (module docstring): pooled over
    the unmasked positions, the masked pairs zeroed (of the per-position layout after Flatten),
    or the mask ended."""
    if rule == "mean":
        return mean_over_unmasked(k)
    if k.spatial:
        return zeroed(k)
    if k.positions is None:                      # pooled, or mixed by the Dense after Flatten
        return k.replace(mask=None)
    return flatten_state(zeroed(k.positions))    # flattened: zero the per-position layout


class MaskingSequential(nn.Sequential):
    """`nn.Sequential` whose forward also takes `mask_constant=` (module docstring): the finite
    network of `serial(...)`, `model(x, mask_constant=c)`; without it, plain `nn.Sequential`.

    `rules` are the layers' `mask_rule`s, `refusal` why the architecture cannot take masked
    inputs (None when it can).  A slice (`model[1:]`, which torch builds without them) refuses
    masked inputs: only the whole network knows where its mask ends."""

    def __init__(self, *modules: nn.Module, rules: Sequence[str | None] | None = None,
                 refusal: str | None = None):
        super().__init__(*modules)
        self.rules = tuple(rules) if rules is not None else (None,) * len(self)
        self.refusal = refusal if rules is not None else (
            "mask_constant= is taken by the whole network of serial(...).module, not by a part of it")

    def forward(self, x: torch.Tensor, mask_constant=None) -> torch.Tensor:   # type: ignore[override]
        if mask_constant is None:
            return super().forward(x)
        if self.refusal is not None:
            raise ValueError(self.refusal)
        value = mask_value(mask_constant)
        x, positions = masked_inputs(x, value)
        check_unmasked(positions, "x", value)
        masked: torch.Tensor | None = positions.unsqueeze(1 if x.ndim == 4 else -1)  # broadcasts to x
        for module, rule in zip(self, self.rules, strict=True):
            if masked is None:
                x = module(x)
                continue
            out = module(x, masked_keys=masked[..., 0]) if rule == "attention" else module(x)
            if rule == "mean":
                spatial = tuple(range(2, x.ndim)) if x.ndim == 4 else (1,)
                unmasked = (~masked).sum(spatial).to(out.dtype)        # [N, 1]
                out = out * (math.prod(x.shape[d] for d in spatial) / unmasked)
            if rule in ("mean", "sum") or (rule == "affine" and x.ndim == 2):
                masked = None
            elif rule == "flatten":
                masked = masked.expand(x.shape).flatten(1)
            x = out if masked is None else out.masked_fill(masked, 0)
        return x
