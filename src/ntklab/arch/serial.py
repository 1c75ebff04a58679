"""`serial(*layers)`: an architecture described once, giving both a finite
torch network (`.module`) and its infinite-width kernels (`.kernel`)."""
from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
from torch import nn

from .._validation import DEFAULT_DTYPE, as_matrix, check_same_features, positive_int, resolve_device
from ..kernels.tiling import tiled_pairs
from .layer import Layer
from .state import Kernel, KernelState

GETS = ("nngp", "ntk")
BLOCK_ENTRIES = 2 ** 18  # entries per block of pairs for closed-form layers (512 x 512)


def canonical_get(get: str | Sequence[str] | None) -> tuple[str, ...]:
    """`None` -> ("nngp", "ntk"); a name or a sequence of names -> a tuple."""
    names = GETS if get is None else (get,) if isinstance(get, str) else tuple(get)
    for name in names:
        if name not in GETS:
            raise ValueError(f"get must be 'nngp', 'ntk' or a tuple of them, got {get!r}")
    return names


class SymmetricModule(nn.Module):
    """f(x) = (g(x; theta_1) - g(x; theta_2)) / sqrt(2) with theta_2 = theta_1 at
    initialization: f(x; theta_0) = 0 exactly, by mirrored units (the
    `a_j = -a_{m-j}`, `w_j = w_{m-j}` initialization of Damian, Lee &
    Soltanolkotabi 2022, applied to whole copies so that it also holds for deep
    nets).  Its NTK at initialization equals that of g, since the two copies
    have separate parameters: H_f = (H_g1 + H_g2) / 2 = H_g."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.first, self.second = net, copy.deepcopy(net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.first(x) - self.second(x)) / math.sqrt(2.0)


class Serial(Layer):
    """A sequence of layers (neural-tangents' `stax.serial`)."""

    def __init__(self, *layers: Layer):
        flat: list[Layer] = []
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise ValueError(f"serial() argument {i} must be an ntklab layer such as "
                                 f"nk.Dense(512) or nk.Relu(), got {layer!r}")
            flat.extend(layer.layers if isinstance(layer, Serial) else [layer])
        if not flat:
            raise ValueError("serial() needs at least one layer")
        self.layers = tuple(flat)

    def __repr__(self):
        return "serial(" + ", ".join(map(repr, self.layers)) + ")"

    # -- finite network ------------------------------------------------------
    def build(self, in_features, generator, dtype):
        modules = []
        for layer in self.layers:
            module, in_features = layer.build(in_features, generator, dtype)
            modules.append(module)
        return nn.Sequential(*modules), in_features

    def module(self, in_shape: Sequence[int] | int, *, seed: int = 0, symmetric: bool = False,
               dtype: torch.dtype = torch.float32, device: str | torch.device | None = None
               ) -> nn.Module:
        """Finite-width network with this architecture, initialized from `seed`.

        `symmetric=True` wraps it in `SymmetricModule`, so that f(x; theta_0) = 0."""
        shape = (in_shape,) if isinstance(in_shape, int) else tuple(in_shape)
        if len(shape) != 1:
            raise ValueError(f"in_shape must be (d,) for fully connected networks, got {shape}")
        d = positive_int(shape[0], "in_shape[0]")
        generator = torch.Generator().manual_seed(int(seed))
        net, _ = self.build(d, generator, dtype)
        net = SymmetricModule(net) if symmetric else net
        return net.to(resolve_device(device))

    # -- infinite-width kernels ----------------------------------------------
    def kernel_map(self, k: KernelState) -> KernelState:
        for layer in self.layers:
            k = layer.kernel_map(k)
        return k

    def kernel(self, x1, x2=None, get: str | Sequence[str] | None = None, *,
               block_size: int | None = None, dtype: torch.dtype = DEFAULT_DTYPE,
               device: str | torch.device | None = None, progress: bool | None = None,
               workers: int | None = None) -> Kernel:
        """NNGP and NTK of the infinitely wide network between rows of `x1` [N1, d]
        and `x2` [N2, d] (`x2=None`: `x1` with itself, computed once per pair).

        Computed by the layer recursions in blocks of pairs (`block_size` rows and
        columns, chosen automatically), so working memory stays bounded for any N.
        Returns a `Kernel` with `.nngp`, `.ntk` tensors `[N1, N2]` of `dtype`
        (float64 by default); the one not asked for in `get` is `None`."""
        names = canonical_get(get)
        x1 = as_matrix(x1, "x1", dtype=dtype, device=device)
        if x2 is not None:
            x2 = as_matrix(x2, "x2", dtype=dtype, device=x1.device)
            check_same_features(x1, x2)
        need_ntk = "ntk" in names
        if block_size is None:
            cost = max(getattr(layer, "n_points", 1) for layer in self.layers)
            block_size = max(8, int(math.sqrt(BLOCK_ENTRIES / cost)))
        block_size = positive_int(block_size, "block_size")

        def blockwise(b1: torch.Tensor, b2: torch.Tensor | None) -> dict[str, torch.Tensor]:
            state = self.kernel_map(KernelState.from_inputs(b1, b2, need_ntk=need_ntk))
            ntk = state.ntk
            if isinstance(ntk, float):  # no layer carried an NTK
                ntk = torch.full_like(state.nngp, ntk)
            return {"nngp": state.nngp, "ntk": ntk}

        with torch.no_grad():
            out = tiled_pairs(blockwise, x1, x2, names, block_size=block_size,
                              progress=progress, workers=workers)
        return Kernel(nngp=out.get("nngp"), ntk=out.get("ntk"))


def serial(*layers: Layer) -> Serial:
    """Compose layers: `nk.serial(nk.Dense(512), nk.Relu(), nk.Dense(1))`."""
    return Serial(*layers)
