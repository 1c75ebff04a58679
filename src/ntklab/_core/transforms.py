"""Code that runs under `torch.func` transforms (`grad`, `vmap`, `jacrev`, `functionalize`).

Inside a transform a tensor is a wrapper (one level per enclosing transform): its numbers
cannot be read by Python (`bool`, `float`, `.item()`: data-dependent control flow, which
`vmap` refuses), and in-place updates of tensors saved for the backward pass are refused by
`grad`.  The checks that must read numbers (inputs finite, kernels in the floating range) read
them through `values`: the plain tensor under every wrapper, which under `vmap` holds the
numbers of every vmapped member at once, so a check over all of them refuses the batch when
any member is bad."""
from __future__ import annotations

import torch

_functorch = torch._C._functorch


def transformed(*tensors: object) -> bool:
    """True when one of `tensors` is being transformed by `torch.func` (a wrapper)."""
    return any(isinstance(t, torch.Tensor) and _functorch.is_functorch_wrapped_tensor(t)
               for t in tensors)


def values(t: torch.Tensor) -> torch.Tensor:
    """The numbers of `t`, detached, as a plain tensor: `t` itself outside transforms, the
    tensor under its wrappers inside them (with the batch axes of enclosing `vmap`s, at the
    positions they hold there: fit for reductions over all entries, such as `min` or `isfinite
    ().all()`, not for anything that reads the axes)."""
    while _functorch.is_functorch_wrapped_tensor(t):
        t = _functorch.get_unwrapped(t)
    return t.detach()
