"""The library's public entry points (`nk.*` beyond the layers, `nk.predict.*`, `nk.kernels.*`) say
what they return: a return annotation that is not Any, on functions and on the public methods
of public classes (`py.typed` is shipped, so type checkers read them)."""
import inspect

import pytest

import ntklab as nk
from ntklab.arch import PUBLIC as LAYER_NAMES


def _entry_points():
    for prefix, module in (("nk", nk), ("nk.predict", nk.predict), ("nk.kernels", nk.kernels)):
        for name in module.__all__:
            obj = getattr(module, name)
            if module is nk and name in LAYER_NAMES or inspect.ismodule(obj):
                continue
            if inspect.isfunction(obj):
                yield f"{prefix}.{name}", obj
            elif inspect.isclass(obj):
                for method_name, method in vars(obj).items():
                    if inspect.isfunction(method) and (method_name == "__call__" or not method_name.startswith("_")):
                        yield f"{prefix}.{name}.{method_name}", method


ENTRY_POINTS = dict(_entry_points())


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_return_is_annotated(name):
    annotation = inspect.signature(ENTRY_POINTS[name]).return_annotation
    assert annotation not in (inspect.Signature.empty, "Any"), f"{name} has no return annotation"


def test_the_predictions_return_typed_predictors():
    returns = {name: inspect.signature(ENTRY_POINTS[f"nk.predict.{name}"]).return_annotation
               for name in ("gradient_descent_mse", "gradient_descent", "gp_inference",
                            "gradient_descent_mse_ensemble")}
    assert returns == {"gradient_descent_mse": "MSEPredictor", "gradient_descent": "ODEPredictor",
                       "gp_inference": "GPPredictor", "gradient_descent_mse_ensemble": "EnsemblePredictor"}
