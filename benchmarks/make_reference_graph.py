"""Regenerate the neural-tangents reference values of Aggregate, DotGeneral and attention with
positional embeddings / linear_scaling=False (tests/data/neural_tangents/graph_attention.npz).

    /path/to/venv-with-neural-tangents-0.6.5/bin/python benchmarks/make_reference_graph.py
    python benchmarks/make_reference_graph.py --out /tmp/g.npz --compare   # largest difference

Inputs are `numpy.random.default_rng(2)` draws in the order of `draw_inputs`; every network is
built in neural-tangents with ntklab's layouts (NCHW images through `channel_axis=1`, token
sequences [N, T, C]), so that `dimension_numbers` and `aggregate_axis` read the same in both.
For each case the file holds `<case>/nngp_x1x2`, `<case>/ntk_x1x2`, `<case>/nngp_x1x1` and
`<case>/ntk_x1x1` (neural-tangents called with x2=None, pattern=(p1, p1)); the tests build the
same networks in `tests/arch/test_graph_attention_reference.py`.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import reference_cli   # benchmarks/reference_cli.py, beside this script

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "neural_tangents" / "graph_attention.npz"
W, B = 1.5, 0.05


def draw_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    z = {k: rng.standard_normal(shape) for k, shape in (
        ("seq1", (3, 5, 4)), ("seq2", (2, 5, 4)), ("img1", (3, 2, 5, 4)), ("img2", (2, 2, 5, 4)),
        ("dg_rhs", (4, 3)), ("dg_lhs", (3, 5)), ("dg_batch", (4,)), ("node1", (3, 6, 4)), ("node2", (2, 6, 4)))}
    z["graph1"] = (rng.random((3, 6, 6)) < 0.4) * rng.uniform(0.5, 1.5, (3, 6, 6))   # weighted arcs
    z["graph2"] = (rng.random((2, 6, 6)) < 0.4) * 1.0
    z["pixels1"] = (rng.random((3, 5, 4, 5, 4)) < 0.2) * 1.0   # graphs over the pixels of img
    z["pixels2"] = (rng.random((2, 5, 4, 5, 4)) < 0.2) * 1.0
    z["columns1"] = (rng.random((3, 4, 4)) < 0.5) * 1.0        # graphs over the image's W axis
    z["columns2"] = (rng.random((2, 4, 4)) < 0.5) * 1.0
    return z


def cases(stax, jnp, z) -> dict[str, tuple]:
    """name -> (network, x1 key, x2 key, pattern keys or None)."""
    decays = {"exp_half": lambda d: jnp.exp(-d / 2), "inverse": lambda d: 1 / (1 + d), "exp": lambda d: jnp.exp(-d)}

    def attention(**kwargs):
        if "decay" in kwargs:
            kwargs["pos_emb_decay_fn"] = decays[kwargs.pop("decay")]
        return stax.serial(stax.Dense(64, W, B), stax.GlobalSelfAttention(64, 64, 64, 4, W_key_std=1.2, b_std=0.2,
                                                                          **kwargs),
                           stax.Relu(), stax.GlobalAvgPool(), stax.Dense(1, W, B))

    sqrt = dict(linear_scaling=False, attention_mechanism="IDENTITY")
    conv = lambda: stax.Conv(32, (3, 3), padding="SAME", W_std=W, b_std=B,  # noqa: E731
                             dimension_numbers=("NCHW", "OIHW", "NCHW"))
    gap1 = dict(channel_axis=1)
    gap_moved = dict(batch_axis=1, channel_axis=2)    # lhs / batch dims move the sample axis in neural-tangents
    return {
        "attn/identity_sqrt": (attention(**sqrt), "seq", None),
        "attn/identity_sqrt_sum_decay": (attention(**sqrt, pos_emb_type="SUM", decay="exp_half",
                                                   pos_emb_p_norm=1.0, W_pos_emb_std=0.8), "seq", None),
        "attn/identity_sqrt_concat": (attention(**sqrt, pos_emb_type="CONCAT", n_chan_pos_emb=32), "seq", None),
        "attn/identity_sqrt_concat_val": (attention(**sqrt, pos_emb_type="CONCAT", decay="inverse",
                                                    val_pos_emb=True), "seq", None),
        "attn/softmax_sum_decay": (attention(pos_emb_type="SUM", decay="exp"), "seq", None),
        "attn/relu_concat_val": (attention(attention_mechanism="RELU", pos_emb_type="CONCAT", n_chan_pos_emb=16,
                                           val_pos_emb=True, W_pos_emb_std=1.3), "seq", None),
        "dot/rhs": (stax.serial(conv(), stax.Relu(), stax.DotGeneral(rhs=z["dg_rhs"], channel_axis=1,
                                                                     dimension_numbers=(((3,), (0,)), ((), ()))),
                                stax.GlobalAvgPool(**gap1), stax.Dense(1, W, B)), "img", None),
        "dot/lhs": (stax.serial(conv(), stax.DotGeneral(lhs=z["dg_lhs"], channel_axis=1,
                                                        dimension_numbers=(((1,), (2,)), ((), ()))),
                                stax.Relu(), stax.GlobalAvgPool(**gap_moved), stax.Dense(1, W, B)), "img", None),
        "dot/batch": (stax.serial(conv(), stax.DotGeneral(rhs=z["dg_batch"], channel_axis=1,
                                                          dimension_numbers=(((), ()), ((3,), (0,)))),
                                  stax.Relu(), stax.GlobalAvgPool(**gap_moved), stax.Dense(1, W, B)), "img", None),
        "dot/scalar": (stax.serial(conv(), stax.Relu(), stax.DotGeneral(rhs=2.5, channel_axis=1), stax.Flatten(),
                                   stax.Dense(1, W, B)), "img", None),
        "graph/nodes": (stax.serial(stax.Dense(64, W, B), stax.Aggregate(), stax.Relu(), stax.Dense(64, W, B),
                                    stax.Aggregate(), stax.Relu(), stax.GlobalAvgPool(), stax.Dense(1, W, B)),
                        "node", "graph"),
        "graph/pixels": (stax.serial(conv(), stax.Aggregate(aggregate_axis=(2, 3), channel_axis=1), stax.Relu(),
                                     stax.GlobalAvgPool(**gap1), stax.Dense(1, W, B)), "img", "pixels"),
        "graph/columns": (stax.serial(conv(), stax.Relu(), stax.Aggregate(aggregate_axis=3, channel_axis=1),
                                      stax.Flatten(), stax.Dense(1, W, B)), "img", "columns"),
    }


def compute() -> dict[str, np.ndarray]:
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from neural_tangents import stax

    z = draw_inputs()
    out = dict(z)
    for name, ((_, _, kernel_fn), x, graph) in cases(stax, jnp, z).items():
        for pair, x2, p2 in (("x1x2", z[x + "2"], None if graph is None else z[graph + "2"]),
                             ("x1x1", None, None if graph is None else z[graph + "1"])):
            extra = {} if graph is None else {"pattern": (z[graph + "1"], p2)}
            k = kernel_fn(z[x + "1"], x2, ("nngp", "ntk"), **extra)
            out[f"{name}/nngp_{pair}"], out[f"{name}/ntk_{pair}"] = np.asarray(k.nngp), np.asarray(k.ntk)
    return out


if __name__ == "__main__":
    sys.exit(reference_cli.main(compute, OUT, __doc__.splitlines()[0]))
