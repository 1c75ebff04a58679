"""Architectures: layers that give both a finite torch module and an infinite-width kernel.

`LAYERS` is the one registry of public layers: the `--arch` grammar, `ntklab.__all__`
and this package's `__all__` are derived from it."""
from typing import Callable

from .builders import mlp as mlp, repeat
from .activations import Abs, ABRelu, Activation, Erf, LeakyRelu, Relu, Sigmoid_like, Sign
from .attention import GlobalSelfAttention
from .branching import FanInConcat, FanInProd, FanInSum, FanOut, Identity, parallel
from .branching import Parallel as Parallel
from .closed_form import (Cos, Exp, ExpNormalized, Gaussian, Hermite, Monomial, Polynomial,
                          RectifiedMonomial, Rbf, Sin, Gabor)
from .conv import Conv, Flatten, GlobalAvgPool, GlobalSumPool
from .conv_variants import ConvLocal, ConvTranspose
from .dense import Affine, Dense
from .dropout import Dropout
from .dot_general import DotGeneral
from .graph import Aggregate
from .layer import ArchitectureError, Layer
from .normalization import LayerNorm
from .pooling import AvgPool, SumPool
from .reshape import ImageResize, Index, Slice as Slice
from .quadrature import Elementwise, Gelu, Sigmoid, Tanh
from .serial import Serial as Serial, SymmetricModule, serial
from .state import Kernel as Kernel, KernelState

LAYERS: dict[str, type[Layer]] = {cls.__name__: cls for cls in (
    Dense, Conv, ConvTranspose, ConvLocal, Flatten, GlobalAvgPool, GlobalSumPool, AvgPool, SumPool,
    FanOut, FanInSum, FanInConcat, FanInProd, Identity, LayerNorm, GlobalSelfAttention,
    DotGeneral, Aggregate,
    Relu, LeakyRelu, ABRelu, Abs, Erf, Sigmoid_like, Sign, Gelu, Tanh, Sigmoid,
    Sin, Cos, Rbf, Gaussian, Exp, ExpNormalized, Monomial, RectifiedMonomial, Polynomial, Hermite,
    Elementwise, Dropout, Index, ImageResize, Gabor)}
COMBINATORS: dict[str, Callable[..., Layer]] = {"serial": serial, "parallel": parallel, "repeat": repeat}

PUBLIC = [*LAYERS, "Kernel", "Serial", "Parallel", "Slice", "mlp", *COMBINATORS]

__all__ = [*PUBLIC, "Activation", "Affine", "ArchitectureError", "KernelState", "LAYERS", "Layer",
           "SymmetricModule"]
