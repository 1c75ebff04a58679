"""Regenerate the neural-tangents reference values of masked inputs (`kernel_fn(x1, x2,
mask_constant=c)`: padded tokens of variable-length sequences, padded pixels), written to
tests/data/neural_tangents/masking.npz.

    /path/to/venv-with-neural-tangents-0.6.5/bin/python benchmarks/make_reference_masking.py
    python benchmarks/make_reference_masking.py --out /tmp/m.npz --compare   # largest difference

Inputs are `numpy.random.default_rng(29)` draws in the order of `draw_inputs`, then padded with
`MASK` (sequences to the lengths `LENGTHS`, one interior token too; images: their last rows);
one unpadded token has a single channel equal to `MASK` (neural-tangents zeroes that entry and
keeps the token).  Networks are built in ntklab's layouts (token sequences `[N, T, C]`, NCHW
images through `channel_axis=1`).  For each case the file holds `<case>/nngp_x1x2`,
`<case>/ntk_x1x2`, `<case>/nngp_x1x1`, `<case>/ntk_x1x1` (x2=None); the tests build the same
networks in `tests/arch/test_masking.py`.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import reference_cli   # benchmarks/reference_cli.py, beside this script

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "neural_tangents" / "masking.npz"
W, B, MASK = 1.5, 0.05, -1.0
LENGTHS = {"seq1": (6, 4, 2), "seq2": (5, 3)}   # unpadded tokens of each sequence
ROWS = {"img1": (5, 3, 2), "img2": (4, 5)}      # unpadded rows of each image


def draw_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(29)
    z = {"seq1": rng.standard_normal((3, 6, 4)), "seq2": rng.standard_normal((2, 6, 4)),
         "img1": rng.standard_normal((3, 2, 5, 4)), "img2": rng.standard_normal((2, 2, 5, 4))}
    for name, lengths in LENGTHS.items():
        for n, length in enumerate(lengths):
            z[name][n, length:] = MASK
    z["seq1"][0, 1] = MASK         # an interior padded token
    z["seq2"][0, 2, 1] = MASK      # one channel of an unpadded token: zeroed, the token kept
    for name, rows in ROWS.items():
        for n, row in enumerate(rows):
            z[name][n, :, row:] = MASK
    return z


def cases(stax) -> dict[str, tuple]:
    """name -> (network, inputs key)."""
    def dense(**kwargs):
        return stax.Dense(64, W, B, **kwargs)

    def attention(**kwargs):
        return stax.serial(dense(), stax.GlobalSelfAttention(64, 64, 64, 4, W_key_std=1.2, b_std=0.2, **kwargs),
                           stax.Relu(), stax.GlobalAvgPool(), stax.Dense(1, W, B))

    return {
        "gap": (stax.serial(dense(), stax.Relu(), dense(), stax.Erf(), stax.GlobalAvgPool(), stax.Dense(1, W, B)),
                "seq"),
        "cos_sum": (stax.serial(dense(), stax.Cos(), dense(), stax.Relu(), stax.GlobalSumPool(), stax.Dense(1, W, B)),
                    "seq"),
        "layernorm": (stax.serial(dense(), stax.LayerNorm(), stax.Gelu(), dense(), stax.GlobalAvgPool(),
                                  stax.Dense(1, W, B)), "seq"),
        "flatten": (stax.serial(dense(), stax.Sin(c=0.5), stax.Flatten(), stax.Dense(1, W, B)), "seq"),
        "attn/softmax": (attention(), "seq"),
        "attn/identity": (attention(attention_mechanism="IDENTITY"), "seq"),
        "attn/identity_sqrt": (attention(attention_mechanism="IDENTITY", linear_scaling=False), "seq"),
        "images/gap": (stax.serial(dense(channel_axis=1), stax.Relu(), dense(channel_axis=1), stax.Relu(),
                                   stax.GlobalAvgPool(channel_axis=1), stax.Dense(1, W, B)), "img"),
        "images/flatten": (stax.serial(dense(channel_axis=1), stax.Erf(), stax.Flatten(), stax.Dense(1, W, B)),
                           "img"),
    }


def compute() -> dict[str, np.ndarray]:
    import jax
    jax.config.update("jax_enable_x64", True)
    from neural_tangents import stax

    z = draw_inputs()
    out = dict(z)
    for name, ((_, _, kernel_fn), x) in cases(stax).items():
        for pair, x2 in (("x1x2", z[x + "2"]), ("x1x1", None)):
            k = kernel_fn(z[x + "1"], x2, ("nngp", "ntk"), mask_constant=MASK)
            out[f"{name}/nngp_{pair}"], out[f"{name}/ntk_{pair}"] = np.asarray(k.nngp), np.asarray(k.ntk)
    return out


if __name__ == "__main__":
    sys.exit(reference_cli.main(compute, OUT, __doc__.splitlines()[0]))
