"""Aggregate, DotGeneral and attention with positional embeddings or 1/sqrt(d_key) IDENTITY
logits: the mean empirical NNGP/NTK of wide random finite networks (`net.module`) converges to
the analytic kernel, and a negative control (a nearby architecture's kernel) is clearly farther
away (the allowance of tests/arch/test_architectures_monte_carlo.py: 4 standard errors plus 2%
of the kernel's scale for the O(1/width) bias)."""
import pytest
import torch
from torch import nn

import ntklab as nk

GEN = torch.Generator().manual_seed(5)
X_SEQ = torch.randn(3, 5, 4, generator=GEN, dtype=torch.float64)
X_IMG = torch.randn(3, 2, 5, 4, generator=GEN, dtype=torch.float64)
GRAPHS = (torch.rand(3, 5, 5, generator=GEN) < 0.5).double() * (0.5 + torch.rand(3, 5, 5, generator=GEN))
LHS = torch.randn(3, 5, generator=GEN, dtype=torch.float64)


class WithGraphs(nn.Module):
    """A network with Aggregate layers on rows `[x.flatten(), graph.flatten()]` (each sample with
    its graph, so that the empirical kernels may take the samples one at a time)."""

    def __init__(self, model: nn.Module, sample_shape: torch.Size, graph_shape: torch.Size):
        super().__init__()
        self.model, self.sample_shape, self.graph_shape = model, sample_shape, graph_shape

    def forward(self, rows):
        features = rows.shape[1] - self.graph_shape.numel()
        return self.model(rows[:, :features].reshape(-1, *self.sample_shape),
                          pattern=rows[:, features:].reshape(-1, *self.graph_shape))


def distances(net, wrong, x, get, n_samples, pattern=None):
    if pattern is None:
        mc = nk.monte_carlo_kernel(net, x, n_samples=n_samples, get=get, progress=False)
        exact, other = net.kernel(x, get=get), wrong.kernel(x, get=get)
    else:
        factory = lambda seed: WithGraphs(net.module(x.shape[1:], seed=seed, dtype=x.dtype),  # noqa: E731
                                          x.shape[1:], pattern.shape[1:])
        rows = torch.cat([x.flatten(1), pattern.flatten(1)], 1)
        mc = nk.monte_carlo_kernel(factory, rows, n_samples=n_samples, get=get, progress=False)
        exact, other = (n.kernel(x, get=get, pattern=(pattern, None)) for n in (net, wrong))
    mean, error = getattr(mc, get), getattr(mc, f"{get}_standard_error")
    allowance = 4 * error + 0.02 * exact.abs().max()
    return float(((mean - exact).abs() / allowance).max()), float(((mean - other).abs() / allowance).max())


def attention(**kwargs):
    return nk.serial(nk.Dense(512), nk.GlobalSelfAttention(512, 64, 32, 32, W_key_std=1.5, b_std=0.2, **kwargs),
                     nk.Relu(), nk.GlobalAvgPool(), nk.Dense(1))


SQRT = dict(linear_scaling=False, attention_mechanism="IDENTITY")


def exp_decay(d):
    return torch.exp(-d)


SLOW = {"attention_identity_sqrt", "attention_sum_decay", "attention_softmax_concat_values", "aggregate"}  # 8-20 s
CASES = {   # name: (network, negative control, inputs, get, networks averaged, graphs)
    "attention_identity_sqrt": (attention(**SQRT), attention(**SQRT, W_value_std=1.2), X_SEQ, "ntk", 8, None),
    "attention_sum_decay": (attention(**SQRT, pos_emb_type="SUM", pos_emb_decay_fn=exp_decay, W_pos_emb_std=0.8),
                            attention(**SQRT), X_SEQ, "ntk", 8, None),
    "attention_softmax_concat_values": (
        attention(pos_emb_type="CONCAT", n_chan_pos_emb=256, val_pos_emb=True, W_pos_emb_std=1.5),
        attention(pos_emb_type="CONCAT", n_chan_pos_emb=256, W_pos_emb_std=1.5), X_SEQ, "ntk", 6, None),
    "dot_general_lhs": (
        nk.serial(nk.Conv(256, (3, 3), padding="SAME", W_std=1.4, b_std=0.1),
                  nk.DotGeneral(lhs=LHS, dimension_numbers=(((1,), (2,)), ((), ()))), nk.Relu(),
                  nk.GlobalAvgPool(), nk.Dense(1)),
        nk.serial(nk.Conv(256, (3, 3), padding="SAME", W_std=1.4, b_std=0.1),
                  nk.DotGeneral(lhs=LHS.abs(), dimension_numbers=(((1,), (2,)), ((), ()))), nk.Relu(),
                  nk.GlobalAvgPool(), nk.Dense(1)), X_IMG, "ntk", 6, None),
    "aggregate": (
        nk.serial(nk.Dense(1024, 1.4, 0.1), nk.Aggregate(), nk.Relu(), nk.Dense(1024, 1.4, 0.1), nk.Aggregate(),
                  nk.Relu(), nk.GlobalAvgPool(), nk.Dense(1)),
        nk.serial(nk.Dense(1024, 1.4, 0.1), nk.Aggregate(), nk.Relu(), nk.Dense(1024, 1.4, 0.1),
                  nk.Relu(), nk.GlobalAvgPool(), nk.Dense(1)), X_SEQ, "ntk", 8, GRAPHS),
}


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name
                                  for name in CASES])
def test_monte_carlo_matches_kernel(name):
    net, wrong, x, get, n_samples, pattern = CASES[name]
    right, other = distances(net, wrong, x, get, n_samples, pattern)
    assert right < 1.0, f"{name}: Monte Carlo {right:.2f} allowances from its kernel"
    assert other > 1.5, f"{name}: the negative control is only {other:.2f} allowances away"
