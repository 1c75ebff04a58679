"""Masked inputs (`mask_constant=`, `ntklab.arch.masking`): padded tokens and pixels excluded.

* against neural-tangents 0.6.5 `kernel_fn(x1, x2, mask_constant=-1.0)`
  (tests/data/neural_tangents/masking.npz, benchmarks/make_reference_masking.py): every entry to
  1e-10 relative to the largest (0.6e-15 measured); negative control: the same network reading
  the padding as data is off by more than 1e-3;
* the identity of padding: with global average pooling (and attention) a padded sequence's kernel
  is the kernel of the sequence cut to its length, and its finite network's output is the cut
  sequence's (same weights: none depends on the length); negative control: without the mask;
* Monte Carlo: the mean empirical NNGP/NTK of wide finite networks called with the same
  `mask_constant` converges to the kernel (the allowance of test_architectures_monte_carlo.py:
  4 standard errors plus 2% of the kernel's scale); negative control: the unmasked kernel;
* refusals before any work, naming the layer.
"""
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import ntklab as nk

DATA = Path(__file__).resolve().parents[1] / "data" / "neural_tangents" / "masking.npz"
Z = {k: torch.from_numpy(v) for k, v in np.load(DATA).items()}
W, B, MASK = 1.5, 0.05, -1.0


def dense():
    return nk.Dense(64, W, B)


def attention(**kwargs):
    return nk.serial(dense(), nk.GlobalSelfAttention(64, 64, 64, 4, W_key_std=1.2, b_std=0.2, **kwargs),
                     nk.Relu(), nk.GlobalAvgPool(), nk.Dense(1, W, B))


CASES = {   # name -> (network, inputs): the networks of benchmarks/make_reference_masking.py
    "gap": (nk.serial(dense(), nk.Relu(), dense(), nk.Erf(), nk.GlobalAvgPool(), nk.Dense(1, W, B)), "seq"),
    "cos_sum": (nk.serial(dense(), nk.Cos(), dense(), nk.Relu(), nk.GlobalSumPool(), nk.Dense(1, W, B)), "seq"),
    "layernorm": (nk.serial(dense(), nk.LayerNorm(), nk.Gelu(), dense(), nk.GlobalAvgPool(), nk.Dense(1, W, B)),
                  "seq"),
    "flatten": (nk.serial(dense(), nk.Sin(c=0.5), nk.Flatten(), nk.Dense(1, W, B)), "seq"),
    "attn/softmax": (attention(), "seq"),
    "attn/identity": (attention(attention_mechanism="IDENTITY"), "seq"),
    "attn/identity_sqrt": (attention(attention_mechanism="IDENTITY", linear_scaling=False), "seq"),
    "images/gap": (nk.serial(dense(), nk.Relu(), dense(), nk.Relu(), nk.GlobalAvgPool(), nk.Dense(1, W, B)), "img"),
    "images/flatten": (nk.serial(dense(), nk.Erf(), nk.Flatten(), nk.Dense(1, W, B)), "img"),
}


def largest_error(name, net, x, **options):
    errors = []
    for pair, x2 in (("x1x2", Z[x + "2"]), ("x1x1", None)):
        k = net.kernel(Z[x + "1"], x2, **options)
        for get in ("nngp", "ntk"):
            ref = Z[f"{name}/{get}_{pair}"]
            errors.append(float(((getattr(k, get) - ref).abs() / ref.abs().max()).max()))
    return max(errors)


@pytest.mark.parametrize("name", list(CASES))
def test_matches_neural_tangents(name):
    net, x = CASES[name]
    assert largest_error(name, net, x, mask_constant=MASK) <= 1e-10
    assert largest_error(name, net, x) > 1e-3          # the padding read as data


def test_mask_travels_with_its_rows_through_the_blocks():
    """Blocks of one row and column on two threads: each block reads its own samples' masks."""
    net, x = CASES["attn/softmax"]
    whole = net.kernel(Z["seq1"], Z["seq2"], mask_constant=MASK)
    tiled = net.kernel(Z["seq1"], Z["seq2"], mask_constant=MASK, block_size=1, workers=2)
    assert torch.allclose(tiled.ntk, whole.ntk, rtol=1e-14, atol=0)
    assert torch.allclose(tiled.nngp, whole.nngp, rtol=1e-14, atol=0)


LENGTHS = (7, 4, 4, 2)
GEN = torch.Generator().manual_seed(29)
TOKENS = torch.randn(len(LENGTHS), 7, 3, generator=GEN, dtype=torch.float64)
PADDED = TOKENS.clone()
for _n, _length in enumerate(LENGTHS):
    PADDED[_n, _length:] = MASK
POOLED = nk.serial(nk.Dense(64, W, B), nk.Relu(), nk.GlobalSelfAttention(64, 64, 64, 4, b_std=0.2), nk.Gelu(),
                   nk.Dense(64, W, B), nk.LayerNorm(), nk.Erf(), nk.GlobalAvgPool(), nk.Dense(1, W, B))


def test_padded_sequences_have_the_kernel_of_the_cut_ones():
    """K(padded a, padded b) = K(a cut, b cut) for equal lengths, and for unequal ones the kernel
    does not depend on how far both are padded (7 tokens, or 4: the longest of the pair)."""
    masked = POOLED.kernel(PADDED, mask_constant=MASK)
    unmasked = POOLED.kernel(PADDED)
    for length in sorted(set(LENGTHS)):
        same = [n for n, other in enumerate(LENGTHS) if other == length]
        cut = POOLED.kernel(TOKENS[same, :length])
        block = (slice(same[0], same[-1] + 1),) * 2
        for get in ("nngp", "ntk"):
            reference = getattr(cut, get)
            assert torch.allclose(getattr(masked, get)[block], reference, rtol=1e-12, atol=0)
            if length < 7:
                assert not torch.allclose(getattr(unmasked, get)[block], reference, rtol=1e-3, atol=0)
    shorter = POOLED.kernel(PADDED[1:, :4], mask_constant=MASK)        # lengths 4, 4, 2 padded to 4
    assert torch.allclose(shorter.ntk, masked.ntk[1:, 1:], rtol=1e-12, atol=0)
    assert torch.allclose(shorter.nngp, masked.nngp[1:, 1:], rtol=1e-12, atol=0)


def test_padded_sequences_give_the_finite_network_output_of_the_cut_ones():
    model = POOLED.module((7, 3), seed=3, dtype=torch.float64)
    masked = model(PADDED, mask_constant=MASK)
    for n, length in enumerate(LENGTHS):
        cut = model(TOKENS[n:n + 1, :length])
        assert torch.allclose(masked[n:n + 1], cut, rtol=1e-12, atol=1e-14)
    assert not torch.allclose(model(PADDED)[-1], model(TOKENS[-1:, :2])[0], rtol=1e-3)


class Masked(nn.Module):
    """A finite network called with `mask_constant` (for the empirical kernels)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x, mask_constant=MASK)


def monte_carlo_distances(net, x, get, n_samples, width_shape):
    factory = lambda seed: Masked(net.module(width_shape, seed=seed, dtype=x.dtype))  # noqa: E731
    mc = nk.monte_carlo_kernel(factory, x, n_samples=n_samples, get=get, progress=False)
    exact, unmasked = net.kernel(x, get=get, mask_constant=MASK), net.kernel(x, get=get)
    mean, error = getattr(mc, get), getattr(mc, f"{get}_standard_error")
    allowance = 4 * error + 0.02 * exact.abs().max()
    return float(((mean - exact).abs() / allowance).max()), float(((mean - unmasked).abs() / allowance).max())


MC_CASES = {   # name: (network, inputs, get, networks averaged)
    "flatten_sin": (nk.serial(nk.Dense(256, W, B), nk.Sin(c=0.5), nk.Flatten(), nk.Dense(1, W, B)),
                    Z["seq1"], "ntk", 6),
    "softmax_attention": (nk.serial(nk.Dense(512, W, B), nk.GlobalSelfAttention(512, 64, 32, 32, b_std=0.2),
                                    nk.Relu(), nk.GlobalAvgPool(), nk.Dense(1, W, B)), Z["seq1"], "ntk", 8),
    "images_gap": (nk.serial(nk.Dense(512, W, B), nk.Cos(), nk.GlobalAvgPool(), nk.Dense(1, W, B)),
                   Z["img1"], "ntk", 8),
}


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow) if name == "softmax_attention"
                                  else name for name in MC_CASES])
def test_monte_carlo_of_the_masked_finite_network_matches_the_kernel(name):
    net, x, get, n_samples = MC_CASES[name]
    right, unmasked = monte_carlo_distances(net, x, get, n_samples, tuple(x.shape[1:]))
    assert right < 1.0, f"{name}: Monte Carlo {right:.2f} allowances from its kernel"
    assert unmasked > 1.5, f"{name}: the unmasked kernel is only {unmasked:.2f} allowances away"


REFUSED = {   # network -> the layer named in the refusal
    "conv": (nk.serial(nk.Dense(8), nk.Conv(8, (3, 3)), nk.GlobalAvgPool()), "layer 1, Conv(8"),
    "dropout": (nk.serial(nk.Dense(8), nk.Dropout(0.5), nk.GlobalAvgPool()), "layer 1, Dropout(0.5)"),
    "branches": (nk.serial(nk.Dense(8), nk.FanOut(2), nk.parallel(nk.Dense(8), nk.Dense(8)), nk.FanInSum(),
                           nk.GlobalAvgPool()), "layer 1, FanOut(2)"),
    "positional": (nk.serial(nk.Dense(8), nk.GlobalSelfAttention(8, 8, 8, 1, pos_emb_type="SUM"),
                             nk.GlobalAvgPool()), "layer 1, GlobalSelfAttention("),
    "layernorm_after_flatten": (nk.serial(nk.Dense(8), nk.Flatten(), nk.LayerNorm(), nk.Dense(1)),
                                "layer 2, LayerNorm()"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_unsupported_layers_are_refused_by_name(name):
    net, named = REFUSED[name]
    x = Z["img1"] if name == "conv" else Z["seq1"]
    with pytest.raises(nk.ArchitectureError, match="^" + re.escape("serial(...) " + named)):
        net.kernel(x, mask_constant=MASK)
    with pytest.raises(ValueError, match="^" + re.escape("serial(...) " + named)):
        net.module(tuple(x.shape[1:]), dtype=torch.float64)(x, mask_constant=MASK)
    net.kernel(x)   # control: the same network without a mask is computed


def test_after_pooling_any_layer_may_follow():
    net = nk.serial(nk.Dense(8), nk.GlobalAvgPool(), nk.FanOut(2), nk.parallel(nk.Dense(8), nk.Dense(8)),
                    nk.FanInSum(), nk.Dropout(0.5), nk.Dense(1))
    assert net.kernel(Z["seq1"], mask_constant=MASK, get="nngp").shape == (3, 3)


@pytest.mark.parametrize("bad, message", [
    (float("nan"), "mask_constant must be a finite number"), ("pad", "mask_constant must be a finite number"),
    (True, "mask_constant must be a finite number")])
def test_bad_mask_constants_are_refused(bad, message):
    net, _ = CASES["gap"]
    with pytest.raises(ValueError, match=message):
        net.kernel(Z["seq1"], mask_constant=bad)


def test_vectors_and_fully_masked_samples_are_refused():
    net = nk.serial(nk.Dense(8), nk.Relu(), nk.Dense(1))
    with pytest.raises(ValueError, match="masks the tokens of sequences"):
        net.kernel(torch.randn(3, 4, dtype=torch.float64), mask_constant=MASK)
    empty = Z["seq2"].clone()
    empty[1] = MASK
    pooled, _ = CASES["attn/softmax"]
    with pytest.raises(ValueError, match=r"x2 sample\(s\) \[1\] have every position equal to mask_constant"):
        pooled.kernel(Z["seq1"], empty, mask_constant=MASK)
    with pytest.raises(ValueError, match=r"x sample\(s\) \[1\]"):
        pooled.module((6, 4), dtype=torch.float64)(empty, mask_constant=MASK)


def test_a_slice_of_the_finite_network_refuses_masks():
    model = CASES["gap"][0].module((6, 4), dtype=torch.float64)
    with pytest.raises(ValueError, match="whole network"):
        model[:2](Z["seq1"], mask_constant=MASK)
    assert model[:2](Z["seq1"]).shape == (3, 6, 64)   # control: unmasked, the slice runs
