"""Layer protocol: one description, two objects (after neural-tangents' stax).

Every layer knows
  * `build(in_shape, generator, dtype)` -> (torch module, out_shape): the finite network
    (shapes without the batch axis: `(d,)` for vectors, `(C, H, W)` for images);
  * `kernel_map(state)` -> state: the infinite-width NNGP/NTK recursion.
`serial` composes layers; the composite has `.module(...)` and `.kernel(...)`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from .state import KernelState


class Layer(ABC):
    """Base class of all ntklab layers."""

    takes_images = False  # True: inputs must be NCHW image batches

    @abstractmethod
    def build(self, in_shape: tuple[int, ...], generator: torch.Generator,
              dtype: torch.dtype) -> tuple[nn.Module, tuple[int, ...]]:
        """Finite-width torch module and the shape of one output sample."""

    @abstractmethod
    def kernel_map(self, k: KernelState) -> KernelState:
        """Infinite-width recursion: kernel state of the inputs -> of the outputs."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"
