"""Differential test of random architectures: ntklab against neural-tangents 0.6.5.

A seeded generator composes the layers of issue 29 (Conv / AvgPool / SumPool / GlobalAvgPool /
Flatten in 1, 2 and 3 spatial dimensions, ConvTranspose, ConvLocal, `repeat`, Dense per pixel,
Dropout, Index/Slice, ImageResize, Gabor, Gelu(approximate), Aggregate, DotGeneral,
GlobalSelfAttention with linear_scaling=False / positional embeddings, masked inputs) with the
older ones (Dense, closed-form activations, FanOut / parallel / FanInSum / FanInConcat,
LayerNorm), with random hyperparameters and small random shapes.  Each architecture is two
Python expressions of the same network, one in neural-tangents' `stax` names and layouts
(channels last: NWC sequences, NHWC images, NDHWC volumes), one in ntklab's (sequences
`[N, L, C]`, NCHW images, NCDHW volumes); `WIDTH` in them is the hidden width.

neural-tangents runs in a subprocess of `--nt-python` (float64, `jax_enable_x64`; all
architectures in one process), ntklab in this one.  Per architecture: both accepted and agree
(largest |difference| relative to the largest entry <= 1e-10 for x1 against x2 and off the
diagonal of x1 against itself, <= 1e-7 on that diagonal, where neural-tangents' arccos
rounding is known: tests/data/neural_tangents/README.md), disagree (both printed), or refused by
one side (its message printed).  A disagreement is first checked against the known
neural-tangents differences (docs/migration.md, tests/arch/test_stax_misc.py,
benchmarks/make_reference_conv.py): each architecture carries `known`, the ntklab expression of
the network neural-tangents computes instead (Gelu(approximate=True) as the exact GELU;
ImageResize after a Conv with the shape transposed; ConvLocal after a Conv with filter and
strides reversed); when ntklab's kernel of that network equals neural-tangents' the outcome is
`known`.  With `--monte-carlo` any other disagreement is checked against the Monte Carlo average
of ntklab's finite network (`net.module`) at width 512: the largest |z| of each side is printed.

    OMP_NUM_THREADS=1 nice python benchmarks/differential_nt.py --n 300 --seed 0
    python benchmarks/differential_nt.py --only 17 --verbose --monte-carlo   # one architecture
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

NT_PYTHON = os.environ.get("NT_PYTHON", "/tmp/ntvenv/bin/python")
OFF_DIAGONAL_TOL, DIAGONAL_TOL = 1e-10, 1e-7
N1, N2 = 3, 2

# ---------------------------------------------------------------------------------------------
# the generator


@dataclass
class Arch:
    """One architecture: both expressions (`WIDTH` = hidden width), its inputs' kind and shape
    (neural-tangents' layout, one sample), mask constant and graph spec."""
    index: int
    kind: str
    shape: tuple
    nt: list = field(default_factory=list)
    nk: list = field(default_factory=list)
    known: list = field(default_factory=list)     # ntklab expression of what nt computes instead
    mask: float | None = None
    pattern: tuple | None = None                  # the graph's node axes (nt layout) or None

    def expressions(self, width: int = 8) -> tuple[str, str, str | None]:
        nt = "serial(" + ", ".join(self.nt) + ")"
        nk = "serial(" + ", ".join(self.nk) + ")"
        known = "serial(" + ", ".join(self.known) + ")" if self.known != self.nk else None
        return tuple(None if s is None else s.replace("WIDTH", str(width)) for s in (nt, nk, known))


def call(name: str, *args, **kwargs) -> str:
    parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
    return f"{name}({', '.join(parts)})"


class Generator:
    """Random architectures, tracking the representation's kind (vec, seq, img, vol), its
    spatial shape (the same order in both layouts), whether it is Gaussian and, for images,
    where neural-tangents' channel axis is (after DotGeneral only a readout follows)."""

    def __init__(self, seed: int):
        self.r = random.Random(seed)

    # -- helpers -------------------------------------------------------------------------------
    def add(self, a: Arch, nt: str, nk: str | None = None, known: str | None = None):
        a.nt.append(nt)
        a.nk.append(nt if nk is None else nk)
        a.known.append(a.nk[-1] if known is None else known)

    def stds(self) -> dict:
        r = self.r
        out = dict(W_std=round(r.uniform(0.7, 1.8), 2))
        b = r.choice([None, 0.0, round(r.uniform(0.05, 0.6), 2)])
        if b is not None:
            out["b_std"] = b
        if r.random() < 0.3:
            out["parameterization"] = "standard"
        return out

    def affine(self, a: Arch, st: dict, same: bool = False):
        """Dense (per position on sequences/images/volumes) or a window layer."""
        r = self.r
        if st["kind"] == "vec" or st.get("masked") or r.random() < 0.25:
            self.add(a, call("Dense", "WIDTH", **self.stds()).replace("'WIDTH'", "WIDTH"))
            st["gaussian"] = True
            return
        layer = r.choice(["Conv", "Conv", "ConvTranspose", "ConvLocal"])
        sp = st["spatial"]
        d = len(sp)
        filt = tuple(r.choice([1, 2, 3] if d < 3 else [1, 2]) for _ in sp)
        strides = tuple(1 if same else r.choice([1, 1, 2]) for _ in sp)
        padding = "SAME" if same else r.choice(["SAME", "VALID", "CIRCULAR"])
        if padding != "SAME" and any(f > h for f, h in zip(filt, sp, strict=True)):
            padding = "SAME"
        if layer == "ConvTranspose":
            out = tuple(h * s + (max(f - s, 0) if padding == "VALID" else 0)
                        for h, f, s in zip(sp, filt, strides, strict=True))
            if math.prod(out) > 30 or (same and out != sp):
                layer = "Conv"
        if layer != "ConvTranspose":
            out = tuple(-(-h // s) if padding != "VALID" else (h - f) // s + 1
                        for h, f, s in zip(sp, filt, strides, strict=True))
        if layer == "ConvLocal" and math.prod(out) > 20:
            layer = "Conv"
        stds = self.stds()
        text = call(layer, "WIDTH", filt, strides=strides, padding=padding, **stds).replace("'WIDTH'", "WIDTH")
        known = None
        asymmetric = d == 2 and (filt[0] != filt[1] or strides[0] != strides[1])
        if layer == "ConvLocal" and asymmetric and st.get("conv_before"):
            # neural-tangents swaps ConvLocal's axes after a shared Conv (docs/migration.md)
            known = call(layer, "WIDTH", filt[::-1], strides=strides[::-1], padding=padding,
                         **stds).replace("'WIDTH'", "WIDTH")
        self.add(a, text, known=known)
        if layer in ("Conv", "ConvTranspose"):   # neural-tangents' is_reversed kernels
            st["conv_before"] = True
        st["spatial"], st["gaussian"] = out, True

    def act(self) -> str:
        r = self.r
        u = lambda lo, hi: round(r.uniform(lo, hi), 2)  # noqa: E731
        return r.choice([
            lambda: "Relu()", lambda: call("LeakyRelu", u(0.0, 0.3)), lambda: call("ABRelu", u(-1, 0), u(0.5, 1.5)),
            lambda: "Abs()", lambda: call("Erf", u(0.5, 1.5), u(0.5, 1.5), u(-0.3, 0.3)), lambda: "Sigmoid_like()",
            lambda: "Gelu()", lambda: "Gelu(approximate=True)", lambda: "Gabor()",
            lambda: call("Sin", 1.0, u(0.5, 1.5), u(-1, 1)), lambda: call("Rbf", u(0.3, 1.0)),
            lambda: call("Gaussian", 1.0, -1.0), lambda: call("Exp", 0.5, u(0.1, 0.4)),
        ])()

    # -- one architecture ----------------------------------------------------------------------
    def architecture(self, index: int) -> Arch:
        r = self.r
        kind = r.choice(["vec", "seq", "seq", "img", "img", "img", "vol"])
        shape = {"vec": (r.choice([3, 5]),),
                 "seq": (r.choice([3, 4, 5]), r.choice([2, 3])),
                 "img": (r.choice([3, 4, 5]), r.choice([3, 4, 5]), r.choice([1, 2])),
                 "vol": (r.choice([2, 3]), r.choice([2, 3]), r.choice([2, 3]), r.choice([1, 2]))}[kind]
        a = Arch(index, kind, shape)
        st = {"kind": kind, "spatial": shape[:-1], "gaussian": False, "conv_before": False}
        if kind in ("seq", "img") and r.random() < 0.1:
            a.mask = st["masked"] = -1.0   # ntklab takes masks through Dense, activations, LayerNorm, attention
        self.affine(a, st)
        for _ in range(r.choice([1, 2, 3, 4])):
            getattr(self, f"add_{r.choice(self.options(st))}")(a, st)
            if st.get("finished"):
                return a
        if st["kind"] != "vec":
            self.add_readout(a, st)
        if not st["gaussian"] or r.random() < 0.5:
            self.add(a, call("Dense", 1, **self.stds()))
        return a

    def options(self, st: dict) -> list[str]:
        """The layers that may come next (repeated names: likelier)."""
        options = ["act", "act", "affine", *(["pool"] if st["kind"] != "vec" else []), "dropout", "dot_scalar",
                   "repeat"]
        if st["gaussian"]:
            options += ["layernorm", "residual", "concat"]
        if st["kind"] in ("seq", "img"):
            options += ["index", "aggregate", "aggregate"]
        if st["kind"] == "seq":
            options += ["attention", "attention"]
        if st["kind"] == "img":
            options += ["resize", "dot_matrix"]
        if st["kind"] != "vec" and self.r.random() < 0.2:
            options += ["readout"]
        if st.get("masked"):
            options = [o for o in options if o in ("act", "affine", "layernorm", "residual", "attention", "readout")]
        return options

    # -- layers --------------------------------------------------------------------------------
    def add_act(self, a, st):
        if not st["gaussian"]:
            self.affine(a, st)
        act = self.act()
        self.add(a, act, known=act.replace("approximate=True", "approximate=False"))
        st["gaussian"] = False

    def add_affine(self, a, st):
        self.affine(a, st)

    def add_dropout(self, a, st):
        self.add(a, call("Dropout", round(self.r.uniform(0.3, 0.95), 2)))
        st["gaussian"] = False

    def add_dot_scalar(self, a, st):
        c = round(self.r.uniform(-2, 2), 2)
        self.add(a, f"DotGeneral(rhs={c})")

    def add_layernorm(self, a, st):
        nk_axis = 1 if st["kind"] in ("img", "vol") else -1
        self.add(a, "LayerNorm()", f"LayerNorm(axis={nk_axis})")
        st["gaussian"] = False

    def _same_affine(self, st) -> tuple[str, str, str]:
        """An affine layer that keeps the spatial shape: (nt, nk, known) text."""
        a = Arch(0, "", ())
        sub = dict(st)
        self.affine(a, sub, same=True)
        return a.nt[0], a.nk[0], a.known[0]

    def add_residual(self, a, st):
        nt1, nk1, kn1 = self._same_affine(st)
        act = self.act()
        self.add(a, f"FanOut(2), parallel(serial({act}, {nt1}), Identity()), FanInSum()",
                 f"FanOut(2), parallel(serial({act}, {nk1}), Identity()), FanInSum()",
                 f"FanOut(2), parallel(serial({act.replace('approximate=True', 'approximate=False')}, {kn1}), "
                 f"Identity()), FanInSum()")
        st["gaussian"] = True

    def add_concat(self, a, st):
        nt1, nk1, kn1 = self._same_affine(st)
        nt2, nk2, kn2 = (t.replace("WIDTH", "2 * WIDTH") for t in self._same_affine(st))
        nk_axis = {"vec": -1, "seq": -1, "img": 1, "vol": 1}[st["kind"]]
        self.add(a, f"FanOut(2), parallel({nt1}, {nt2}), FanInConcat()",
                 f"FanOut(2), parallel({nk1}, {nk2}), FanInConcat(axis={nk_axis})",
                 f"FanOut(2), parallel({kn1}, {kn2}), FanInConcat(axis={nk_axis})")
        st["gaussian"] = False

    def add_repeat(self, a, st):
        if not st["gaussian"]:
            self.affine(a, st)
        nt1, nk1, kn1 = self._same_affine(st)
        act = self.act()
        n = self.r.choice([1, 2, 3])
        self.add(a, f"repeat(serial({act}, {nt1}), {n})", f"repeat(serial({act}, {nk1}), {n})",
                 f"repeat(serial({act.replace('approximate=True', 'approximate=False')}, {kn1}), {n})")
        st["gaussian"] = True

    def add_pool(self, a, st):
        r = self.r
        sp = st["spatial"]
        window = tuple(r.choice([1, 2]) for _ in sp)
        strides = tuple(r.choice([1, 2]) for _ in sp)
        padding = r.choice(["SAME", "VALID"])
        if any(w > h for w, h in zip(window, sp, strict=True)):
            padding = "SAME"
        if r.random() < 0.5:
            self.add(a, call("SumPool", window, strides, padding))
        else:
            self.add(a, call("AvgPool", window, strides, padding, normalize_edges=r.random() < 0.5))
        st["spatial"] = tuple(-(-h // s) if padding == "SAME" else (h - w) // s + 1
                              for h, w, s in zip(sp, window, strides, strict=True))

    def add_index(self, a, st):
        r = self.r
        sp = st["spatial"]
        slices = []
        for h in sp:
            if r.random() < 0.4:
                slices.append(slice(None))
                continue
            step = r.choice([1, 2, -1, -2])
            start, stop = sorted(r.sample(range(h + 1), 2)) if h > 1 else (0, 1)
            if step < 0:
                start, stop = stop - 1, (start - 1 if start > 0 else None)
            slices.append(slice(start, stop, step))
        sizes = tuple(len(range(h)[s]) for h, s in zip(sp, slices, strict=True))
        if 0 in sizes:
            return
        text = lambda s: "Slice[" + ", ".join(  # noqa: E731
            ":" if x == slice(None) else f"{'' if x.start is None else x.start}:{'' if x.stop is None else x.stop}:"
            f"{x.step}" for x in s) + "]"
        if st["kind"] == "img":
            nt, nk = [slice(None), *slices, slice(None)], [slice(None), slice(None), *slices]
        else:
            nt = nk = [slice(None), *slices, slice(None)]
        self.add(a, f"Index({text(nt)})", f"Index({text(nk)})")
        st["spatial"] = sizes

    def add_resize(self, a, st):
        r = self.r
        shape = (r.choice([2, 3, 4, 5, 6]), r.choice([2, 3, 4, 5, 6]))
        method = r.choice(["linear", "nearest"])
        self.add(a, f"ImageResize((-1, {shape[0]}, {shape[1]}, -1), {method!r})",
                 f"ImageResize({shape}, {method!r})",
                 f"ImageResize({shape[::-1]}, {method!r})" if st["conv_before"] else None)
        st["spatial"] = shape

    def add_aggregate(self, a, st):
        if st["kind"] == "seq":
            axes_nt, axes_nk = (1,), None
        else:
            axes_nt = self.r.choice([(1, 2), (1,), (2,)])
            axes_nk = None if axes_nt == (1, 2) else axes_nt[0] + 1
        nodes = tuple(st["spatial"][ax - 1] for ax in axes_nt)
        if a.pattern is None:
            if tuple(st["spatial"]) != tuple(a.shape[:-1]):
                return                     # the graph is given on the input's positions
            a.pattern = axes_nt
        elif a.pattern != axes_nt or tuple(st["spatial"]) != tuple(a.shape[:-1]):
            return
        del nodes
        nt_axis = axes_nt if len(axes_nt) > 1 else axes_nt[0]
        self.add(a, f"Aggregate(aggregate_axis={nt_axis!r})", f"Aggregate(aggregate_axis={axes_nk!r})")

    def add_attention(self, a, st):
        r = self.r
        linear = r.random() < 0.6
        mech = "IDENTITY" if not linear and r.random() < 0.85 else r.choice(["SOFTMAX", "IDENTITY", "ABS", "RELU"])
        kw = dict(linear_scaling=linear, W_key_std=round(r.uniform(0.5, 1.5), 2),
                  W_value_std=round(r.uniform(0.5, 1.5), 2), W_query_std=round(r.uniform(0.5, 1.5), 2),
                  W_out_std=round(r.uniform(0.5, 1.5), 2), attention_mechanism=mech)
        if r.random() < 0.5:
            kw["b_std"] = round(r.uniform(0.05, 0.5), 2)
        emb = r.choice(["NONE", "NONE", "SUM", "CONCAT"])
        if emb != "NONE":
            kw["pos_emb_type"] = emb
            kw["pos_emb_p_norm"] = r.choice([1.0, 2.0])
            kw["W_pos_emb_std"] = round(r.uniform(0.5, 1.5), 2)
            kw["val_pos_emb"] = r.random() < 0.4
            if emb == "CONCAT":
                kw["n_chan_pos_emb"] = r.choice([4, 8])
        decay = r.choice([None, "exp", "inverse", "exp_half"]) if emb != "NONE" else None
        text = call("GlobalSelfAttention", "WIDTH", "WIDTH", "WIDTH", r.choice([1, 2]), **kw)
        text = text.replace("'WIDTH'", "WIDTH")
        if decay:
            text = text[:-1] + f", pos_emb_decay_fn=DECAY[{decay!r}])"
        if not st["gaussian"] or r.random() < 0.3:
            self.affine(a, st)
        self.add(a, text)
        st["gaussian"] = True

    def add_dot_matrix(self, a, st):
        """A constant matrix mixing one image axis, then (its output's axes differ between the
        layouts) straight to the global pooling readout."""
        r = self.r
        h, w = st["spatial"]
        k = r.choice([2, 3])
        rng = np.random.default_rng(r.randrange(1 << 30))
        form = r.choice(["rhs", "lhs", "batch"])
        if form == "rhs":    # x [.., W] . M [W, k]
            m = np.round(rng.standard_normal((w, k)), 3).tolist()
            nt = f"DotGeneral(rhs=np.array({m}), dimension_numbers=(((2,), (0,)), ((), ())))"
            nk = f"DotGeneral(rhs=torch.tensor({m}, dtype=torch.float64), dimension_numbers=(((3,), (0,)), ((), ())))"
            nt_axes = dict(batch_axis=0, channel_axis=2)
        elif form == "lhs":  # M [k, H] . x [N, H, ..]
            m = np.round(rng.standard_normal((k, h)), 3).tolist()
            nt = f"DotGeneral(lhs=np.array({m}), dimension_numbers=(((1,), (1,)), ((), ())))"
            nk = f"DotGeneral(lhs=torch.tensor({m}, dtype=torch.float64), dimension_numbers=(((1,), (2,)), ((), ())))"
            nt_axes = dict(batch_axis=1, channel_axis=3)
        else:                # batch over W with a vector [W]
            m = np.round(rng.standard_normal((w,)), 3).tolist()
            nt = f"DotGeneral(rhs=np.array({m}), dimension_numbers=(((), ()), ((2,), (0,))))"
            nk = f"DotGeneral(rhs=torch.tensor({m}, dtype=torch.float64), dimension_numbers=(((), ()), ((3,), (0,))))"
            nt_axes = dict(batch_axis=1, channel_axis=3)
        self.add(a, nt, nk)
        if st["gaussian"] and r.random() < 0.5:
            act = self.act()
            self.add(a, act, known=act.replace("approximate=True", "approximate=False"))
        pool = r.choice(["GlobalAvgPool", "GlobalSumPool"])
        self.add(a, call(pool, **nt_axes), f"{pool}()")
        self.add(a, call("Dense", 1, **self.stds()))
        st["finished"] = True

    def add_readout(self, a, st):
        choice = self.r.choice(["Flatten()", "GlobalAvgPool()", "GlobalSumPool()"])
        self.add(a, choice)
        st["kind"], st["spatial"] = "vec", ()
        # an activation after Flatten is refused by neural-tangents: give it an affine layer
        st["gaussian"] = st["gaussian"] and choice != "Flatten()"


def draw_inputs(arch: Arch, seed: int) -> dict[str, np.ndarray]:
    """x1, x2 (neural-tangents' layout) and the graphs, padded with the mask constant."""
    rng = np.random.default_rng(seed)
    z = {"x1": rng.standard_normal((N1, *arch.shape)), "x2": rng.standard_normal((N2, *arch.shape))}
    if arch.mask is not None:
        for key in ("x1", "x2"):
            for n in range(len(z[key])):
                length = int(rng.integers(1, arch.shape[0] + 1))
                z[key][n, length:] = arch.mask
    if arch.pattern is not None:
        nodes = math.prod(arch.shape[ax - 1] for ax in arch.pattern)
        shape = tuple(arch.shape[ax - 1] for ax in arch.pattern)
        for key, n in (("p1", N1), ("p2", N2)):
            graph = (rng.random((n, nodes, nodes)) < 0.4) * rng.uniform(0.5, 1.5, (n, nodes, nodes))
            z[key] = graph.reshape(n, *shape, *shape)
    return z


def to_ntklab(kind: str, x: np.ndarray) -> np.ndarray:
    if kind == "img":
        return x.transpose(0, 3, 1, 2)
    if kind == "vol":
        return x.transpose(0, 4, 1, 2, 3)
    return x


# ---------------------------------------------------------------------------------------------
# neural-tangents side (runs in the subprocess)

NT_WORKER = r'''
import json, sys, traceback, warnings
import numpy as np
warnings.filterwarnings("ignore")
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
from neural_tangents import stax
space = {name: getattr(stax, name) for name in dir(stax) if not name.startswith("_")}
space.update(np=np, jnp=jnp, DECAY={"exp": lambda d: jnp.exp(-d), "inverse": lambda d: 1 / (1 + d),
                                    "exp_half": lambda d: jnp.exp(-d / 2)})
jobs = json.load(open(sys.argv[1]))
out, errors = {}, {}
for job in jobs:
    z = np.load(job["inputs"])
    try:
        kernel_fn = eval(job["nt"], space)[2]
        extra = {} if job["mask"] is None else {"mask_constant": job["mask"]}
        for pair, x2 in (("x1x2", z["x2"]), ("x1x1", None)):
            kw = dict(extra)
            if "p1" in z.files:
                kw["pattern"] = (z["p1"], z["p2"] if x2 is not None else z["p1"])   # nt: (p1, p1) for x2=None
            k = kernel_fn(z["x1"], x2, ("nngp", "ntk"), **kw)
            out[f"{job['index']}/nngp_{pair}"] = np.asarray(k.nngp, dtype=np.float64)
            out[f"{job['index']}/ntk_{pair}"] = np.asarray(k.ntk, dtype=np.float64)
    except Exception as err:
        errors[str(job["index"])] = f"{type(err).__name__}: {err}"[:600]
np.savez(sys.argv[2], **out)
json.dump(errors, open(sys.argv[3], "w"))
'''


def run_neural_tangents(archs: list[Arch], folder: Path, seed: int) -> tuple[dict, dict]:
    jobs = []
    for arch in archs:
        path = folder / f"in_{arch.index}.npz"
        np.savez(path, **draw_inputs(arch, seed + arch.index))
        jobs.append(dict(index=arch.index, nt=arch.expressions()[0], mask=arch.mask, inputs=str(path)))
    (folder / "jobs.json").write_text(json.dumps(jobs))
    (folder / "worker.py").write_text(NT_WORKER)
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([NT_PYTHON, str(folder / "worker.py"), str(folder / "jobs.json"), str(folder / "out.npz"),
                           str(folder / "errors.json")], env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"the neural-tangents worker failed:\n{proc.stderr[-3000:]}")
    z = np.load(folder / "out.npz")
    return {k: z[k] for k in z.files}, json.loads((folder / "errors.json").read_text())


# ---------------------------------------------------------------------------------------------
# ntklab side


def nk_space() -> dict:
    import torch

    import ntklab as nk
    space = {name: getattr(nk, name) for name in nk.__all__}
    space.update(torch=torch, DECAY={"exp": lambda d: torch.exp(-d), "inverse": lambda d: 1 / (1 + d),
                                     "exp_half": lambda d: torch.exp(-d / 2)})
    return space


def ntklab_kernels(expression: str, arch: Arch, z: dict) -> dict[str, np.ndarray]:
    import torch
    net = eval(expression, nk_space())   # our own generated expressions
    x1, x2 = (torch.from_numpy(to_ntklab(arch.kind, z[k])) for k in ("x1", "x2"))
    out = {}
    for pair, other in (("x1x2", x2), ("x1x1", None)):
        kw = {} if arch.mask is None else {"mask_constant": arch.mask}
        if "p1" in z:
            kw["pattern"] = (torch.from_numpy(z["p1"]), None if other is None else torch.from_numpy(z["p2"]))
        k = net.kernel(x1, other, get=("nngp", "ntk"), **kw)
        out[f"nngp_{pair}"], out[f"ntk_{pair}"] = k.nngp.numpy(), k.ntk.numpy()
    return out


def difference(ours: dict, theirs: dict) -> tuple[float, float]:
    """(largest relative difference off the diagonal of x1x1 and in x1x2, on that diagonal)."""
    off, diag = 0.0, 0.0
    for get in ("nngp", "ntk"):
        scale = max(np.abs(theirs[f"{get}_x1x2"]).max(), np.abs(theirs[f"{get}_x1x1"]).max(), 1e-300)
        d12 = np.abs(ours[f"{get}_x1x2"] - theirs[f"{get}_x1x2"]) / scale
        d11 = np.abs(ours[f"{get}_x1x1"] - theirs[f"{get}_x1x1"]) / scale
        eye = np.eye(N1, dtype=bool)
        off = max(off, float(np.nan_to_num(d12, nan=np.inf).max()), float(np.nan_to_num(d11[~eye], nan=np.inf).max()))
        diag = max(diag, float(np.nan_to_num(d11[eye], nan=np.inf).max()))
    return off, diag


def monte_carlo(arch: Arch, z: dict, width: int = 512, n_samples: int = 64, seed: int = 0) -> dict | None:
    """Monte Carlo NNGP/NTK of ntklab's finite network of width `width` on x1 (mean, standard
    error per entry): whichever kernel is within a few standard errors is the network's.  None
    for masked inputs and graphs (their finite networks take extra arguments)."""
    import torch

    import ntklab as nk
    if arch.mask is not None or arch.pattern is not None:
        return None
    net = eval(arch.expressions(width)[1], nk_space())
    x1 = torch.from_numpy(to_ntklab(arch.kind, z["x1"]))
    mc = nk.monte_carlo_kernel(net, x1, n_samples=n_samples, get=("nngp", "ntk"), seed=seed, progress=False)
    return {"nngp": mc.nngp.numpy(), "nngp_se": mc.nngp_standard_error.numpy(),
            "ntk": mc.ntk.numpy(), "ntk_se": mc.ntk_standard_error.numpy()}


# ---------------------------------------------------------------------------------------------


def compare(arch: Arch, z: dict, theirs: dict | None, theirs_error: str | None, monte: bool) -> dict:
    """One architecture's outcome: agree, disagree, known (neural-tangents computes the network
    `nt_computes`), refused_nt, refused_ntklab or refused_both."""
    nt_expr, nk_expr, known_expr = arch.expressions()
    outcome = dict(index=arch.index, kind=arch.kind, shape=arch.shape, mask=arch.mask, nt=nt_expr, ntklab=nk_expr)
    try:
        ours, ours_error = ntklab_kernels(nk_expr, arch, z), None
    except Exception as err:   # noqa: BLE001 -- a ValueError is a refusal, anything else a crash
        ours, ours_error = None, f"{type(err).__name__}: {err}"
    if ours_error or theirs_error:
        status = "refused_both" if ours_error and theirs_error else "refused_ntklab" if ours_error else "refused_nt"
        outcome.update(status=status, ntklab_error=ours_error, nt_error=theirs_error)
        return outcome
    off, diag = difference(ours, theirs)
    outcome.update(off=off, diag=diag, status="agree")
    if off <= OFF_DIAGONAL_TOL and diag <= DIAGONAL_TOL:
        return outcome
    outcome["status"] = "disagree"
    if known_expr is not None:
        alt_off, alt_diag = difference(ntklab_kernels(known_expr, arch, z), theirs)
        if alt_off <= OFF_DIAGONAL_TOL and alt_diag <= DIAGONAL_TOL:
            outcome.update(status="known", nt_computes=known_expr)
            return outcome
    outcome["ntklab_ntk"], outcome["nt_ntk"] = ours["ntk_x1x1"].tolist(), theirs["ntk_x1x1"].tolist()
    mc = monte_carlo(arch, z) if monte else None
    if mc is not None:
        for name, k in (("ntklab", ours), ("nt", theirs)):
            zs = [np.abs(mc[g] - k[f"{g}_x1x1"]) / np.maximum(mc[f"{g}_se"], 1e-300) for g in ("nngp", "ntk")]
            outcome[f"mc_z_{name}"] = max(float(np.max(x)) for x in zs)
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="number of random architectures")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", type=int, nargs="*", help="run these architecture indices only")
    parser.add_argument("--verbose", action="store_true", help="print every architecture")
    parser.add_argument("--monte-carlo", action="store_true", help="Monte Carlo check of each disagreement")
    parser.add_argument("--json", type=Path, help="write the per-architecture outcomes here")
    args = parser.parse_args(argv)
    gen = Generator(args.seed)
    archs = [gen.architecture(i) for i in range(args.n)]
    if args.only:
        archs = [archs[i] for i in args.only]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        nt_out, nt_errors = run_neural_tangents(archs, Path(tmp), args.seed * 100_000)
        inputs = {a.index: dict(np.load(Path(tmp) / f"in_{a.index}.npz")) for a in archs}
    nt_seconds = time.perf_counter() - start
    outcomes = []
    for arch in archs:
        theirs = {k.split("/")[1]: v for k, v in nt_out.items() if k.split("/")[0] == str(arch.index)}
        outcome = compare(arch, inputs[arch.index], theirs, nt_errors.get(str(arch.index)), args.monte_carlo)
        outcomes.append(outcome)
        if args.verbose or outcome["status"] not in ("agree", "known"):
            print(json.dumps({k: v for k, v in outcome.items() if k not in ("ntklab_ntk", "nt_ntk") and v is not None}))
            if outcome["status"] == "disagree":
                print("  ntklab NTK(x1, x1):", np.array(outcome["ntklab_ntk"]).round(8).tolist())
                print("  nt     NTK(x1, x1):", np.array(outcome["nt_ntk"]).round(8).tolist())
    counts = {s: sum(o["status"] == s for o in outcomes)
              for s in ("agree", "disagree", "known", "refused_nt", "refused_ntklab", "refused_both")}
    worst = max((o["off"] for o in outcomes if o["status"] == "agree"), default=0.0)
    print(f"\n{len(archs)} architectures (seed {args.seed}; neural-tangents {nt_seconds:.0f} s, total "
          f"{time.perf_counter() - start:.0f} s): {counts}; worst agreeing off-diagonal {worst:.2g}")
    if args.json:
        args.json.write_text(json.dumps(outcomes, indent=1))
    return 1 if counts["disagree"] else 0


if __name__ == "__main__":
    sys.exit(main())
