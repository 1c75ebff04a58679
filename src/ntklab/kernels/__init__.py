"""Kernels that are not architectures: classical kernels, the empirical NTK of any
torch model, and the tiled, resumable engine for large matrices on disk."""
from .classical import BallKernel, GaussianKernel, LinearKernel, PolynomialKernel
from .empirical import empirical_ntk
from .engine import KernelStore, compute_kernel
from .features import RandomFeatures
from .monte_carlo import MonteCarloKernel, empirical_nngp, monte_carlo_kernel
from .operator import StoredKernel

# the classical kernels end in "Kernel": nk.Gaussian and nk.Polynomial are activations (neural-tangents' names)
__all__ = ["BallKernel", "GaussianKernel", "KernelStore", "LinearKernel", "MonteCarloKernel", "PolynomialKernel",
           "RandomFeatures", "StoredKernel", "compute_kernel", "empirical_nngp", "empirical_ntk", "monte_carlo_kernel"]
