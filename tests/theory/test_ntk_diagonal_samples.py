"""`ntk_diagonal_samples`: exact samples of a finite MLP's Θ̂(x, x) at one input, against explicit
networks (nk's own modules, the NTK from autograd over every parameter), with the assumptions of
its derivation checked on real networks and negative controls that the comparisons can fail."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

import ntklab as nk
from ntklab.theory.finite_width import ntk_diagonal_samples

X = torch.ones(5, dtype=torch.float64)          # ||x||²/d = 1; only ||x|| enters at one input


def explicit_diagonals(net, count: int, seed: int = 0) -> np.ndarray:
    """Θ̂(x, x) = Σ_θ (∂f/∂θ)² of `count` explicitly built networks (seeds seed, seed + 1, ...)."""
    out = np.empty(count)
    for s in range(count):
        model = net.module(len(X), seed=seed + s, dtype=torch.float64)
        grads = torch.autograd.grad(model(X[None]).sum(), list(model.parameters()))
        out[s] = sum(float((g ** 2).sum()) for g in grads)
    return out


def decoupled_relu(widths: list[int], count: int, seed: int) -> np.ndarray:
    """A wrong sampler (negative control): bias-free critical ReLU with the backward pass taken
    independent of the forward pass (vᵀδ drawn afresh instead of f / sqrt(q))."""
    rng = np.random.default_rng(seed)
    active = [rng.binomial(n, 0.5, count) for n in widths]
    c = [2 * rng.standard_gamma(k / 2) for k in active]
    q = np.prod([2 * ci / n for ci, n in zip(c, widths, strict=True)], axis=0)
    t, total = np.ones(count), np.ones(count)
    with np.errstate(divide="ignore", invalid="ignore"):
        for ci, k in zip(reversed(c), reversed(active), strict=True):
            t = t * 2 * rng.standard_gamma(k / 2) / ci
            total += t
        return np.where(np.all([k > 0 for k in active], 0), q * total, 0.0)


def agree(sample: np.ndarray, reference: np.ndarray) -> bool:
    """Same law, judged before the run: KS p > 1e-3 and the means within 4 standard errors."""
    gap = sample.mean() - reference.mean()
    se = math.hypot(sample.std() / math.sqrt(len(sample)), reference.std() / math.sqrt(len(reference)))
    return stats.ks_2samp(sample, reference).pvalue > 1e-3 and abs(gap) < 4 * se


RELU = nk.mlp(3, 4, W_std=math.sqrt(2))                                  # L/n = 3/4: far from Gaussian


def test_the_two_methods_agree_and_a_different_width_is_told_apart():
    """"chi-square" (O(L)) and "vectors" (O(nL)) are two derivations of the same law for a bias-free
    ReLU net; the same check separates widths 4 and 5 (negative control)."""
    chi = ntk_diagonal_samples(RELU, X, 40_000, seed=1, method="chi-square").numpy()
    vectors = ntk_diagonal_samples(RELU, X, 40_000, seed=2, method="vectors").numpy()
    assert agree(chi, vectors)
    wider = ntk_diagonal_samples(nk.mlp(3, 5, W_std=math.sqrt(2)), X, 40_000, seed=3).numpy()
    assert not agree(wider, vectors)


def test_euler_identity_of_bias_free_relu_and_its_failure_with_biases():
    """The "chi-square" method's one coupling: z^(ℓ)·δ^(ℓ) = f at every layer of a bias-free ReLU
    net (degree-1 homogeneity), checked by autograd on a real network; with biases it fails,
    which is why that method refuses them."""
    for b_std, holds in ((None, True), (0.5, False)):
        model = nk.mlp(3, 7, W_std=math.sqrt(2), b_std=b_std).module(len(X), seed=4, dtype=torch.float64)
        preactivations = []

        def keep(module, inputs, output, preactivations=preactivations):
            output.retain_grad()
            preactivations.append(output)

        hooks = [m.register_forward_hook(keep) for m in model.modules() if type(m).__name__ == "DenseModule"]
        f = model(X[None]).sum()
        f.backward()
        for hook in hooks:
            hook.remove()
        products = torch.stack([(z * z.grad).sum() for z in preactivations])
        assert torch.allclose(products, f.detach().expand(len(products)), rtol=1e-10) == holds


def test_matches_explicit_relu_networks_and_rejects_a_decoupled_sampler():
    """300 explicit ReLU networks (L = 3, n = 4) against 40 000 samples; the sampler that takes the
    backward pass independent of the forward pass fails the same check (negative control)."""
    explicit = explicit_diagonals(RELU, 300)
    assert agree(ntk_diagonal_samples(RELU, X, 40_000, seed=5).numpy(), explicit)
    assert not agree(decoupled_relu([4, 4, 4], 40_000, seed=6), explicit)


@pytest.mark.slow
def test_matches_explicit_networks_with_biases_and_tanh():
    """2000 explicit networks each: critical ReLU (both methods), tanh with biases off
    criticality, and ReLU with biases ("vectors"): mean, variance (within 4 s.e. from the fourth
    moment) and KS against 10⁵ samples; the decoupled sampler is rejected at 2000 networks."""
    cases = [(RELU, ("chi-square", "vectors")),
             (nk.mlp(2, 5, W_std=1.3, b_std=0.4, activation=nk.Tanh()), ("vectors",)),
             (nk.mlp(2, 6, W_std=1.2, b_std=0.7), ("vectors",))]
    references = []
    for net, methods in cases:
        explicit = explicit_diagonals(net, 2000, seed=10_000)
        references.append(explicit)
        for method in methods:
            sample = ntk_diagonal_samples(net, X, 100_000, seed=7, method=method).numpy()
            assert agree(sample, explicit), (net, method)
            var_se = math.sqrt(((explicit - explicit.mean()) ** 4).mean() / len(explicit))
            assert abs(sample.var() - explicit.var()) < 4 * var_se, (net, method)
    assert not agree(decoupled_relu([4, 4, 4], 100_000, seed=8), references[0])


def test_refuses_what_it_does_not_sample():
    with pytest.raises(ValueError, match="one finite input"):
        ntk_diagonal_samples(RELU, torch.ones(2, 5), 10)
    with pytest.raises(ValueError, match="one output"):
        ntk_diagonal_samples(nk.mlp(2, 4, out=3), X, 10)
    with pytest.raises(ValueError, match="method='chi-square' needs ReLU"):
        ntk_diagonal_samples(nk.mlp(2, 4, activation=nk.Tanh()), X, 10, method="chi-square")
    with pytest.raises(ValueError, match="method must be"):
        ntk_diagonal_samples(RELU, X, 10, method="exact")
    with pytest.raises(ValueError, match="count"):
        ntk_diagonal_samples(RELU, X, 0)
    with pytest.raises(ValueError, match="MLP"):
        ntk_diagonal_samples(nk.serial(nk.Dense(3), nk.Relu(), nk.Relu(), nk.Dense(1)), X, 10)
