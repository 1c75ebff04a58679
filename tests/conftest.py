import json
from pathlib import Path

import numpy as np
import pytest

REFERENCE = Path(__file__).resolve().parent / "data" / "neural_tangents"


def load_reference(name: str):
    """(cases by name, arrays) of the neural-tangents reference set `name` stored in
    tests/data/neural_tangents (`<name>.json` describes the cases, `<name>.npz` holds the arrays;
    benchmarks/make_reference.py regenerates them)."""
    with open(REFERENCE / f"{name}.json") as f:
        cases = {c["name"]: c for c in json.load(f)["cases"]}
    with np.load(REFERENCE / f"{name}.npz") as z:
        return cases, {k: z[k] for k in z.files}


@pytest.fixture(scope="session")
def reference():
    """neural-tangents 0.6.5 values, first set (fully connected, convolutional, ensemble
    predictions): (cases by name, arrays)."""
    return load_reference("neural_tangents_public")


@pytest.fixture(scope="session")
def reference_v2():
    """The second neural-tangents 0.6.5 set (branching, pooling, LayerNorm, attention,
    activations, finite-kernel predictions): (cases by name, arrays)."""
    return load_reference("neural_tangents_v2")
