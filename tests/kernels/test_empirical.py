"""Empirical NTK against explicit per-sample autograd Jacobian products."""
import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

import ntklab as nk
from ntklab._core.validation import parse_memory
from ntklab.kernels.model_inputs import select_parameters
from ntklab.kernels.structured import Plan


def explicit_ntk(model, x1, x2, names=None):
    """Theta[i, j, a, b] = sum_p df_a(x1_i)/dp df_b(x2_j)/dp by per-sample jacrev."""
    params = {k: v.detach() for k, v in model.named_parameters() if names is None or k in names}

    def f(p, xi):
        return functional_call(model, p, (xi[None],)).reshape(-1)
    j1 = vmap(jacrev(f), in_dims=(None, 0))(params, x1)
    j2 = vmap(jacrev(f), in_dims=(None, 0))(params, x2)
    return sum(torch.einsum("iap,jbp->ijab", j1[k].flatten(2), j2[k].flatten(2)) for k in params)


class Reused(nn.Module):
    """One Linear applied twice in the forward pass."""
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(5, 7), nn.Linear(7, 7), nn.Linear(7, 3)

    def forward(self, x):
        h = torch.tanh(self.b(torch.tanh(self.a(x))))
        return self.c(torch.tanh(self.b(h)))


class Tied(nn.Module):
    """A Linear weight also used outside its layer (structured rule must not apply)."""
    def __init__(self):
        super().__init__()
        self.a, self.c = nn.Linear(5, 5), nn.Linear(5, 2)

    def forward(self, x):
        return self.c(torch.tanh(torch.tanh(self.a(x)) @ self.a.weight))


def batchnorm_model():
    model = nn.Sequential(nn.Linear(5, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3)).double()
    with torch.no_grad():
        model(torch.randn(64, 5, dtype=torch.float64) * 2 + 1)   # non-trivial running stats
    return model.eval()


MODELS = {
    "mlp": (lambda: nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(),
                                  nn.Linear(16, 3)).double(), (5,)),
    "cnn": (lambda: nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                                  nn.Flatten(), nn.Linear(64, 3)).double(), (2, 6, 6)),
    "cnn-strided": (lambda: nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.Tanh(), nn.Conv2d(4, 3, 2, dilation=2, bias=False),
        nn.Conv2d(3, 3, 1, padding="same"), nn.Flatten(), nn.Linear(12, 3)).double(), (2, 7, 7)),
    "batchnorm-eval": (batchnorm_model, (5,)),
    "reused-layer": (lambda: Reused().double(), (5,)),
    "tied-weight": (lambda: Tied().double(), (5,)),
}
REDUCE = {"full": lambda r: r, "trace": lambda r: torch.diagonal(r, dim1=2, dim2=3).mean(-1),
          "diagonal": lambda r: torch.diagonal(r, dim1=2, dim2=3)}


@pytest.mark.parametrize("implementation", ["structured", "jacobian", "ntk_vp", "auto"])
@pytest.mark.parametrize("name", list(MODELS))
def test_matches_explicit_jacobians(name, implementation):
    torch.manual_seed(0)
    make, shape = MODELS[name]
    model = make()
    x1, x2 = torch.randn(7, *shape, dtype=torch.float64), torch.randn(5, *shape, dtype=torch.float64)
    cross, gram = explicit_ntk(model, x1, x2), explicit_ntk(model, x1, x1)
    for mode, reduce in REDUCE.items():
        out = nk.empirical_ntk(model, x1, x2, mode=mode, implementation=implementation)
        sym = nk.empirical_ntk(model, x1, mode=mode, implementation=implementation)
        scale = float(gram.abs().max())
        assert out.shape == reduce(cross).shape and out.dtype == torch.float64
        assert float((out - reduce(cross)).abs().max()) < 1e-10 * scale, mode
        assert float((sym - reduce(gram)).abs().max()) < 1e-10 * scale, mode


def test_structured_rule_applies_only_where_exact():
    x = torch.randn(4, 5, dtype=torch.float64)
    reused = MODELS["reused-layer"][0]()
    plan = Plan(reused, select_parameters(reused, None), True, x)
    assert len(plan.linear) == 3 and not plan.rest
    tied = MODELS["tied-weight"][0]()
    plan = Plan(tied, select_parameters(tied, None), True, x)
    assert [use.module for use in plan.linear] == [tied.c] and set(plan.rest) == {"a.weight", "a.bias"}
    cnn = MODELS["cnn-strided"][0]()
    plan = Plan(cnn, select_parameters(cnn, None), True, torch.randn(2, 2, 7, 7, dtype=torch.float64))
    assert set(plan.rest) == {"3.weight", "3.bias"}   # padding="same" is left to vmap(jacrev)


@pytest.mark.parametrize("implementation", ["structured", "jacobian", "ntk_vp"])
def test_tiled_under_memory_cap_and_parameter_subset(implementation):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 256), nn.Tanh(), nn.Linear(256, 256), nn.ReLU(),
                          nn.Linear(256, 3)).double()
    x = torch.randn(30, 5, dtype=torch.float64)
    # per-sample Jacobians of the 68k parameters take ~5 MB: 12 MiB allows tiles of one sample;
    # the structured rule's activations and cotangents are ~100x smaller
    cap = "1MiB" if implementation == "structured" else "12MiB"
    if implementation != "structured":
        with pytest.raises(ValueError, match="GiB per sample .* raise max_memory"):
            nk.empirical_ntk(model, x, mode="full", implementation=implementation, max_memory="1MiB")
    out = nk.empirical_ntk(model, x, mode="full", implementation=implementation,
                           max_memory=cap, progress=False)
    reference = explicit_ntk(model, x, x)
    assert float((out - reference).abs().max()) < 1e-10 * float(reference.abs().max())
    last = nk.empirical_ntk(model, x, x[:4], mode="trace", params=["4.weight", "4.bias"],
                            implementation=implementation)
    reference = REDUCE["trace"](explicit_ntk(model, x, x[:4], names={"4.weight", "4.bias"}))
    assert torch.allclose(last, reference, rtol=1e-10, atol=0)
    # the last layer alone: Theta = (h . h' + 1) * I with h the last hidden layer
    hidden = model[:4](x).detach()
    assert torch.allclose(last, hidden @ hidden[:4].T + 1, rtol=1e-10, atol=0)


def test_float32_and_numpy_inputs():
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    x = np.random.default_rng(0).normal(size=(6, 3))
    out = nk.empirical_ntk(model, x, mode="diagonal")
    assert out.dtype == torch.float32 and out.shape == (6, 6, 2)
    reference = REDUCE["diagonal"](explicit_ntk(model, torch.tensor(x, dtype=torch.float32),
                                                torch.tensor(x, dtype=torch.float32)))
    assert torch.allclose(out, reference, rtol=1e-4, atol=1e-5)


def test_bad_input():
    model = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Linear(8, 2)).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="model.eval"):
        nk.empirical_ntk(model, x)   # train-mode BatchNorm mixes samples

    class Mixing(nn.Module):
        def forward(self, x):
            return x - x.mean(0)
    mixing = nn.Sequential(nn.Linear(3, 2).double(), Mixing())
    with pytest.raises(ValueError, match="depend on other samples"):
        nk.empirical_ntk(mixing, x)
    model.eval()
    with pytest.raises(ValueError, match="x1 has dtype torch.float32"):
        nk.empirical_ntk(model, x.float())
    with pytest.raises(ValueError, match="same sample shape"):
        nk.empirical_ntk(model, x, torch.randn(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="no parameter 'fc.weight'"):
        nk.empirical_ntk(model, x, params=["fc.weight"])
    with pytest.raises(ValueError, match="mode must be"):
        nk.empirical_ntk(model, x, mode="trace_axes")
    with pytest.raises(ValueError, match="max_memory"):
        nk.empirical_ntk(model, x, max_memory="lots")
    assert parse_memory("2GiB") == 2 * 2 ** 30 and parse_memory("500MB") == 5 * 10 ** 8


def test_largest_ntk_eigenvalue_by_power_iteration_matches_the_full_kernel():
    from ntklab.lab.spectrum import largest_ntk_eigenvalue
    net = nk.serial(nk.Conv(16, (3, 3), None, "SAME", 1.4, 0.1), nk.Relu(), nk.GlobalAvgPool(), nk.Dense(3))
    model = net.module((1, 6, 6), seed=0, dtype=torch.float64)
    x = torch.randn(20, 1, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    full = nk.empirical_ntk(model, x, mode="full").permute(0, 2, 1, 3).reshape(60, 60)
    exact = float(torch.linalg.eigvalsh(full)[-1])
    assert largest_ntk_eigenvalue(model, x, rtol=1e-10, iterations=500) == pytest.approx(exact, rel=1e-6)


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_ntklab_modules_take_the_structured_rule_and_match_autograd(parameterization):
    dense = nk.serial(nk.Dense(9, W_std=1.3, b_std=0.2, parameterization=parameterization), nk.Relu(),
                      nk.Dense(7, W_std=1.1, parameterization=parameterization), nk.Erf(),
                      nk.Dense(2, W_std=0.9, b_std=0.0, parameterization=parameterization))
    conv = nk.serial(nk.Conv(4, (2, 3), padding="SAME", W_std=1.2, b_std=0.3, parameterization=parameterization),
                     nk.Relu(), nk.Conv(3, (2, 2), padding="VALID", trainable=False), nk.Relu(),
                     nk.GlobalAvgPool(), nk.Dense(2, b_std=0.1, parameterization=parameterization))
    for net, shape in ((dense, (5,)), (conv, (2, 5, 6))):
        model = net.module(shape, seed=1, dtype=torch.float64)
        x1 = torch.randn(5, *shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        x2 = torch.randn(3, *shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        plan = Plan(model, select_parameters(model, None), True, x1)
        trainable = [m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))]
        assert [use.module for use in plan.structured] == trainable and not plan.rest
        expected = explicit_ntk(model, x1, x2, [n for n, p in model.named_parameters() if p.requires_grad])
        got = nk.empirical_ntk(model, x1, x2, mode="full", implementation="structured")
        assert float((got - expected).abs().max()) < 1e-12 * float(expected.abs().max())


@pytest.mark.parametrize("implementation", ["structured", "jacobian", "ntk_vp", "auto"])
def test_integer_inputs_of_an_embedding_model_are_indices(implementation):
    """The Jacobian is w.r.t. the parameters: integer inputs reach nn.Embedding unchanged."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Tanh(), nn.Linear(12, 3)).double()
    x1, x2 = torch.randint(0, 10, (6, 3)), torch.randint(0, 10, (4, 3), dtype=torch.int32)
    expected = explicit_ntk(model, x1, x2)
    got = nk.empirical_ntk(model, x1, x2, mode="full", implementation=implementation)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    gram = nk.empirical_ntk(model, x1.numpy(), implementation=implementation)   # numpy integers too
    torch.testing.assert_close(gram, REDUCE["trace"](explicit_ntk(model, x1, x1)), rtol=1e-12, atol=1e-12)


def test_one_output_per_batch_is_refused_naming_the_shape():
    class Summed(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.fc, self.dim = nn.Linear(3, 2).double(), dim

        def forward(self, x):
            return self.fc(x).sum(self.dim)
    x = torch.randn(5, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"returns shape \(\) for a batch of 1 sample.*one output row per sample"):
        nk.empirical_ntk(Summed(None), x)
    with pytest.raises(ValueError, match=r"returns shape \(2,\) for a batch of 1 sample"):
        nk.empirical_ntk(Summed(0), x)
    one_scalar_per_sample = Summed(1)                      # [N]: one output row per sample, O = 1
    torch.testing.assert_close(nk.empirical_ntk(one_scalar_per_sample, x),
                               explicit_ntk(one_scalar_per_sample, x, x)[:, :, 0, 0], rtol=1e-12, atol=1e-12)


def test_float_inputs_to_an_embedding_model_are_refused_with_a_hint():
    embedding = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(12, 2)).double()
    with pytest.raises(ValueError, match="an Embedding takes integer indices"):
        nk.empirical_ntk(embedding, torch.randn(5, 3, dtype=torch.float64))


class _CenteredBatch(nn.Module):
    """Each output depends on the whole batch (its mean)."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(3, 1).double()

    def forward(self, x):
        return self.layer(x - x.mean(0))


class _SummedBatch(_CenteredBatch):
    def forward(self, x):
        return self.layer(x).sum(0, keepdim=True)


@pytest.mark.parametrize("model, match", [(_CenteredBatch, "depend on other samples"),
                                          (_SummedBatch, "one output row per sample")])
def test_x2_and_single_sample_x1_are_probed_too(model, match):
    """Before: only x1 was probed, and a one-sample x1 not for mixing: the centred model gave
    [[1, 1, 1, 1]] silently and the summed one a raw reshape error."""
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        nk.empirical_ntk(model(), x[:1], x)
    assert nk.empirical_ntk(nn.Linear(3, 2).double(), x[:1], x).shape == (1, 4)


def test_out_of_range_embedding_indices_are_refused_clearly():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(12, 2)).double()
    with pytest.raises(ValueError, match=r"indices must lie in \[0, num_embeddings\)"):
        nk.empirical_ntk(model, torch.randint(0, 10, (3, 3)) + 20)


def test_narrow_integer_indices_are_looked_up_as_the_same_indices():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(12, 2)).double()
    tokens = torch.randint(0, 10, (3, 3), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(nk.empirical_ntk(model, tokens.to(torch.uint8)),
                               nk.empirical_ntk(model, tokens), rtol=0, atol=0)
