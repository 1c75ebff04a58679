"""ntklab: neural networks seen through their kernels (NNGP, NTK), in PyTorch."""

from .arch import (Abs, ABRelu, Conv, Dense, Flatten, GlobalAvgPool, Elementwise, Erf, Gelu, Kernel, LeakyRelu, Relu, Serial,
                   Sigmoid, Sigmoid_like, Sign, Tanh, serial)
from . import kernels, predict, sklearn
from .kernels.empirical import empirical_ntk
from .train import TrainingHistory, train

__version__ = "0.1.0"

__all__ = ["ABRelu", "Abs", "Conv", "Dense", "Flatten", "GlobalAvgPool", "Elementwise", "Erf", "Gelu", "Kernel", "LeakyRelu", "Relu",
           "Serial", "Sigmoid", "Sigmoid_like", "Sign", "Tanh", "TrainingHistory", "empirical_ntk", "kernels",
           "predict", "serial", "sklearn", "train"]
