"""Training a finite network with the kernel tracked (`train`) and its Taylor models
(`linearize`, `taylor_expand`); both use the loss and time units of `ntklab.conventions`."""
from .loop import TrainingHistory, train
from .taylor import Linearized, TaylorExpansion, linearize, taylor_expand

__all__ = ["Linearized", "TaylorExpansion", "TrainingHistory", "linearize", "taylor_expand", "train"]
