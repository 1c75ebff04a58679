"""Aggregate, DotGeneral and attention with positional embeddings or linear_scaling=False
against neural-tangents 0.6.5 (tests/data/neural_tangents/graph_attention.npz, written by
benchmarks/make_reference_graph.py with the same networks in ntklab's layouts).

Every x1-vs-x2 and off-diagonal x1-vs-x1 entry must agree to 1e-10 relative to the largest
reference entry; the diagonal of x1 against itself to 1e-8, since neural-tangents evaluates the
ReLU's arccos there at a correlation rounded to 1 - O(1e-16) (see
tests/data/neural_tangents/README.md, "Near the diagonal": 3.6e-10 measured here).  A negative
control per case (one option changed) must be off by more than 1e-4."""
from pathlib import Path

import numpy as np
import pytest
import torch

import ntklab as nk

DATA = Path(__file__).resolve().parents[1] / "data" / "neural_tangents" / "graph_attention.npz"
Z = {k: torch.from_numpy(v) for k, v in np.load(DATA).items()}
W, B = 1.5, 0.05
DECAYS = {"exp_half": lambda d: torch.exp(-d / 2), "inverse": lambda d: 1 / (1 + d), "exp": lambda d: torch.exp(-d)}
SQRT = dict(linear_scaling=False, attention_mechanism="IDENTITY")


def attention(**kwargs):
    if "decay" in kwargs:
        kwargs["pos_emb_decay_fn"] = DECAYS[kwargs.pop("decay")]
    return nk.serial(nk.Dense(64, W, B), nk.GlobalSelfAttention(64, 64, 64, 4, W_key_std=1.2, b_std=0.2, **kwargs),
                     nk.Relu(), nk.GlobalAvgPool(), nk.Dense(1, W, B))


def conv():
    return nk.Conv(32, (3, 3), padding="SAME", W_std=W, b_std=B)


def dot(**kwargs):
    return nk.DotGeneral(**kwargs)


CASES = {   # name -> (network, its negative control, inputs, graphs)
    "attn/identity_sqrt": (attention(**SQRT), attention(**SQRT, pos_emb_type="SUM"), "seq", None),
    "attn/identity_sqrt_sum_decay": (
        attention(**SQRT, pos_emb_type="SUM", decay="exp_half", pos_emb_p_norm=1.0, W_pos_emb_std=0.8),
        attention(**SQRT, pos_emb_type="SUM", decay="exp_half", W_pos_emb_std=0.8), "seq", None),
    "attn/identity_sqrt_concat": (attention(**SQRT, pos_emb_type="CONCAT", n_chan_pos_emb=32),
                                  attention(**SQRT, pos_emb_type="CONCAT", n_chan_pos_emb=32, val_pos_emb=True),
                                  "seq", None),
    "attn/identity_sqrt_concat_val": (attention(**SQRT, pos_emb_type="CONCAT", decay="inverse", val_pos_emb=True),
                                      attention(**SQRT, pos_emb_type="CONCAT", decay="inverse"), "seq", None),
    "attn/softmax_sum_decay": (attention(pos_emb_type="SUM", decay="exp"), attention(pos_emb_type="SUM"),
                               "seq", None),
    "attn/relu_concat_val": (
        attention(attention_mechanism="RELU", pos_emb_type="CONCAT", n_chan_pos_emb=16, val_pos_emb=True,
                  W_pos_emb_std=1.3),
        attention(attention_mechanism="RELU", pos_emb_type="CONCAT", val_pos_emb=True, W_pos_emb_std=1.3),
        "seq", None),
    "dot/rhs": (nk.serial(conv(), nk.Relu(), dot(rhs=Z["dg_rhs"], dimension_numbers=(((3,), (0,)), ((), ()))),
                          nk.GlobalAvgPool(), nk.Dense(1, W, B)),
                nk.serial(conv(), nk.Relu(), dot(rhs=Z["dg_rhs"].flip(0),
                                                 dimension_numbers=(((3,), (0,)), ((), ()))),
                          nk.GlobalAvgPool(), nk.Dense(1, W, B)), "img", None),
    "dot/lhs": (nk.serial(conv(), dot(lhs=Z["dg_lhs"], dimension_numbers=(((1,), (2,)), ((), ()))), nk.Relu(),
                          nk.GlobalAvgPool(), nk.Dense(1, W, B)),
                nk.serial(conv(), dot(lhs=Z["dg_lhs"].flip(1), dimension_numbers=(((1,), (2,)), ((), ()))),
                          nk.Relu(), nk.GlobalAvgPool(), nk.Dense(1, W, B)), "img", None),
    "dot/batch": (nk.serial(conv(), dot(rhs=Z["dg_batch"], dimension_numbers=(((), ()), ((3,), (0,)))), nk.Relu(),
                            nk.GlobalAvgPool(), nk.Dense(1, W, B)),
                  nk.serial(conv(), nk.Relu(), nk.GlobalAvgPool(), nk.Dense(1, W, B)), "img", None),
    "dot/scalar": (nk.serial(conv(), nk.Relu(), dot(rhs=2.5), nk.Flatten(), nk.Dense(1, W, B)),
                   nk.serial(conv(), nk.Relu(), dot(rhs=2.0), nk.Flatten(), nk.Dense(1, W, B)), "img", None),
    "graph/nodes": (nk.serial(nk.Dense(64, W, B), nk.Aggregate(), nk.Relu(), nk.Dense(64, W, B), nk.Aggregate(),
                              nk.Relu(), nk.GlobalAvgPool(), nk.Dense(1, W, B)),
                    nk.serial(nk.Dense(64, W, B), nk.Aggregate(), nk.Relu(), nk.Dense(64, W, B),
                              nk.Relu(), nk.GlobalAvgPool(), nk.Dense(1, W, B)), "node", "graph"),
    "graph/pixels": (nk.serial(conv(), nk.Aggregate(), nk.Relu(), nk.GlobalAvgPool(), nk.Dense(1, W, B)),
                     nk.serial(conv(), nk.Relu(), nk.Aggregate(), nk.GlobalAvgPool(), nk.Dense(1, W, B)),
                     "img", "pixels"),
    "graph/columns": (nk.serial(conv(), nk.Relu(), nk.Aggregate(aggregate_axis=3), nk.Flatten(), nk.Dense(1, W, B)),
                      nk.serial(conv(), nk.Relu(), nk.Aggregate(aggregate_axis=3), nk.Flatten(), nk.Dense(1, W, B)),
                      "img", "columns"),
}
CONTROL_GRAPHS = {"graph/columns": "reversed_arcs"}   # the same network with every arc reversed
Z["reversed_arcs1"], Z["reversed_arcs2"] = Z["columns1"].transpose(1, 2), Z["columns2"].transpose(1, 2)


def kernels(net, x, graph, **options):
    pattern = {} if graph is None else {"pattern": (Z[graph + "1"], Z[graph + "2"])}
    same = {} if graph is None else {"pattern": (Z[graph + "1"], None)}
    return net.kernel(Z[x + "1"], Z[x + "2"], **pattern, **options), net.kernel(Z[x + "1"], **same, **options)


def worst(name, computed, diagonal=False):
    """Largest |ntklab - neural-tangents| relative to the largest entry, over the four kernels'
    entries off the diagonal of x1 against itself (`diagonal`: over that diagonal)."""
    errors = []
    for k, pair in zip(computed, ("x1x2", "x1x1"), strict=True):
        for get in ("nngp", "ntk"):
            ref = Z[f"{name}/{get}_{pair}"]
            error = (getattr(k, get) - ref).abs() / ref.abs().max()
            if pair == "x1x1":
                on_diagonal = torch.eye(len(error), dtype=torch.bool)
                error = error[on_diagonal if diagonal else ~on_diagonal]
            elif diagonal:
                continue
            errors.append(float(error.max()))
    return max(errors)


@pytest.mark.parametrize("name", list(CASES))
def test_matches_neural_tangents(name):
    net, _, x, graph = CASES[name]
    computed = kernels(net, x, graph)
    assert worst(name, computed) <= 1e-10
    assert worst(name, computed, diagonal=True) <= 1e-8


@pytest.mark.parametrize("name", [name for name in CASES if name.startswith("graph/")])
def test_graphs_travel_with_their_samples_through_the_blocks(name):
    """In blocks of one row and column (two worker threads), each block gets its samples' graphs."""
    net, _, x, graph = CASES[name]
    computed = kernels(net, x, graph, block_size=1, workers=2)
    assert worst(name, computed) <= 1e-10
    assert worst(name, computed, diagonal=True) <= 1e-8


@pytest.mark.parametrize("name", list(CASES))
def test_negative_control_is_far(name):
    _, wrong, x, graph = CASES[name]
    assert worst(name, kernels(wrong, x, CONTROL_GRAPHS.get(name, graph))) > 1e-4
