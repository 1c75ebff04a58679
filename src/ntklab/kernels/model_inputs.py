"""Input policy of the empirical kernels (one place): which parameters, the inputs as
tensors of the model's dtype and device, and the refusal of models whose outputs are
not per-sample functions (train-mode BatchNorm, anything that mixes samples)."""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch
from torch import nn


def select_parameters(model: nn.Module, params) -> dict[str, torch.Tensor]:
    """name -> parameter for `params`: None (every parameter with requires_grad),
    an iterable of parameter names, or an iterable of parameter tensors."""
    named = dict(model.named_parameters())
    if params is None:
        trainable: dict[str, torch.Tensor] = {name: p for name, p in named.items() if p.requires_grad}
        if not trainable:
            raise ValueError("the model has no parameter with requires_grad=True; pass "
                             "params=[names] to choose the parameters of the kernel")
        return trainable
    if isinstance(params, (str, torch.Tensor)) or not isinstance(params, Iterable):
        raise ValueError("params must be None, a list of parameter names, or a list of "
                         f"parameter tensors, got {type(params).__name__}")
    by_id = {id(p): name for name, p in named.items()}
    chosen: dict[str, torch.Tensor] = {}
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


def reference_tensor(model: nn.Module) -> torch.Tensor:
    """The model's first floating parameter or buffer: its dtype and device are the model's."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            return tensor
    raise ValueError("model has no floating-point parameters")


def takes_indices(model: nn.Module) -> bool:
    """Whether `model` looks up integer inputs (it holds an `nn.Embedding` or `nn.EmbeddingBag`)."""
    return any(isinstance(m, (nn.Embedding, nn.EmbeddingBag)) for m in model.modules())


def _is_integer(x: Any) -> bool:
    if isinstance(x, torch.Tensor):
        return not (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool)
    return np.issubdtype(getattr(x, "dtype", np.float64), np.integer)


def model_input(x: Any, name: str, reference: torch.Tensor, *, indices: bool = False) -> torch.Tensor:
    """`x` as a tensor of the model's dtype and device; a torch tensor of another
    float dtype or device is an error (silently casting hides precision bugs).
    `indices` (a model that looks its inputs up, `takes_indices`): integer inputs
    (torch or numpy) are passed through as integers; kernels are Jacobians in the
    parameters, so they need no derivative in the inputs."""
    keep = indices and _is_integer(x)
    if isinstance(x, torch.Tensor):
        if x.device != reference.device:
            raise ValueError(f"{name} is on {x.device} but the model is on {reference.device}; "
                             f"move one of them, e.g. {name}.to({str(reference.device)!r})")
        if x.is_floating_point() and x.dtype != reference.dtype:
            raise ValueError(f"{name} has dtype {x.dtype} but the model's parameters are "
                             f"{reference.dtype}; convert with {name}.to({reference.dtype}) "
                             f"or model.to({x.dtype})")
        t = x.detach() if keep else x.detach().to(reference.dtype)
    else:
        try:
            array = np.asarray(x) if keep else np.asarray(x, dtype=np.float64)
            t = torch.as_tensor(array, dtype=None if keep else reference.dtype,
                                device=reference.device)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name} must be a numeric array (rows of equal length), got "
                             f"{type(x).__name__}: {err}") from err
    if keep and t.dtype not in (torch.int32, torch.int64):
        t = t.long()   # nn.Embedding looks up int32/int64 indices only (uint8, int16: exact)
    if t.ndim >= 1 and t.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)}); it needs at least one sample")
    if t.ndim < 2:
        raise ValueError(f"{name} must have a batch axis first and at least one feature axis, "
                         f"got shape {tuple(t.shape)}; for one sample use {name}[None]")
    if t.is_floating_point() and not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN/inf values")
    return t


def rng_states(device: torch.device) -> list[torch.Tensor]:
    """The random states a forward pass on `device` draws from: the CPU generator's and,
    on CUDA, that device's."""
    states = [torch.random.get_rng_state()]
    if device.type == "cuda":
        states.append(torch.cuda.get_rng_state(device))
    return states


def set_rng_states(device: torch.device, states: list[torch.Tensor]) -> None:
    """Restore `rng_states(device)`."""
    torch.random.set_rng_state(states[0])
    if device.type == "cuda":
        torch.cuda.set_rng_state(states[1], device)


def probe_outputs(model: nn.Module, x: torch.Tensor, name: str, *,
                  deterministic: bool = True) -> torch.Tensor:
    """`model(x)` as `[n, O]`, with a clear error when the model cannot take `x`, does not
    return one tensor, or (`deterministic`) draws random numbers (a stochastic forward pass)."""
    before = rng_states(x.device)
    try:
        with torch.no_grad():
            out = model(x)
    except (RuntimeError, IndexError) as err:
        hint = ("an Embedding takes integer indices: pass them as an integer tensor or array"
                if x.is_floating_point() and takes_indices(model) else
                "an Embedding's indices must lie in [0, num_embeddings)"
                if isinstance(err, IndexError) and takes_indices(model) else
                "check the number of features (images are NCHW, [N, C, H, W])")
        raise ValueError(f"the model cannot take {name} with samples of shape {tuple(x.shape[1:])}: "
                         f"{str(err).splitlines()[0]}; {hint}") from err
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"the model returns a {type(out).__name__}, not one tensor; tangent kernels "
                         f"need f(x) as a tensor [N, ...]: wrap the model so that forward returns "
                         f"the output you want (e.g. the logits)")
    if out.ndim == 0 or out.shape[0] != len(x):
        raise ValueError(f"the model returns shape {tuple(out.shape)} for a batch of {len(x)} "
                         f"sample(s) of {name}, but tangent kernels need one output row per sample, "
                         f"[N, ...] with the batch axis first: return the per-sample outputs "
                         f"(e.g. not model(x).sum() over the batch)")
    if deterministic and any(not torch.equal(a, b) for a, b in zip(before, rng_states(x.device), strict=True)):
        raise ValueError("the model's forward pass draws random numbers (dropout or another "
                         "stochastic layer in train mode), so its tangent kernel is random; call "
                         "model.eval() first")
    return out.reshape(len(x), -1)


def refuse_batch_statistics(model: nn.Module) -> None:
    """Refuse a model with BatchNorm in train mode: its outputs depend on the whole batch
    (no per-sample tangent kernel) and its forward pass updates the running statistics in
    place (which torch.func transforms cannot do).  Shared by the empirical kernels and
    `linearize`."""
    for module_name, module in model.named_modules():
        if module.training and isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise ValueError(f"{type(module).__name__} ({module_name or 'the model'}) is in train "
                             "mode, so each output depends on the whole batch and neither a "
                             "per-sample tangent kernel nor a linearization is defined; call "
                             "model.eval() first (or .eval() on the linearized network): running "
                             "statistics are then used")


def check_model(model: nn.Module, x: torch.Tensor, name: str, x2: torch.Tensor | None = None) -> int:
    """Refuse models whose tangent kernel is not a deterministic per-sample quantity, and
    return the number of outputs O.  Per-sample strategies assume f(x_i) depends on x_i
    alone and deterministically: BatchNorm in train mode (batch statistics), dropout in
    train mode or any random draw in the forward pass, non-finite parameters, outputs that
    change with the rest of the batch are each an error that says what to do.  The batch
    probes run on `x` and, when given, on `x2` and on a batch of one sample of each (so that
    a single-sample `x` is probed too)."""
    refuse_batch_statistics(model)
    for module_name, module in model.named_modules():
        if module.training and isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            raise ValueError(f"{type(module).__name__}(p={module.p}) ({module_name or 'the model'}) "
                             f"is in train mode, so the forward pass is random and so is its "
                             f"tangent kernel; call model.eval() first")
    for parameter_name, parameter in model.named_parameters():
        if not torch.isfinite(parameter).all():
            raise ValueError(f"the model's parameter {parameter_name!r} contains NaN/inf values; "
                             f"re-initialize the model (training diverged?)")
    outputs = _per_sample(model, x, name)
    if x2 is not None:
        if _per_sample(model, x2, "x2") != outputs:
            raise ValueError(f"the model gives {outputs} outputs per sample of {name} but another "
                             f"number for x2; pass inputs of the same kind")
        _per_sample(model, torch.cat([x[:1], x2[:1]]), name, labels=(f"{name}[0]", "x2[0]"))
    return outputs


def _per_sample(model: nn.Module, x: torch.Tensor, name: str,
                labels: tuple[str, str] | None = None) -> int:
    """The outputs per sample, after checking that the first sample's output is the same alone
    as beside the second one (`labels`: what the two samples are, default `name`[0], [1])."""
    first, second = labels or (f"{name}[0]", f"{name}[1]")
    alone = probe_outputs(model, x[:1], name)
    if len(x) >= 2:
        both = probe_outputs(model, x[:2], name)
        if not torch.allclose(both[:1], alone, rtol=1e-4,
                              atol=1e-6 * (1 + float(alone.abs().max()))):
            raise ValueError(f"the model's output for {first} changes when {second} is in the "
                             "same batch: outputs depend on other samples (batch statistics, "
                             "train-mode normalisation?), so per-sample tangent kernels are not "
                             "defined; put the model in eval mode")
    return alone.shape[1]
