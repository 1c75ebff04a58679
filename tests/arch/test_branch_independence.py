"""Issue 29: `FanInSum` / `FanInProd` add / multiply the branches' kernels, which is the
network's kernel only for independent branches (neural-tangents assumes it without checking).

At infinite width a branch that passes through a Dense/Conv/attention of its own after the
`FanOut` is independent of the others, unit by unit (`KernelState.fresh`); the merge is exact
when at most one branch is not, and refused otherwise, naming the layer.  Before, `Dense,
FanOut(2), parallel(Identity(), Identity()), FanInSum()` gave 2K where the network (z + z = 2z)
gives 4K.  The finite modules were right; only the kernels were wrong.

Monte Carlo checks: z = (MC mean - kernel) / MC standard error per entry of the upper triangle;
|z| < Z_MAX, fixed beforehand (two-sided 1e-3 Bonferroni over the entries of a test, with the t
distribution's heavier tails for 30 samples).  The refused networks have one hidden layer, a
Gaussian unit z mapped by an elementwise f (e.g. z relu(z)), so the Monte Carlo mean is exactly
the kernel of `Elementwise(f)` (by quadrature, an independent route), and far from the old one.
"""
import pytest
import torch

import ntklab as nk

X = torch.randn(3, 4, generator=torch.Generator().manual_seed(291), dtype=torch.float64)
Z_MAX = 5.0
WIDTH = 1024


def dense(width=WIDTH):
    """A wide Dense layer (one hidden layer: no finite-width bias in the Monte Carlo mean)."""
    return nk.Dense(width, W_std=1.3, b_std=0.2)


def z_scores(net, get, kernel, n_samples=30):
    """Per-entry z of the Monte Carlo mean of `net`'s finite networks against `kernel`."""
    mc = nk.monte_carlo_kernel(net, X, n_samples=n_samples, get=get, progress=False)
    rows, cols = torch.triu_indices(len(X), len(X))
    return ((getattr(mc, get) - kernel) / getattr(mc, f"{get}_standard_error"))[rows, cols]


def old_kernel(merge, branches):
    """The kernel computed before: the branches' kernels added (FanInSum) or multiplied
    (FanInProd), as if independent."""
    kernels = [nk.serial(dense(), branch).kernel(X, get="nngp") for branch in branches]
    return sum(kernels) if merge is nk.FanInSum else kernels[0] * kernels[1]


SHARED = {   # branches that are functions of the same units z, and the unit map f(z) they merge to
    "identity+identity": (nk.FanInSum, (nk.Identity(), nk.Identity()), lambda z: 2 * z),
    "identity*relu": (nk.FanInProd, (nk.Identity(), nk.Relu()), lambda z: z * torch.relu(z)),
    "relu*erf": (nk.FanInProd, (nk.Relu(), nk.Erf()), lambda z: torch.relu(z) * torch.erf(z)),
}


@pytest.mark.parametrize("name", list(SHARED))
def test_dependent_branches_are_refused_and_the_old_kernel_was_not_the_networks(name):
    merge, branches, unit_map = SHARED[name]
    net = nk.serial(dense(), nk.FanOut(2), nk.parallel(*branches), merge())
    for body in (net, nk.serial(net, nk.Dense(1))):
        with pytest.raises(ValueError, match=rf"serial\(\.\.\.\) layer 3, {merge.__name__}\(\): branches 0 "
                                             r"and 1 of the parallel before it are not independent.*put a "
                                             r"Dense/Conv at the end of all but one branch"):
            body.kernel(X)
    # the finite network's NNGP is the kernel of z -> f(z) (quadrature), not the old kernel
    truth = nk.serial(dense(), nk.Elementwise(unit_map, n_points=512)).kernel(X, get="nngp")
    assert float(z_scores(net, "nngp", truth).abs().max()) < Z_MAX
    assert float(z_scores(net, "nngp", old_kernel(merge, branches)).abs().max()) > 2 * Z_MAX


def test_identity_branches_of_a_nested_merge_are_refused():
    """(z + u) + z with u = Dense(z): the inner sum is exact (u is fresh), but the outer one adds
    two functions of z: 4K + K_u, not 2K + K_u (the old kernel)."""
    inner = nk.serial(nk.FanOut(2), nk.parallel(nk.Identity(), dense()), nk.FanInSum())
    net = nk.serial(dense(), nk.FanOut(2), nk.parallel(inner, nk.Identity()), nk.FanInSum())
    with pytest.raises(ValueError, match=r"layer 3, FanInSum\(\): branches 0 and 1 of the parallel"):
        net.kernel(X)
    k, k_u = nk.serial(dense()).kernel(X, get="nngp"), nk.serial(dense(), dense()).kernel(X, get="nngp")
    assert float(z_scores(net, "nngp", 4 * k + k_u).abs().max()) < Z_MAX
    assert float(z_scores(net, "nngp", 2 * k + k_u).abs().max()) > 2 * Z_MAX


def residual(*branch):
    return nk.serial(nk.FanOut(2), nk.parallel(nk.serial(*branch), nk.Identity()), nk.FanInSum())


def narrow():
    return dense(256)


ACCEPTED = {
    # the residual block: the Identity branch and one ending in its own Dense
    "residual": nk.serial(narrow(), residual(nk.Relu(), narrow())),
    # a residual block inside a branch whose input is fresh: (u + W relu(u)) + z, u = Dense(z)
    "nested residual": nk.serial(narrow(), nk.FanOut(2), nk.parallel(
        nk.serial(narrow(), residual(nk.Relu(), narrow())), nk.Identity()), nk.FanInSum()),
    # independent branches need not be Gaussian for a product: relu(z) relu(W relu(z))
    "relu*relu(dense)": nk.serial(narrow(), nk.FanOut(2), nk.parallel(
        nk.Relu(), nk.serial(narrow(), nk.Relu())), nk.FanInProd()),
    "identity*dense": nk.serial(narrow(), nk.FanOut(2), nk.parallel(nk.Identity(), narrow()), nk.FanInProd()),
    # concatenation never needs independence (each unit is one branch's)
    "concat of identities": nk.serial(narrow(), nk.FanOut(2), nk.parallel(nk.Identity(), nk.Identity()),
                                      nk.FanInConcat(), narrow(), nk.Relu()),
}


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_independent_branches_are_accepted_and_match_monte_carlo(name):
    """Two hidden layers or more: the finite-width bias is O(1/width), below the Monte Carlo
    error at width 256 with 30 samples."""
    net = ACCEPTED[name]
    for get, body in (("nngp", net), ("ntk", nk.serial(net, nk.Dense(1)))):
        z = z_scores(body, get, body.kernel(X, get=get))
        assert float(z.abs().max()) < Z_MAX, (name, get, z)


def test_fresh_is_set_by_affine_layers_kept_by_others_and_cleared_by_fan_out():
    """The declared fact itself, through the layers' maps."""
    def state(*layers):
        return nk.serial(*layers).inputs_map(X, None, need_ntk=False, full=False)

    assert not state(nk.Identity()).fresh
    assert state(dense()).fresh and state(dense(), nk.LayerNorm(), nk.Relu()).fresh
    branches = state(dense(), nk.FanOut(2))
    assert [k.fresh for k in branches] == [False, False]
    assert [k.outer_fresh for k in branches] == [(True,), (True,)]
    # a residual block in a branch: z + u is a function of z, the input of the inner FanOut
    inner = state(dense(), nk.FanOut(2), nk.parallel(residual(nk.Relu(), dense()), dense()))
    assert [k.fresh for k in inner] == [False, True]
    assert [k.outer_fresh for k in inner] == [(True,), (True,)]
    # ... whose input was fresh: the merge is too (a function of fresh units and new weights)
    merged = state(dense(), nk.FanOut(2), nk.parallel(nk.serial(dense(), residual(nk.Relu(), dense())),
                                                       nk.Identity()))
    assert [k.fresh for k in merged] == [True, False]
    assert state(dense(), residual(nk.Relu(), dense())).outer_fresh == ()
