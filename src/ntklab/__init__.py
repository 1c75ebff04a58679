"""ntklab: neural networks seen through their kernels (NNGP, NTK), in PyTorch.

`import ntklab` loads the library only (torch, numpy, scipy, tqdm); the scikit-learn
estimators (`ntklab.sklearn`), the experiments and the CLI load their own extras
when imported."""
from importlib import import_module

from ._core.extras import import_extra

from .arch import *  # noqa: F401,F403  -- the layer registry's public names
from .arch import PUBLIC as _LAYER_NAMES
from . import kernels, predict
from . import conventions
from .kernels.empirical import empirical_ntk
from .kernels.monte_carlo import empirical_nngp, monte_carlo_kernel
from .training.taylor import Linearized, TaylorExpansion, linearize, taylor_expand
from .theory.finite_width import (Criticality, FiniteWidthStatistics, criticality, finite_width,
                                  ntk_diagonal_samples)
from .theory.dntk import DDNTKStatistics, DNTKStatistics, ddntk_statistics, dntk_statistics
from .theory.hierarchy import NTKHierarchy, nearly_kernel_flow, ntk_hierarchy, train_gradient_flow
from .theory.ensemble import EnsembleMean, ensemble_mean_flow
from .theory.spectral import Eigenlearning, SphereSpectrum, eigenlearning, sphere_spectrum
from .training.loop import TrainingHistory, train

__version__ = "0.3.0.dev0"

__all__ = [*_LAYER_NAMES,  # not "sklearn": `import *` must work without it
           "Criticality", "FiniteWidthStatistics", "criticality", "finite_width", "ntk_diagonal_samples",
           "DNTKStatistics",
           "dntk_statistics", "DDNTKStatistics", "ddntk_statistics", "NTKHierarchy",
           "nearly_kernel_flow", "ntk_hierarchy", "train_gradient_flow", "EnsembleMean",
           "ensemble_mean_flow", "Linearized", "TrainingHistory", "empirical_nngp",
           "empirical_ntk", "conventions", "kernels", "linearize", "TaylorExpansion",
           "taylor_expand", "monte_carlo_kernel", "predict", "train", "SphereSpectrum", "sphere_spectrum",
           "Eigenlearning", "eigenlearning"]


def __getattr__(name: str):
    """`nk.sklearn` is imported on first use (it needs scikit-learn, an extra)."""
    if name == "sklearn":
        import_extra("sklearn", "sklearn")
        return import_module(".sklearn", __name__)
    raise AttributeError(f"module 'ntklab' has no attribute {name!r}")
