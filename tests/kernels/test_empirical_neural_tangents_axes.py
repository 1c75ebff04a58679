"""`nk.empirical_ntk(..., trace_axes=, diagonal_axes=)` with neural-tangents' meaning (issue 29):
against the explicit per-entry sums of autograd Jacobians, in the shapes neural-tangents 0.6.5's
`empirical_ntk_fn` returns for outputs [N, 2, 3] (recorded by running it on this function: its
values agreed with ntklab's to 1.8e-15 for all ten cases and the three implementations)."""
import itertools
import math

import pytest
import torch

import ntklab as nk

G = torch.Generator().manual_seed(3)
X1 = torch.randn(3, 4, generator=G, dtype=torch.float64)
X2 = torch.randn(2, 4, generator=G, dtype=torch.float64)


class Outputs23(torch.nn.Module):
    """f(x) = tanh(x W1) W2 as [N, 2, 3]: outputs with two axes."""

    def __init__(self):
        super().__init__()
        self.w1 = torch.nn.Parameter(torch.randn(4, 7, generator=G, dtype=torch.float64) / 2)
        self.w2 = torch.nn.Parameter(torch.randn(7, 6, generator=G, dtype=torch.float64) / 7 ** 0.5)

    def forward(self, x):
        return (torch.tanh(x @ self.w1) @ self.w2).reshape(len(x), 2, 3)


MODEL = Outputs23()

# (trace_axes, diagonal_axes) -> neural-tangents' shape for N1 = 3, N2 = 2
NEURAL_TANGENTS_SHAPES = {
    ((-1,), ()): (3, 2, 2, 2), ((), ()): (3, 2, 2, 2, 3, 3), ((), (-1,)): (3, 2, 2, 2, 3),
    ((1,), (2,)): (3, 2, 3), ((-1, -2), ()): (3, 2), ((), (1, 2)): (3, 2, 2, 3), ((2,), (1,)): (3, 2, 2),
    ((), (1,)): (3, 2, 2, 3, 3), ((1,), ()): (3, 2, 3, 3), ((2,), ()): (3, 2, 2, 2)}


def jacobian(x):
    """d f(x)[i, a, b] / d theta as [N, 2, 3, P], by autograd, one output at a time."""
    out = MODEL(x)
    rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(out[i, a, b], list(MODEL.parameters()),
                                                                  retain_graph=True)])
            for i, a, b in itertools.product(range(len(x)), range(2), range(3))]
    return torch.stack(rows).reshape(len(x), 2, 3, -1)


def expected_kernel(trace_axes, diagonal_axes):
    """neural-tangents' definition, entry by entry: for each kept index of each output axis, the
    mean over the traced axes' indices of J1[i, s] . J2[j, s'], with s = s' on traced and diagonal
    axes; result axes N1, N2, then per output axis in order (s, s') kept, (s,) diagonal, none traced."""
    j1, j2 = jacobian(X1), jacobian(X2)
    traced = {a % 3 for a in trace_axes}
    diagonal = {a % 3 for a in diagonal_axes}
    sizes = {1: 2, 2: 3}
    free = [(axis, side) for axis in (1, 2) if axis not in traced
            for side in ((0,) if axis in diagonal else (0, 1))]
    shape = [len(X1), len(X2)] + [sizes[axis] for axis, _ in free]
    result = torch.zeros(shape, dtype=torch.float64)
    contracted = [range(sizes[a]) for a in (1, 2) if a in traced]
    for index in itertools.product(*[range(n) for n in shape]):
        i, j, rest = index[0], index[1], index[2:]
        chosen = {(axis, side): value for (axis, side), value in zip(free, rest, strict=True)}
        total = 0.0
        for summed in itertools.product(*contracted):
            picked = dict(zip([a for a in (1, 2) if a in traced], summed, strict=True))
            left = [picked.get(a, chosen.get((a, 0))) for a in (1, 2)]
            right = [picked.get(a, chosen.get((a, 1), chosen.get((a, 0)))) for a in (1, 2)]
            total += float(j1[i, left[0], left[1]] @ j2[j, right[0], right[1]])
        result[index] = total / math.prod(sizes[a] for a in traced)
    return result


@pytest.mark.parametrize("axes", list(NEURAL_TANGENTS_SHAPES), ids=str)
def test_neural_tangents_axes_are_its_kernel(axes):
    trace_axes, diagonal_axes = axes
    expected = expected_kernel(trace_axes, diagonal_axes)
    assert expected.shape == NEURAL_TANGENTS_SHAPES[axes]
    for implementation in ("jacobian", "ntk_vp"):
        got = nk.empirical_ntk(MODEL, X1, X2, trace_axes=trace_axes, diagonal_axes=diagonal_axes,
                               implementation=implementation)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


def test_one_argument_takes_neural_tangents_default_for_the_other():
    """trace_axes defaults to (-1,), diagonal_axes to (): as neural-tangents' empirical_ntk_fn."""
    torch.testing.assert_close(nk.empirical_ntk(MODEL, X1, X2, diagonal_axes=(1,)),
                               expected_kernel((-1,), (1,)), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(nk.empirical_ntk(MODEL, X1, X2, trace_axes=-1),   # an int is one axis
                               expected_kernel((-1,), ()), rtol=1e-12, atol=1e-14)
    vector = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()
    for ported, mode in ((dict(trace_axes=(-1,)), "trace"), (dict(trace_axes=()), "full"),
                         (dict(trace_axes=(), diagonal_axes=(-1,)), "diagonal")):
        torch.testing.assert_close(nk.empirical_ntk(vector, X1, **ported), nk.empirical_ntk(vector, X1, mode=mode),
                                   rtol=0, atol=0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(mode="full", trace_axes=()), r"pass either mode='full' or neural-tangents' trace_axes=/diagonal_axes="),
    (dict(trace_axes=(0,)), r"trace_axes=\(0,\): axis 0 is the batch axis"),
    (dict(diagonal_axes=(-3,), trace_axes=()), r"diagonal_axes=\(-3,\): axis -3 is the batch axis"),
    (dict(trace_axes=(3,)), r"trace_axes=\(3,\): axis 3 is out of range for the model's outputs of 3 axes"),
    (dict(trace_axes=(1, -2)), r"trace_axes=\(1, -2\) names an axis twice"),
    (dict(diagonal_axes=(-1,)), r"output axis 2 is in both trace_axes=\(-1,\) \(neural-tangents' default\)"),
    (dict(trace_axes="-1"), r"trace_axes must be an int or a tuple of ints"),
])
def test_axes_it_cannot_use_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        nk.empirical_ntk(MODEL, X1, X2, **kwargs)
