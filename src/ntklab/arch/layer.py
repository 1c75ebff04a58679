"""Layer protocol: one description, two objects (after neural-tangents' stax).

Every layer knows
  * `build(in_features, generator)` -> (torch module, out_features): the finite network;
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

    @abstractmethod
    def build(self, in_features: int, generator: torch.Generator,
              dtype: torch.dtype) -> tuple[nn.Module, int]:
        """Finite-width torch module and the number of output features."""

    @abstractmethod
    def kernel_map(self, k: KernelState) -> KernelState:
        """Infinite-width recursion: kernel state of the inputs -> of the outputs."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"
