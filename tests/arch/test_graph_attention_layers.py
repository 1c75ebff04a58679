"""The finite modules of Aggregate and DotGeneral against explicit formulas (message passing
edge by edge, numpy's tensordot/einsum), and every input they cannot compute exactly refused
before any work with a message naming the layer or argument."""
import numpy as np
import pytest
import torch

import ntklab as nk

GEN = torch.Generator().manual_seed(11)
NODES = torch.randn(2, 4, 3, generator=GEN, dtype=torch.float64)                  # [N, T, C]
GRAPHS = torch.rand(2, 4, 4, generator=GEN, dtype=torch.float64) * (torch.rand(2, 4, 4, generator=GEN) < 0.5)
IMAGES = torch.randn(2, 3, 4, 5, generator=GEN, dtype=torch.float64)              # [N, C, H, W]


def test_aggregate_module_sums_each_nodes_predecessors():
    out = nk.serial(nk.Aggregate()).module((4, 3), dtype=torch.float64)(NODES, pattern=GRAPHS)
    expected = torch.zeros_like(NODES)
    for n in range(2):
        for tail in range(4):
            for head in range(4):   # an arc tail -> head of weight GRAPHS[n, tail, head]
                expected[n, head] += GRAPHS[n, tail, head] * NODES[n, tail]
    assert torch.allclose(out, expected, rtol=0, atol=1e-14)
    transposed = nk.serial(nk.Aggregate()).module((4, 3), dtype=torch.float64)(NODES, pattern=GRAPHS.transpose(1, 2))
    assert not torch.allclose(transposed, expected, atol=1e-3)   # negative control: arcs reversed


def test_aggregate_over_one_image_axis_treats_each_row_alike():
    columns = torch.rand(2, 5, 5, generator=GEN, dtype=torch.float64)
    out = nk.serial(nk.Aggregate(aggregate_axis=3)).module((3, 4, 5), dtype=torch.float64)(IMAGES, pattern=columns)
    expected = np.einsum("nij,nchi->nchj", columns.numpy(), IMAGES.numpy())
    assert np.allclose(out.numpy(), expected, rtol=0, atol=1e-14)
    assert not np.allclose(out.numpy(), np.einsum("nji,nchi->nchj", columns.numpy(), IMAGES.numpy()), atol=1e-3)


def test_dot_general_modules_match_numpy():
    rhs = torch.randn(5, 2, generator=GEN, dtype=torch.float64)
    lhs = torch.randn(3, 4, generator=GEN, dtype=torch.float64)
    contract_w = nk.serial(nk.DotGeneral(rhs=rhs, dimension_numbers=(((3,), (0,)), ((), ()))))
    contract_h = nk.serial(nk.DotGeneral(lhs=lhs, dimension_numbers=(((1,), (2,)), ((), ()))))
    out_w = contract_w.module((3, 4, 5), dtype=torch.float64)(IMAGES)
    out_h = contract_h.module((3, 4, 5), dtype=torch.float64)(IMAGES)
    assert np.allclose(out_w.numpy(), np.tensordot(IMAGES.numpy(), rhs.numpy(), axes=([3], [0])), atol=1e-14)
    # lax.dot_general(lhs, x) is [H', N, C, W]: the sample axis first again, channels second
    expected_h = np.einsum("gh,nchw->ncgw", lhs.numpy(), IMAGES.numpy())
    assert np.allclose(out_h.numpy(), expected_h, atol=1e-14)
    assert not np.allclose(out_h.numpy(), np.einsum("gh,nchw->ncgw", lhs.numpy()[::-1], IMAGES.numpy()), atol=1e-3)


VEC = torch.randn(3, 4, dtype=torch.float64)
SEQ = torch.randn(3, 4, 3, dtype=torch.float64)
IMG = torch.randn(3, 2, 4, 5, dtype=torch.float64)
AGG = nk.serial(nk.Dense(8), nk.Aggregate(), nk.GlobalAvgPool(), nk.Dense(1))
REFUSED = [   # (what computes, message pattern)
    (lambda: AGG.kernel(SEQ), r"Aggregate layers: pass the graphs"),
    (lambda: AGG.kernel(SEQ, pattern=(torch.ones(3, 4, 4), torch.ones(3, 4, 4))), r"p2=None exactly when x2 is None"),
    (lambda: AGG.kernel(SEQ, pattern=(torch.ones(2, 4, 4), None)), r"one per sample \(3\)"),
    (lambda: AGG.kernel(SEQ, pattern=(torch.ones(3, 5, 5), None)), r"layer 1, Aggregate\(\).*pattern must have shape"),
    (lambda: AGG.kernel(SEQ, pattern=(torch.full((3, 4, 4), float("nan")), None)), r"finite graphs"),
    (lambda: nk.serial(nk.Dense(8), nk.Dense(1)).kernel(VEC, pattern=(torch.ones(3, 1, 1), None)),
     r"read by Aggregate layers only"),
    (lambda: nk.serial(nk.Dense(8), nk.Aggregate(), nk.Dense(1)).kernel(VEC, pattern=(torch.ones(3, 1, 1), None)),
     r"layer 1, Aggregate\(\).*gets vectors"),
    (lambda: nk.serial(nk.Conv(8), nk.Aggregate(aggregate_axis=1), nk.GlobalAvgPool(), nk.Dense(1)).kernel(
        IMG, pattern=(torch.ones(3, 4, 4), None)), r"aggregate_axis=1 must name the position axes \(2, 3\)"),
    (lambda: AGG.module((4, 3))(SEQ.float()), r"Aggregate\(\) needs the graph of each sample: call the network"),
    (lambda: nk.DotGeneral(lhs=1.0, rhs=2.0), r"at most one of the constants lhs and rhs"),
    (lambda: nk.serial(nk.Conv(8), nk.DotGeneral(rhs=torch.ones(2), dimension_numbers=(((1,), (0,)), ((), ()))),
                       nk.GlobalAvgPool(), nk.Dense(1)).kernel(IMG), r"layer 1, DotGeneral.*channel axis 1"),
    (lambda: nk.serial(nk.Conv(8), nk.DotGeneral(rhs=torch.ones(3), dimension_numbers=(((0,), (0,)), ((), ()))),
                       nk.GlobalAvgPool(), nk.Dense(1)).kernel(IMG), r"layer 1, DotGeneral.*sample axis 0"),
    (lambda: nk.serial(nk.Conv(8), nk.DotGeneral(rhs=torch.ones(5, 2)), nk.GlobalAvgPool(), nk.Dense(1)).kernel(IMG),
     r"layer 1, DotGeneral.*rank 6"),
    (lambda: nk.serial(nk.Conv(8), nk.DotGeneral(rhs=torch.ones(4, 2), dimension_numbers=(((3,), (0,)), ((), ()))),
                       nk.GlobalAvgPool(), nk.Dense(1)).kernel(IMG), r"layer 1, DotGeneral.*different sizes"),
    (lambda: nk.serial(nk.Conv(8), nk.Flatten(), nk.DotGeneral(rhs=torch.ones(2)), nk.Relu(), nk.Dense(1)).kernel(IMG),
     r"layer 2, DotGeneral.*before nk.Flatten"),
    (lambda: nk.serial(nk.Dense(8), nk.GlobalSelfAttention(8, 8, 8, 2, linear_scaling=False,
                                                           attention_mechanism="RELU"),
                       nk.GlobalAvgPool(), nk.Dense(1)).kernel(SEQ), r"layer 1, GlobalSelfAttention.*'RELU'"),
    (lambda: nk.serial(nk.Dense(8), nk.GlobalSelfAttention(8, 8, 8, 2, pos_emb_type="SUM", n_chan_pos_emb=4),
                       nk.GlobalAvgPool(), nk.Dense(1)).kernel(SEQ), r"layer 1, GlobalSelfAttention.*n_chan_pos_emb=4"),
    (lambda: nk.GlobalSelfAttention(8, 8, 8, 2, pos_emb_type="ROTARY"), r"pos_emb_type must be one of"),
    (lambda: nk.serial(nk.Dense(8), nk.GlobalSelfAttention(8, 8, 8, 2, pos_emb_type="SUM",
                                                           pos_emb_decay_fn=lambda d: d)).module((4, 3)),
     r"not positive definite"),
]


@pytest.mark.parametrize("compute, message", REFUSED)
def test_refused_naming_the_layer(compute, message):
    with pytest.raises(ValueError, match=message):
        compute()
