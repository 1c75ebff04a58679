import json
from pathlib import Path

import numpy as np
import pytest

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"


def _load(name: str):
    """(cases by name, arrays) of the reference set `name` (.json and .npz)."""
    meta, arrays = REFERENCE / f"{name}.json", REFERENCE / f"{name}.npz"
    if not meta.is_file():
        pytest.fail(f"reference values not found at {REFERENCE}; ntklab's tests expect the "
                    f"shared/ folder beside the repository")
    cases = {c["name"]: c for c in json.loads(meta.read_text())["cases"]}
    with np.load(arrays) as z:
        return cases, {k: z[k] for k in z.files}


@pytest.fixture(scope="session")
def reference():
    """neural-tangents 0.6.5 values (../shared/reference): (cases by name, arrays)."""
    return _load("neural_tangents_public")


@pytest.fixture(scope="session")
def reference_v2():
    """The second neural-tangents 0.6.5 set (branching, pooling, LayerNorm, attention,
    activations, finite-kernel predictions): (cases by name, arrays)."""
    return _load("neural_tangents_v2")
