"""docs/migration.md's snippet pairs, executed: the ntklab side here, the neural-tangents side once
with neural-tangents 0.6.5 (`benchmarks/make_migration_reference.py`, results in
tests/data/neural_tangents/migration.*). Every value both sides of a pair name must agree: kernels
and network outputs to rtol 1e-8 (atol 1e-10), neural-tangents' own rounding of diagonal entries
(the page's "Conventions that change numbers"); predictions, which solve with the regularized
train kernel K + lambda I, to that times its condition number (the perturbation bound of a linear
solve; 244 for the NTK here, 3534 for the NNGP)."""
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "neural_tangents"
RTOL, ATOL = 1e-8, 1e-10
# the predictions, by the train kernel (stored in pair 3) that they solve with
SOLVED_WITH = {"cov": "k_train_train", "mean": "k_train_train", "fx[1]": "k_train_train", "fx_test": "k_train_train",
               "fx_train": "k_train_train", "fx[0]": "nngp_train_train", "gp_cov": "nngp_train_train",
               "gp_mean": "nngp_train_train"}


def load_pairs():
    import importlib.util
    path = ROOT / "benchmarks" / "make_migration_reference.py"
    spec = importlib.util.spec_from_file_location("make_migration_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PAIRS = load_pairs()
INPUTS, PAGE_PAIRS = PAIRS.read_pairs((ROOT / "docs" / "migration.md").read_text())
STORED = json.loads((DATA / "migration.json").read_text())


def test_the_stored_values_are_of_the_page_snippets():
    """The stored neural-tangents results come from the page's own neural-tangents snippets
    (rerun benchmarks/make_migration_reference.py after changing one)."""
    assert STORED["inputs"] == INPUTS
    assert [pair["neural-tangents"] for pair in STORED["pairs"]] == [pair["neural-tangents"] for pair in PAGE_PAIRS]
    assert len(PAGE_PAIRS) >= 6 and all(pair["compared"] for pair in STORED["pairs"])


def condition_number(k: np.ndarray, diag_reg: float = 1e-4) -> float:
    """cond(K + lambda I) with lambda = diag_reg times the mean diagonal (the page's diag_reg)."""
    eigenvalues = np.linalg.eigvalsh(k + diag_reg * np.trace(k) / len(k) * np.eye(len(k)))
    return eigenvalues[-1] / eigenvalues[0]


def test_the_ntklab_snippets_give_neural_tangents_values():
    results = PAIRS.run_side(INPUTS, PAGE_PAIRS, "ntklab")
    with np.load(DATA / "migration.npz") as stored:
        solve_rtol = {kernel: RTOL * condition_number(stored[f"3/{kernel}"]) for kernel in set(SOLVED_WITH.values())}
        for index, (values, pair) in enumerate(zip(results, STORED["pairs"], strict=True)):
            assert sorted(values) == pair["compared"], f"pair {index}: the ntklab side names other values"
            for key, value in values.items():
                rtol = solve_rtol[SOLVED_WITH[key]] if key in SOLVED_WITH else RTOL
                np.testing.assert_allclose(value, stored[f"{index}/{key}"], rtol=rtol, atol=ATOL,
                                           err_msg=f"pair {index}: {key}")


def test_a_wrong_translation_is_caught():
    """Negative control: the first pair with W_std 1.4 instead of 1.5 in its readout layer differs
    from neural-tangents' values beyond the tolerance."""
    wrong = [dict(PAGE_PAIRS[0], ntklab=PAGE_PAIRS[0]["ntklab"].replace("nk.Relu(), nk.Dense(1, W_std=1.5",
                                                                        "nk.Relu(), nk.Dense(1, W_std=1.4"))]
    assert wrong[0]["ntklab"] != PAGE_PAIRS[0]["ntklab"]
    values = PAIRS.run_side(INPUTS, wrong, "ntklab")[0]
    with np.load(DATA / "migration.npz") as stored:
        with pytest.raises(AssertionError):
            np.testing.assert_allclose(values["ntk"], stored["0/ntk"], rtol=RTOL, atol=ATOL)
