"""The neural-tangents reference sets live in the repository (tests/data/neural_tangents) and are
what benchmarks/make_reference.py describes: its inputs are the recorded numpy draws, bit for bit,
and every array a case lists is stored with the shape its inputs imply.  (The script's
neural-tangents values themselves need the `bench` extra: `make reference`.)"""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from conftest import REFERENCE, load_reference

ROOT = Path(__file__).resolve().parents[2]
SETS = ("neural_tangents_public", "neural_tangents_v2")


def make_reference():
    spec = importlib.util.spec_from_file_location("make_reference", ROOT / "benchmarks" / "make_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reference_sets_are_inside_the_repository():
    assert REFERENCE.is_relative_to(ROOT), f"{REFERENCE} lies outside the repository {ROOT}"
    assert make_reference().DATA == REFERENCE
    for name in SETS:
        for suffix in (".json", ".npz"):
            assert (REFERENCE / f"{name}{suffix}").is_file(), f"{name}{suffix} missing from {REFERENCE}"
    assert (REFERENCE / "README.md").is_file()


@pytest.mark.parametrize("name", SETS)
def test_stored_inputs_are_the_recorded_draws(name):
    """numpy's `default_rng` streams are reproducible across platforms and versions: the drawn
    inputs must equal the stored ones exactly.  Inputs computed from draws (targets sin(sum x),
    the linear kernels x x^T / d) depend on the platform's sin and BLAS rounding: to 8 ulps of
    their largest entry."""
    _, stored = load_reference(name)
    drawn = make_reference().draw_inputs(name)
    assert drawn and set(drawn) <= set(stored)
    for key, value in drawn.items():
        assert value.dtype == stored[key].dtype == np.float64, key
        derived = key.startswith(("pred/y_", "pred/k_"))
        ulps = 8 * np.finfo(np.float64).eps * np.abs(stored[key]).max() if derived else 0.0
        np.testing.assert_allclose(value, stored[key], rtol=0, atol=ulps, err_msg=key)


@pytest.mark.parametrize("name", SETS)
def test_every_listed_array_is_stored_with_its_shape(name):
    """Each kernel is [len(x1), len(x2)] (or [len(x1), len(x1)]), every value is finite, and
    nothing is stored that no case lists or uses as input."""
    cases, stored = load_reference(name)
    inputs = set(make_reference().draw_inputs(name))
    listed = {key for case in cases.values() for key in case["arrays"].values()}
    assert listed | inputs == set(stored)
    for case in cases.values():
        for label, key in case["arrays"].items():
            shape = stored[key].shape
            if "x1" in case:   # a kernel
                n1 = len(stored[case["x1"]])
                n2 = len(stored[case["x2"]]) if label.endswith("x1x2") else n1
                assert shape == (n1, n2), (key, shape)
            assert np.isfinite(stored[key]).all(), key
