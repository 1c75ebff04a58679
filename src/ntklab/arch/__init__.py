"""Architectures: layers that give both a finite torch module and an infinite-width kernel."""
from .activations import Abs, ABRelu, Activation, Erf, Gelu, LeakyRelu, Relu, Sigmoid_like, Sign
from .conv import Conv, Flatten, GlobalAvgPool
from .dense import Affine, Dense
from .layer import Layer
from .quadrature import Elementwise, Sigmoid, Tanh
from .serial import Serial, SymmetricModule, serial
from .state import Kernel, KernelState

__all__ = ["ABRelu", "Abs", "Activation", "Affine", "Conv", "Dense", "Flatten", "GlobalAvgPool", "Elementwise", "Erf", "Gelu", "Kernel",
           "KernelState", "Layer", "LeakyRelu", "Relu", "Serial", "Sigmoid", "Sigmoid_like",
           "Sign", "SymmetricModule", "Tanh", "serial"]
