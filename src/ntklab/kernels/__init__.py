"""Kernels that are not architectures: classical kernels, the empirical NTK of any
torch model, and the tiling engine."""
from .classical import Ball, Gaussian, Linear, Polynomial
from .empirical import empirical_ntk

__all__ = ["Ball", "Gaussian", "Linear", "Polynomial", "empirical_ntk"]
