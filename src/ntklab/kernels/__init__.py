"""Kernels that are not architectures: classical kernels, the empirical NTK of any
torch model, and the tiled, resumable engine for large matrices on disk."""
from .classical import Ball, Gaussian, Linear, Polynomial
from .empirical import empirical_ntk
from .engine import KernelStore, compute_kernel

__all__ = ["Ball", "Gaussian", "KernelStore", "Linear", "Polynomial", "compute_kernel", "empirical_ntk"]
