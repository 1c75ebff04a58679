"""Sparse coding (lecture 22): planted data, scikit-learn's dictionary learning recovers it."""
import numpy as np
import pytest

from ntklab.lab.studies import sparse_coding as S


def test_planted_data_is_k_sparse_in_unit_atoms():
    data = S.planted(10, 20, 3, 50, noise=0.0, seed=0)
    np.testing.assert_allclose(np.linalg.norm(data.dictionary, axis=1), 1.0)
    assert ((data.codes != 0).sum(1) == 3).all()
    np.testing.assert_allclose(data.x, data.codes @ data.dictionary)
    assert S.parameter_counts(10, 20, 3, 50) == {"raw dN": 500, "sparse kN + md": 3 * 50 + 20 * 10}
    with pytest.raises(ValueError, match="k=5 non-zeros per code exceed the m=4 atoms"):
        S.planted(10, 4, 5, 50)
    with pytest.raises(ValueError, match="noise"):
        S.planted(10, 4, 2, 50, noise=-1.0)


def test_dictionary_learning_recovers_the_planted_atoms():
    data = S.planted(16, 16, 2, 800, noise=0.05, seed=1)
    atoms, codes = S.learn(data.x, 16, 2, seed=1, max_iter=40)
    cosines = S.recovery(data.dictionary, atoms)
    assert cosines.mean() > 0.97 and (cosines > 0.95).mean() > 0.9
    assert ((codes != 0).sum(1) <= 2).all()
    # reconstruction at the noise floor (~0.05), far below a random dictionary's
    assert S.relative_error(data.x, codes, atoms) < 0.1
    random = np.random.default_rng(0).standard_normal(atoms.shape)
    assert S.recovery(data.dictionary, random).mean() < 0.8


def test_the_table_uses_sample_standard_deviations():
    """Before: np.std (ddof=0) by hand beside report.mean_std (ddof=1)."""
    import numpy as np
    from ntklab.lab.experiments import sparse_coding as E
    keys = ("mean_recovery", "recovered_0.95", "error_learned", "error_planted", "error_random_dictionary",
            "error_pca_k")
    rows = [{"k": 2, "N": 10, "N_per_atom": 1.0, "noise": 0.1, "sparse kN + md": 5, "raw dN": 9,
             **{key: value * (j + 1) for j, key in enumerate(keys)}} for value in (0.1, 0.3, 0.8)]
    (entry,) = E._table(rows, [(2, 10, 0.1)])
    for j, key in enumerate(keys):
        expected = np.array([0.1, 0.3, 0.8]) * (j + 1)
        assert entry[key] == pytest.approx(expected.mean()) and entry[key + "_std"] == pytest.approx(
            expected.std(ddof=1), rel=1e-12)
