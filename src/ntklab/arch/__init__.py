"""Architectures: layers that give both a finite torch module and an infinite-width kernel.

`LAYERS` is the one registry of public layers: the `--arch` grammar, `ntklab.__all__`
and this package's `__all__` are derived from it."""
from .builders import mlp
from .activations import Abs, ABRelu, Activation, Erf, Gelu, LeakyRelu, Relu, Sigmoid_like, Sign
from .conv import Conv, Flatten, GlobalAvgPool
from .dense import Affine, Dense
from .layer import Layer
from .quadrature import Elementwise, Sigmoid, Tanh
from .serial import Serial, SymmetricModule, serial
from .state import Kernel, KernelState

LAYERS: dict[str, type[Layer]] = {cls.__name__: cls for cls in (
    Dense, Conv, Flatten, GlobalAvgPool,
    Relu, LeakyRelu, ABRelu, Abs, Erf, Sigmoid_like, Sign, Gelu, Tanh, Sigmoid, Elementwise)}

PUBLIC = [*LAYERS, "Kernel", "Serial", "mlp", "serial"]

__all__ = [*PUBLIC, "Activation", "Affine", "KernelState", "LAYERS", "Layer", "SymmetricModule"]
