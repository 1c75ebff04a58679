"""Kernels that are not architectures: classical kernels and the tiling engine."""
from .classical import Ball, Gaussian, Linear, Polynomial

__all__ = ["Ball", "Gaussian", "Linear", "Polynomial"]
