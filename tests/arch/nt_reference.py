"""The comparison of an ntklab kernel with neural-tangents' stored values, shared by the reference tests:
every x1-vs-x2 and off-diagonal x1-vs-x1 entry to 1e-10 of the largest entry; on the diagonal
neural-tangents evaluates arccos at a correlation rounded to 1 - O(1e-16) (tests/data/neural_tangents/
README.md, "Near the diagonal"): checked to 1e-7 there, and ntklab's diagonal exactly against each
input's kernel alone."""
import numpy as np
import torch


def assert_matches_neural_tangents(net, x1: torch.Tensor, x2: torch.Tensor, want) -> None:
    """`want(get, pair)`: neural-tangents' array for get in ("nngp", "ntk"), pair in ("x1x2", "x1x1")."""
    k12, k11 = net.kernel(x1, x2), net.kernel(x1)
    off = ~np.eye(len(x1), dtype=bool)
    for get in ("nngp", "ntk"):
        want12, want11 = (np.asarray(want(get, pair)) for pair in ("x1x2", "x1x1"))
        scale = max(1.0, np.abs(want12).max())
        np.testing.assert_allclose(getattr(k12, get).numpy(), want12, rtol=0, atol=1e-10 * scale)
        np.testing.assert_allclose(getattr(k11, get).numpy()[off], want11[off], rtol=0, atol=1e-10 * scale)
        np.testing.assert_allclose(np.diag(getattr(k11, get).numpy()), np.diag(want11), rtol=1e-7)
        alone = torch.stack([getattr(net.kernel(x1[i:i + 1]), get)[0, 0] for i in range(len(x1))])
        np.testing.assert_allclose(np.diag(getattr(k11, get).numpy()), alone.numpy(), rtol=1e-13)
