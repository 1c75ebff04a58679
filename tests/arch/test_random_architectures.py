"""Property test: every random architecture's kernel is its own finite network's.

A seeded generator composes Dense / Conv / ConvLocal / ConvTranspose (both parameterizations,
strides 1-3, SAME / VALID / CIRCULAR padding, 1-D on sequences, 2-D on images, 3-D on volumes),
activations, AvgPool / SumPool, GlobalAvgPool, Flatten, FanOut / parallel / FanInSum /
FanInProd / FanInConcat, Identity, LayerNorm and attention, with random hyperparameters and
input shapes (vectors, token sequences [N, L, C], NCHW images, NCDHW volumes); a few of its
architectures are deliberately ones without an exact kernel (attention without linear scaling,
an activation of a non-Gaussian input, sums and products of branches that are not independent).  For each architecture:

* refused (a ValueError from `.kernel`): the message must name the layer's position;
* accepted: the NNGP of the body (read out by `Flatten`, the empirical NNGP averaging over all
  its features) and the NTK of the body with a `Dense(1)` readout must agree with the Monte
  Carlo average over the finite networks (`net.module`) within sampling error.

The finite-width bias of the Monte Carlo mean is O(1/width) (deep networks: the layers see
their inputs' empirical kernels), so the estimate is Richardson's extrapolation of two widths,
2 m(2n) - m(n) (bias O(1/n^2)), whose standard error combines both (Welch-Satterthwaite
degrees of freedom).  Each entry (upper triangle) gives a t statistic; its two-sided p-value is
compared with ALPHA / (number of entries tested) (Bonferroni: family-wise false alarm < 1e-3),
and `z_eq`, the normal quantile of the same p-value, should have RMS about 1 (asserted below
RMS_MAX over the slow suite).  Tolerances are fixed here, before the run.  Negative control:
the kernels scaled by 1.05 must fail the same test.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import pytest
import torch
from scipy import stats

import ntklab as nk

ALPHA = 1e-3          # family-wise false-alarm rate of the Bonferroni test
RMS_MAX = 1.3         # RMS of z_eq over the slow suite (null: 1; entries are correlated)
N_SAMPLES = 16        # networks per width
WIDTH = 96            # n; Richardson with n and 2n
N_INPUTS = 3

ACTIVATIONS = [
    lambda r: nk.Relu(), lambda r: nk.LeakyRelu(r.uniform(0, 0.3)),
    lambda r: nk.ABRelu(r.uniform(-1, 0), r.uniform(0.5, 1.5)), lambda r: nk.Abs(),
    lambda r: nk.Erf(r.uniform(0.5, 1.5), r.uniform(0.5, 1.5), r.uniform(-0.3, 0.3)),
    lambda r: nk.Sigmoid_like(), lambda r: nk.Gelu(), lambda r: nk.Tanh(),
    lambda r: nk.Sin(1.0, r.uniform(0.5, 1.5), r.uniform(-1, 1)), lambda r: nk.Cos(1.0, r.uniform(0.5, 1.5)),
    lambda r: nk.Rbf(r.uniform(0.3, 1.0)), lambda r: nk.Gaussian(1.0, -1.0),
    lambda r: nk.Exp(0.5, r.uniform(0.1, 0.4)), lambda r: nk.Monomial(r.choice([1, 2, 3])),
    lambda r: nk.RectifiedMonomial(r.choice([1, 2])), lambda r: nk.Polynomial([0.1, -0.5, 0.3]),
    lambda r: nk.Sign(), lambda r: nk.Sigmoid(), lambda r: nk.Hermite(r.choice([1, 2, 3])),
]



@dataclass
class Body:
    """A network being generated: its layers (functions of the width n) and what the next layer sees."""
    kind: str
    spatial: tuple
    layers: list
    gaussian: bool
    factor: int

# affine layers with a window; mostly Conv, whose empirical NTK has a fast structured path
SPATIAL_LAYERS = (nk.Conv, nk.Conv, nk.Conv, nk.ConvLocal, nk.ConvTranspose)


class Generator:
    """Random architectures as functions of the width n (so that two widths give the same
    architecture), tracking the representation's kind (vec, seq, img, vol), spatial shape and
    whether it is Gaussian (what an activation, LayerNorm or FanInSum needs)."""

    def __init__(self, seed: int):
        self.r = random.Random(seed)

    def stds(self):
        r = self.r
        return dict(W_std=round(r.uniform(0.8, 1.6), 2),
                    b_std=r.choice([None, 0.0, round(r.uniform(0.1, 0.5), 2)]),
                    parameterization=r.choice(["ntk", "standard"]))

    def affine(self, kind, spatial, factor=1, same=False):
        """A Dense or a window layer (Conv, ConvLocal, ConvTranspose) of `factor` n outputs
        (random filter, strides and padding; `same`: keeps the spatial shape), and its output's
        spatial shape.  On sequences, Dense acts on each token."""
        r = self.r
        s = self.stds()
        if kind == "vec" or (kind == "seq" and r.random() < 0.5):
            return (lambda n: nk.Dense(factor * n, **s)), spatial
        layer = r.choice(SPATIAL_LAYERS)
        filt = tuple(r.choice([1, 2, 3] if len(spatial) < 3 else [1, 2]) for _ in spatial)   # volumes: fewer weights
        strides = tuple(1 if same else r.choice([1, 1, 2, 3]) for _ in spatial)
        padding = "SAME" if same else r.choice(["SAME", "VALID", "CIRCULAR"])
        if layer is nk.ConvTranspose:   # upsamples by the strides: at most 16 positions, as 4x4 images
            upsample = tuple(min(st, 2) for st in strides)
            for strides in (upsample, (1,) * len(spatial)):   # the first that fits
                out = tuple(h * st + (max(f - st, 0) if padding == "VALID" else 0)
                            for h, f, st in zip(spatial, filt, strides, strict=True))
                if math.prod(out) <= 16:
                    break
            else:
                padding = "SAME"
                out = tuple(spatial)
            return (lambda n: nk.ConvTranspose(factor * n, filt, strides, padding, **s)), out
        if padding != "SAME" and any(f > h for f, h in zip(filt, spatial, strict=True)):
            padding = "SAME"
        out = tuple(-(-h // st) if padding != "VALID" else (h - f) // st + 1
                    for h, f, st in zip(spatial, filt, strides, strict=True))
        if layer is nk.ConvLocal and math.prod(out) > 6:   # weights per position: keep them few
            layer = nk.Conv
        return (lambda n: layer(factor * n, filt, strides, padding, **s)), out

    def architecture(self):
        """(kind of input, input shape, body as a function of the width n)."""
        r = self.r
        kind = r.choice(["vec", "img", "img", "seq", "vol"])
        shape = {"vec": (r.choice([3, 5]),), "img": (r.choice([1, 2]), r.choice([3, 4]), r.choice([3, 4])),
                 "seq": (r.choice([2, 3, 4]), r.choice([2, 3])),
                 "vol": (r.choice([1, 2]), 2, r.choice([2, 3]), r.choice([2, 3]))}[kind]
        spatial = shape[1:] if kind in ("img", "vol") else shape[:1] if kind == "seq" else ()
        make, spatial = self.affine(kind, spatial)
        body = Body(kind, spatial, [make], gaussian=True, factor=1)    # the width is factor * n
        for _ in range(r.choice([1, 2, 3])):
            options = ["act", "act", "affine", "identity", "concat", "prod"]
            if body.gaussian:
                options += ["layernorm", "residual"] + (["shared"] if r.random() < 0.3 else [])
            if body.kind in ("img", "vol"):
                options += ["pool", "flatten", "gap"]
            if body.kind == "seq":
                options += ["attention", "pool", "flatten", "gap"]
            choice = r.choice(options)
            adders = {"concat": self.add_branches, "prod": self.add_branches, "residual": self.add_branches,
                      "flatten": self.add_readout, "gap": self.add_readout}
            adders.get(choice, getattr(self, f"add_{choice}", None))(body, choice)
        return kind, shape, lambda n: nk.serial(*(make(n) for make in body.layers))

    def add_act(self, body, choice):
        r = self.r
        if not body.gaussian and r.random() < 0.9:   # else refused: a non-Gaussian input
            make, body.spatial = self.affine(body.kind, body.spatial)
            body.layers.append(make)
            body.factor = 1
        act = r.choice(ACTIVATIONS)(r)
        body.layers.append(lambda n, act=act: act)
        body.gaussian = False

    def add_affine(self, body, choice):
        make, body.spatial = self.affine(body.kind, body.spatial)
        body.layers.append(make)
        body.gaussian, body.factor = True, 1

    def add_identity(self, body, choice):
        body.layers.append(lambda n: nk.Identity())

    def add_layernorm(self, body, choice):
        body.layers.append(lambda n, axis=1 if body.kind in ("img", "vol") else -1: nk.LayerNorm(axis=axis))

    def add_branches(self, body, choice):
        r = self.r
        a = self.affine(body.kind, body.spatial, body.factor if choice == "residual" else 1, same=True)[0]
        b = self.affine(body.kind, body.spatial, 2 if choice == "concat" else 1, same=True)[0]
        if choice == "residual":   # the Identity branch: the input is Gaussian
            act = r.choice(ACTIVATIONS)(r)
            branches = lambda n, a=a, act=act: (nk.serial(act, a(n)), nk.Identity())  # noqa: E731
            merge, body.gaussian = nk.FanInSum, True
        else:                      # independent affine branches; concat: widths n and 2n
            branches = lambda n, a=a, b=b: (a(n), b(n))  # noqa: E731
            merge, body.gaussian = (nk.FanInProd, False) if choice == "prod" else (nk.FanInConcat, False)
            body.factor = 1 if choice == "prod" else 3
        body.layers.append(lambda n, br=branches, m=merge: nk.serial(nk.FanOut(2), nk.parallel(*br(n)), m()))

    def add_shared(self, body, choice):   # branches of the same units (no Dense of their own): refused
        r = self.r
        act = r.choice(ACTIVATIONS)(r)
        merge = r.choice([nk.FanInSum, nk.FanInProd])
        body.layers.append(lambda n, act=act, m=merge: nk.serial(
            nk.FanOut(2), nk.parallel(nk.Identity(), nk.Identity() if m is nk.FanInSum else act), m()))
        body.gaussian = merge is nk.FanInSum

    def add_pool(self, body, choice):
        r = self.r
        window = tuple(r.choice([1, 2]) for _ in body.spatial)
        strides = tuple(r.choice([1, 2]) for _ in body.spatial)
        padding = r.choice(["SAME", "VALID"])
        if r.random() < 0.5:
            body.layers.append(lambda n, w=window, st=strides, p=padding: nk.SumPool(w, st, p))
        else:
            edges = r.random() < 0.5
            body.layers.append(lambda n, w=window, st=strides, p=padding, e=edges:
                               nk.AvgPool(w, st, p, normalize_edges=e))
        body.spatial = tuple(-(-h // st) if padding == "SAME" else (h - w) // st + 1
                             for h, w, st in zip(body.spatial, window, strides, strict=True))

    def add_attention(self, body, choice):
        r = self.r
        mech = r.choice(["SOFTMAX", "IDENTITY", "ABS", "RELU"])
        scaling = r.random() < 0.9    # linear_scaling=False has no kernel but for IDENTITY: refused
        if not scaling and mech == "IDENTITY":   # its kernel is the limit of infinitely many heads too
            mech = r.choice(["SOFTMAX", "ABS", "RELU"])   # (checked in test_graph_attention_monte_carlo)
        qk, ov, b = (round(r.uniform(0.5, 1.5), 2) for _ in range(3))
        body.layers.append(lambda n, m=mech, sc=scaling, qk=qk, ov=ov, b=b: nk.GlobalSelfAttention(
            n, n, n, 2, linear_scaling=sc, W_key_std=qk, W_value_std=ov, b_std=b, attention_mechanism=m))
        body.gaussian, body.factor = True, 1

    def add_readout(self, body, choice):
        body.layers.append(lambda n, c=choice: nk.Flatten() if c == "flatten" else nk.GlobalAvgPool())
        if choice == "flatten":
            body.factor *= math.prod(body.spatial)
        body.kind, body.spatial = "vec", ()


def inputs(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N_INPUTS, *shape, generator=g, dtype=torch.float64)


def richardson(net_of_width, x, get, seed):
    """Per entry: (Richardson's estimate 2 d(2n) - d(n) of the deviation d = MC mean - kernel at
    width n, 2n (the standard parameterization's NTK itself depends on the width), its standard
    error, its Welch-Satterthwaite degrees of freedom, the same kernel combination
    2 K(2n) - K(n) for the scaled negative control)."""
    deviations, variances, kernels = [], [], []
    for width in (WIDTH, 2 * WIDTH):
        net = net_of_width(width)
        mc = nk.monte_carlo_kernel(net, x, n_samples=N_SAMPLES, get=get, seed=seed * 1000, progress=False)
        kernels.append(net.kernel(x, get=get))
        deviations.append(getattr(mc, get) - kernels[-1])
        variances.append(getattr(mc, f"{get}_standard_error") ** 2)
    (d1, d2), (v1, v2), (k1, k2) = deviations, variances, kernels
    var = 4 * v2 + v1
    dof = var ** 2 / (((4 * v2) ** 2 + v1 ** 2) / (N_SAMPLES - 1)).clamp_min(1e-300)
    return 2 * d2 - d1, var.sqrt(), dof, 2 * k2 - k1


def check(seed: int) -> dict:
    """Run one random architecture: {"refused": message} or the per-entry t statistics of the
    kernel and of the kernel scaled by 1.05 (negative control)."""
    kind, shape, body = Generator(seed).architecture()
    x = inputs(shape, seed)
    nngp_net = lambda n: nk.serial(body(n), nk.Flatten())               # noqa: E731
    ntk_net = lambda n: nk.serial(body(n), nk.Flatten(), nk.Dense(1))    # noqa: E731
    arch = repr(ntk_net(WIDTH))
    try:
        nngp_net(WIDTH).kernel(x, get="nngp"), ntk_net(WIDTH).kernel(x, get="ntk")
    except ValueError as err:
        return {"arch": arch, "refused": str(err)}
    rows, cols = torch.triu_indices(N_INPUTS, N_INPUTS)
    result = {"t": [], "t_control": [], "dof": []}
    for get, net in (("nngp", nngp_net), ("ntk", ntk_net)):
        deviation, error, dof, kernel = richardson(net, x, get, seed)
        keep = error[rows, cols] > 0     # e.g. Sign's self-covariance 1: no spread, exact
        for key, shift in (("t", 0.0), ("t_control", 0.05)):   # control: the kernel x 1.05
            result[key].append(((deviation - shift * kernel) / error)[rows, cols][keep])
        result["dof"].append(dof[rows, cols][keep])
    return {"arch": arch, **{key: torch.cat(value) for key, value in result.items()}}


def equivalent_normal(t: torch.Tensor, dof: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(two-sided p-values of t statistics, the normal quantiles with the same p-values)."""
    p = torch.from_numpy(2 * stats.t.sf(t.abs().numpy(), dof.numpy())).clamp_min(1e-300)
    return p, torch.from_numpy(stats.norm.isf(p.numpy() / 2))


def run(seeds) -> dict:
    accepted, refused = [], []
    for seed in seeds:
        outcome = check(seed)
        (refused if "refused" in outcome else accepted).append(outcome)
    t = torch.cat([a["t"] for a in accepted])
    control = torch.cat([a["t_control"] for a in accepted])
    dof = torch.cat([a["dof"] for a in accepted])
    p, z = equivalent_normal(t, dof)
    p_control, z_control = equivalent_normal(control, dof)
    worst = int(p.argmin())
    return dict(accepted=accepted, refused=refused, entries=len(t), threshold=ALPHA / len(t),
                p_min=float(p.min()), z_rms=float(z.pow(2).mean().sqrt()), z_worst=float(z[worst]),
                p_control_min=float(p_control.min()), z_control_rms=float(z_control.pow(2).mean().sqrt()))


def assert_refusals_name_the_layer(refused):
    for outcome in refused:
        assert "layer " in outcome["refused"] and "(" in outcome["refused"], outcome


FAST_SEEDS = [0, 1, 2, 3, 4, 5, 6, 7]


def test_random_architectures_fast():
    summary = run(FAST_SEEDS)
    assert_refusals_name_the_layer(summary["refused"])
    assert len(summary["accepted"]) >= 5, summary["refused"]
    assert summary["p_min"] > summary["threshold"], summary
    # negative control: 5 % off is detected (the largest deviation alone)
    assert summary["p_control_min"] < summary["threshold"], summary


@pytest.mark.slow
def test_random_architectures_slow():
    summary = run(range(100, 260))   # each architecture costs about 2x the 2-D ones: N-d windows
                                     # have no structured empirical NTK (kernels/structured.py)
    assert_refusals_name_the_layer(summary["refused"])
    print({k: v for k, v in summary.items() if k not in ("accepted", "refused")},
          len(summary["accepted"]), len(summary["refused"]))
    assert summary["p_min"] > summary["threshold"], summary
    assert summary["z_rms"] < RMS_MAX, summary
    assert summary["p_control_min"] < summary["threshold"] and summary["z_control_rms"] > RMS_MAX


def test_hermite_needs_unit_variance():
    """Dense(W_std=1.5) then Hermite(2), found by this property test: one hidden layer, so the
    Monte Carlo mean is exactly the kernel.  neural-tangents' unit-variance formula cov^n gave
    17.9 on the diagonal against the network's 22.9 (z = 36); the exact dual (any variances)
    agrees."""
    x = inputs((4,), 0)
    net = nk.serial(nk.Dense(2048, W_std=1.5), nk.Hermite(2))
    mc = nk.monte_carlo_kernel(net, x, n_samples=8, get="nngp", progress=False)
    z = (mc.nngp - net.kernel(x, get="nngp")) / mc.nngp_standard_error
    assert float(z.abs().max()) < 6
