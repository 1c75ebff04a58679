"""Blocked computation, classical kernels and input validation."""
import numpy as np
import pytest
import torch

import ntklab as nk
from ntklab.arch.spec import parse_architecture

X = torch.randn(37, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
NET = nk.serial(nk.Dense(64, 1.3, 0.2), nk.Gelu(), nk.Dense(64, 1.3, 0.2), nk.Relu(), nk.Dense(1))


@pytest.mark.parametrize("block_size, workers", [(5, 1), (8, 2), (1000, 1)])
def test_blocks_and_threads_do_not_change_the_kernel(block_size, workers):
    whole = NET.kernel(X, X, block_size=1000)   # one block, no symmetry shortcut
    blocked = NET.kernel(X, block_size=block_size, workers=workers)
    for g in ("nngp", "ntk"):
        torch.testing.assert_close(getattr(blocked, g), getattr(whole, g), rtol=1e-13, atol=1e-13)
        assert torch.equal(getattr(blocked, g), getattr(blocked, g).T)
    rect = NET.kernel(X[:10], X[10:], block_size=block_size, workers=workers)
    torch.testing.assert_close(rect.ntk, whole.ntk[:10, 10:], rtol=1e-13, atol=1e-13)


def test_get_selects_kernels_and_float32_works():
    k = NET.kernel(X, get=("nngp",))
    assert k.ntk is None and k.nngp.shape == (37, 37)
    torch.testing.assert_close(NET.kernel(X, get="nngp"), k.nngp, rtol=0, atol=0)   # a name: the tensor
    k32 = NET.kernel(X, dtype=torch.float32)
    assert k32.ntk.dtype == torch.float32
    torch.testing.assert_close(k32.ntk.double(), NET.kernel(X).ntk, rtol=1e-4, atol=1e-4)


def test_classical_kernels_match_formulas():
    x, y = X[:5].numpy(), X[5:9].numpy()
    dist2 = ((x[:, None] - y[None]) ** 2).sum(-1)
    np.testing.assert_allclose(nk.kernels.GaussianKernel(2.0)(x, y).numpy(), np.exp(-dist2 / 4), rtol=1e-12)
    np.testing.assert_array_equal(nk.kernels.BallKernel(2.5)(x, y).numpy(), (np.sqrt(dist2) < 2.5) * 1.0)
    np.testing.assert_allclose(nk.kernels.PolynomialKernel(3, 0.5)(x, y).numpy(), (x @ y.T + 0.5) ** 3, rtol=1e-12)
    np.testing.assert_allclose(nk.kernels.LinearKernel()(x).numpy(), x @ x.T, rtol=1e-12)


@pytest.mark.parametrize("bad, match", [
    (np.full((3, 4), np.nan), "NaN"), (np.zeros((0, 4)), "empty"),
    (np.zeros(4), "2-D"), (np.array([[1.0, np.inf]] * 3), "NaN/inf")])
def test_bad_inputs_name_the_argument(bad, match):
    with pytest.raises(ValueError, match=match) as error:
        NET.kernel(bad)
    assert str(error.value).startswith("x1 ")


def test_a_3d_input_to_an_mlp_is_read_as_token_sequences_and_needs_a_pooling_readout():
    with pytest.raises(ValueError, match=r"ends on token sequences.*GlobalAvgPool"):
        NET.kernel(np.zeros((3, 4, 2)))


def test_mismatched_features_and_bad_layers():
    with pytest.raises(ValueError, match="same feature shape"):
        NET.kernel(X, X[:, :3])
    with pytest.raises(ValueError, match="out"):
        nk.Dense(0)
    with pytest.raises(ValueError, match="W_std"):
        nk.Dense(10, W_std=-1.0)
    with pytest.raises(ValueError, match="b_std"):
        nk.Dense(10, b_std=-0.1)
    with pytest.raises(ValueError, match="parameterization"):
        nk.Dense(10, parameterization="mup")
    with pytest.raises(ValueError, match="serial"):
        nk.serial(nk.Dense(3), "relu")
    with pytest.raises(ValueError, match="unknown layer 'Swish'"):
        parse_architecture("Dense(10), Swish()")
    with pytest.raises(ValueError, match="literals"):
        parse_architecture("Dense(__import__('os'))")
    with pytest.raises(ValueError, match="ends on images.*Flatten"):   # Dense acts on each pixel
        NET.kernel(torch.randn(2, 3, 8, 8))


def test_architecture_strings_build_the_same_network():
    parsed = parse_architecture("Dense(64, W_std=1.3, b_std=0.2), Gelu(), Dense(64, 1.3, 0.2), Relu(), Dense(1)")
    torch.testing.assert_close(parsed.kernel(X).ntk, NET.kernel(X).ntk, rtol=0, atol=0)


def test_worker_threads_give_the_sequential_kernel():
    """The default shares blocks among threads (torch single-threaded in each); the result is
    the blocks-in-turn kernel, for vectors and for an all-pixel-pairs CNN."""
    cnn = nk.serial(nk.Conv(4, padding="SAME"), nk.Relu(), nk.GlobalAvgPool(), nk.Dense(1))
    images = torch.randn(9, 2, 5, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    threads = torch.get_num_threads()
    for net, x in ((NET, X), (cnn, images)):
        sequential = net.kernel(x, workers=1, block_size=4)
        shared = net.kernel(x, workers=3, block_size=4)
        assert torch.get_num_threads() == threads      # restored after the workers
        torch.testing.assert_close(shared.ntk, sequential.ntk, rtol=0, atol=0)
        torch.testing.assert_close(net.kernel(x).nngp, sequential.nngp, rtol=1e-13, atol=1e-14)


def test_one_token_sequences_have_the_kernel_of_vectors():
    """A network on [N, 1, C] (one token) is the vector network on [N, C]: GlobalAvgPool over
    one token is the identity.  Covers the branch checks in the sequence layout (channels last)."""
    def net(pool):
        return nk.serial(nk.Dense(8, 1.3, 0.1), nk.FanOut(2), nk.parallel(nk.Dense(8), nk.Dense(4)),
                         nk.FanInConcat(), nk.Dense(6, 1.2), nk.LayerNorm(), nk.Relu(), *pool, nk.Dense(1))
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    vectors, tokens = net([]).kernel(x), net([nk.GlobalAvgPool()]).kernel(x[:, None, :])
    torch.testing.assert_close(tokens.ntk, vectors.ntk, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(tokens.nngp, vectors.nngp, rtol=1e-13, atol=1e-14)


def _at_offset(x: np.ndarray, offset: int) -> np.ndarray:
    """`x` copied into a buffer at `offset` float64s from its start (another memory alignment)."""
    buffer = np.empty(x.size + 8, dtype=np.float64)
    out = buffer[offset:offset + x.size].reshape(x.shape)
    out[...] = x
    return out


@pytest.mark.parametrize("workers", [1, 2])
def test_the_kernel_does_not_depend_on_where_the_inputs_lie_in_memory(workers):
    """Bitwise the same kernel for the same numbers at 8 memory alignments (BLAS products round
    differently at other alignments: issue 27 saw 2 of 11 fresh processes differ by 3.3e-11)."""
    x = np.random.default_rng(0).standard_normal((130, 37))
    net = nk.serial(nk.Dense(64, W_std=1.5, b_std=0.1), nk.Erf(), nk.Dense(1))
    kernels = [net.kernel(_at_offset(x, offset), workers=workers).ntk for offset in range(8)]
    assert all(torch.equal(k, kernels[0]) for k in kernels[1:])


DETERMINISM_SCRIPT = """
import hashlib, os, numpy as np, ntklab as nk
x = np.random.default_rng(0).standard_normal((130, 37))
buffer = np.empty(x.size + 8); offset = os.getpid() % 8     # whatever alignment this process gets
y = buffer[offset:offset + x.size].reshape(x.shape); y[...] = x
net = nk.serial(nk.Dense(64, W_std=1.5, b_std=0.1), nk.Erf(), nk.Dense(1))
k = net.kernel(y)
print(hashlib.sha256(k.nngp.numpy().tobytes() + k.ntk.numpy().tobytes()).hexdigest())
"""


@pytest.mark.slow
def test_the_default_kernel_is_bitwise_the_same_in_fresh_processes():
    import subprocess
    import sys
    digests = {subprocess.run([sys.executable, "-c", DETERMINISM_SCRIPT], capture_output=True, text=True,
                              check=True).stdout for _ in range(6)}
    assert len(digests) == 1, digests


def test_mixed_float32_and_float64_inputs_give_a_float64_kernel():
    """float32 x1 with float64 x2 is promoted (as torch promotes), not silently float32."""
    x1, x2 = X[:5].float(), X[5:9]
    for k in (NET.kernel(x1, x2), NET.kernel(x2, x1)):
        assert k.ntk.dtype == k.nngp.dtype == torch.float64
    torch.testing.assert_close(NET.kernel(x1, x2).ntk, NET.kernel(x1.double(), x2).ntk, rtol=1e-15, atol=0)
    assert NET.kernel(x1, x2.float()).ntk.dtype == torch.float32       # both float32: float32
    assert NET.kernel(x1, x2.numpy()).ntk.dtype == torch.float64       # numpy counts as float64
