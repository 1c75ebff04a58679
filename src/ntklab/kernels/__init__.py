"""Kernels that are not architectures: classical kernels, the empirical NTK of any
torch model, and the tiled, resumable engine for large matrices on disk."""
from .classical import Ball, Gaussian, Linear, Polynomial
from .empirical import empirical_ntk
from .engine import KernelStore, compute_kernel
from .monte_carlo import MonteCarloKernel, empirical_nngp, monte_carlo_kernel

__all__ = ["Ball", "Gaussian", "KernelStore", "Linear", "MonteCarloKernel", "Polynomial", "compute_kernel",
           "empirical_nngp", "empirical_ntk", "monte_carlo_kernel"]
