"""Diagonal-only kernels: `net.kernel(..., diagonal_spatial=True)` (same-position pixel/token
pairs, neural-tangents' `diagonal_spatial`) against neural-tangents 0.6.5's values
(`tests/data/neural_tangents/diagonal.npz`, written by `benchmarks/make_reference_diagonal.py`)
and against the same-position entries of the all-pixel-pairs layout; `net.kernel_diagonal(x)`
(each sample with itself, O(N)) against the diagonal of the full kernel; refusals name the layer."""
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import ntklab as nk
from ntklab.arch import ArchitectureError

with np.load(Path(__file__).resolve().parents[1] / "data" / "neural_tangents" / "diagonal.npz") as _z:
    NT = {key: torch.from_numpy(_z[key]) for key in _z.files}
W, B = 1.5, 0.05


def reference_net(case: str, b_std: float = B) -> nk.Serial:
    """The cases of `make_reference_diagonal.py`, in ntklab (`b_std`: for the negative control)."""
    conv = lambda filt, **kw: nk.Conv(8, filt, W_std=W, b_std=b_std, **kw)  # noqa: E731
    dense = lambda n: nk.Dense(n, W_std=W, b_std=b_std)  # noqa: E731
    return {
        "conv": nk.serial(conv((3, 3), padding="SAME"), nk.Relu(), conv((3, 3)), nk.Erf()),
        "strided": nk.serial(conv((3, 3), strides=(2, 2), padding="CIRCULAR"), nk.Gelu(), conv((2, 2)),
                             nk.Relu()),
        "tokens": nk.serial(dense(8), nk.Relu(), dense(8), nk.Erf(), dense(8)),
        "flatten": nk.serial(conv((3, 3), padding="SAME"), nk.Relu(), nk.Flatten(), dense(1)),
    }[case]


def reference_inputs(case: str) -> tuple[torch.Tensor, torch.Tensor]:
    """neural-tangents' inputs in ntklab's layout (images NHWC -> NCHW)."""
    x1, x2 = NT[f"{case}/x1"], NT[f"{case}/x2"]
    return (x1.permute(0, 3, 1, 2), x2.permute(0, 3, 1, 2)) if x1.ndim == 4 else (x1, x2)


def batch_diagonal(k: torch.Tensor) -> torch.Tensor:
    """k[i, i, ...] of a kernel [N, N, ...]."""
    return k.diagonal(0, 0, 1).movedim(-1, 0)


def assert_matches(got: torch.Tensor, want: torch.Tensor, rtol: float) -> None:
    assert got.shape == want.shape, (got.shape, want.shape)
    error = float((got - want).abs().max() / want.abs().max())
    assert error <= rtol, error


CASES = ["conv", "strided", "tokens", "flatten"]


@pytest.mark.parametrize("case", CASES)
def test_diagonal_spatial_matches_neural_tangents(case):
    """x1 against x2 ([N1, N2, *spatial]: each output position with the same position) and each
    x1 with itself (`kernel_diagonal`: neural-tangents' `cov1`, and the diagonal of its NTK)."""
    net, (x1, x2) = reference_net(case), reference_inputs(case)
    k = net.kernel(x1, x2, diagonal_spatial=True)
    assert_matches(k.nngp, NT[f"{case}/nngp"], 1e-10)
    assert_matches(k.ntk, NT[f"{case}/ntk"], 1e-10)
    own = net.kernel_diagonal(x1, diagonal_spatial=True)
    assert_matches(own.nngp, NT[f"{case}/cov1"], 1e-10)
    # neural-tangents' NTK diagonal carries the rounding of its arc-cosine formulas at correlation
    # 1 (relative 1e-8: docs/migration.md, "Conventions that change numbers"; 1e-9 measured here),
    # ntklab's is exact there; its off-diagonal pairs of x1 with itself agree to 1e-10
    assert_matches(own.ntk, batch_diagonal(NT[f"{case}/ntk_x1x1"]), 1e-8)
    off_diagonal = ~torch.eye(len(x1), dtype=torch.bool)
    assert_matches(net.kernel(x1, get="ntk", diagonal_spatial=True)[off_diagonal],
                   NT[f"{case}/ntk_x1x1"][off_diagonal], 1e-10)


def test_the_neural_tangents_comparison_sees_a_bias_changed_by_two_percent():
    """Negative control: b_std 0.051 instead of 0.05 fails the 1e-10 comparison above."""
    x1, x2 = reference_inputs("conv")
    with pytest.raises(AssertionError):
        assert_matches(reference_net("conv", b_std=0.051).kernel(x1, x2, "nngp", diagonal_spatial=True),
                       NT["conv/nngp"], 1e-10)


def test_diagonal_spatial_equals_the_same_position_entries_of_all_pixel_pairs():
    """The same-position layout's recursions against the all-pixel-pairs layout's (a different
    code path for every layer: Conv sums shifted windows of [H, W, H, W] there), on its diagonal."""
    net, (x1, x2) = reference_net("conv"), reference_inputs("conv")
    full = net.inputs_map(x1, x2, need_ntk=True, full=True)
    positions = full.nngp.shape[2] * full.nngp.shape[3]
    for got, everything in ((net.kernel(x1, x2, "nngp", diagonal_spatial=True), full.nngp),
                            (net.kernel(x1, x2, "ntk", diagonal_spatial=True), full.ntk)):
        same_position = everything.reshape(4, 3, positions, positions).diagonal(0, 2, 3).reshape(got.shape)
        assert_matches(got, same_position, 1e-13)
        assert float((everything.reshape(4, 3, positions, positions).mean((2, 3))
                      - got.mean((2, 3))).abs().max()) > 1e-3   # other pairs differ: a real check


ARCHITECTURES = {
    "relu mlp": (nk.serial(nk.Dense(8, W_std=1.5, b_std=0.05), nk.Relu(), nk.Dense(8), nk.Relu(), nk.Dense(1)),
                 (6, 3)),
    "tanh residual": (nk.serial(nk.Dense(8), nk.FanOut(2), nk.parallel(nk.serial(nk.Tanh(n_points=8), nk.Dense(8)),
                                                                       nk.Identity()),
                                nk.FanInSum(), nk.Gelu(), nk.Dense(1)), (6, 3)),
    "cnn gap": (nk.serial(nk.Conv(4, (3, 3), padding="SAME", b_std=0.1), nk.Relu(), nk.AvgPool((2, 2), strides=(1, 1)),
                          nk.Conv(4, (2, 2)), nk.Relu(), nk.GlobalAvgPool(), nk.Dense(1)), (4, 2, 5, 5)),
    "cnn flatten relu": (nk.serial(nk.Conv(4, (3, 3), padding="SAME"), nk.Flatten(), nk.Relu(), nk.Dense(1)),
                         (4, 2, 4, 4)),
    "attention": (nk.serial(nk.Dense(8), nk.GlobalSelfAttention(8, 8, 8, 2, b_std=0.1), nk.Relu(),
                            nk.GlobalAvgPool(), nk.Dense(1)), (4, 5, 3)),
}


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_kernel_diagonal_equals_the_diagonal_of_the_full_kernel(name):
    net, shape = ARCHITECTURES[name]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    full, diagonal = net.kernel(x), net.kernel_diagonal(x)
    for got, matrix in ((diagonal.nngp, full.nngp), (diagonal.ntk, full.ntk)):
        assert_matches(got, matrix.diagonal(), 1e-13)
        # negative control: the diagonal in another sample order is not it
        assert float((got.flip(0) - matrix.diagonal()).abs().max()) > 1e-3 * float(matrix.diagonal().abs().max())
    assert torch.equal(net.kernel_diagonal(x, get="ntk"), diagonal.ntk)


def test_kernel_diagonal_is_differentiable():
    """d/dW_std of sum_i k(x_i, x_i) by autograd = central finite differences."""
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def total(w_std):
        net = nk.serial(nk.Dense(8, W_std=w_std, b_std=0.1), nk.Erf(), nk.Dense(1, W_std=w_std))
        return net.kernel_diagonal(x, "ntk").sum()

    w = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    (got,) = torch.autograd.grad(total(w), w)
    eps = 1e-5
    with torch.no_grad():
        want = (total(w + eps) - total(w - eps)) / (2 * eps)
    assert abs(float(got) - float(want)) <= 1e-7 * abs(float(want))


def test_kernel_diagonal_works_in_chunks_that_fit_in_max_memory():
    """8x8 images, all pixel pairs: 4096 numbers per pair, 4 pairs in 1 MiB: chunks of 4 and 2."""
    net = ARCHITECTURES["cnn gap"][0]
    x = torch.randn(6, 2, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert net.pairs_in_memory(x.shape[1:], "1MiB", torch.float64) == 4
    assert_matches(net.kernel_diagonal(x, "ntk", max_memory="1MiB"), net.kernel(x, get="ntk").diagonal(), 1e-13)


@pytest.mark.parametrize("net, where", [
    (nk.serial(nk.Conv(4, (3, 3)), nk.Relu(), nk.GlobalAvgPool(), nk.Dense(1)), "layer 2, GlobalAvgPool()"),
    (nk.serial(nk.Conv(4, (3, 3)), nk.FanOut(2), nk.parallel(nk.Identity(), nk.serial(nk.Relu(), nk.AvgPool((1, 1)))),
               nk.FanInSum(), nk.Flatten(), nk.Dense(1)),
     "layer 2, parallel(...) layer 1, serial(...) layer 1, AvgPool((1, 1))"),
    (nk.serial(nk.Dense(8), nk.GlobalSelfAttention(8, 8, 8, 2), nk.Relu(), nk.Dense(1)),
     "layer 1, GlobalSelfAttention"),
])
def test_diagonal_spatial_refuses_a_layer_that_mixes_positions_by_name_before_any_work(net, where):
    """Refused before the inputs are even read (a string is not an array)."""
    for compute in (lambda: net.kernel("not an array", diagonal_spatial=True),
                    lambda: net.kernel_diagonal("not an array", diagonal_spatial=True)):
        with pytest.raises(ArchitectureError, match=f"diagonal_spatial=True .*{re.escape(where)}"
                                                    f".* mixes positions.*pass diagonal_spatial=False"):
            compute()


def test_ending_on_images_suggests_diagonal_spatial_only_where_it_is_defined():
    images = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"ends on images .*or pass diagonal_spatial=True .*\[N1, N2, 2, 2\]"):
        nk.serial(nk.Conv(4, (3, 3)), nk.Relu()).kernel(images)
    with pytest.raises(ValueError, match=r"ends on images .*kernel matrix$"):
        nk.serial(nk.Conv(4, (3, 3)), nk.Relu(), nk.AvgPool((2, 2), strides=(1, 1))).kernel(images)
    with pytest.raises(ValueError, match="diagonal_spatial must be True or False"):
        nk.serial(nk.Dense(1)).kernel(images[:, 0, 0], diagonal_spatial="yes")
