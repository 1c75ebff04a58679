"""Regenerate the neural-tangents reference values of the convolution family in 1, 2 and 3
spatial dimensions (tests/data/neural_tangents/neural_tangents_conv.{json,npz}): Conv, AvgPool,
SumPool, GlobalAvgPool, GlobalSumPool and Flatten on sequences and volumes, ConvTranspose and
ConvLocal on sequences, images and volumes.

Each case's `architecture` is one line that both libraries read: this script evaluates it with
neural-tangents' `stax` layers, the tests parse it with ntklab's `--arch` grammar
(`ntklab.arch.spec.parse_architecture`), so both compute the same network by construction.

    python benchmarks/make_reference_conv.py                     # rewrite the stored pair
    python benchmarks/make_reference_conv.py --out /tmp/ref --compare

Inputs: `numpy.random.default_rng(2).standard_normal` draws in the order of `INPUTS`, in
neural-tangents' channels-last layouts (NWC sequences, NHWC images, NDHWC volumes); ntklab takes
sequences as they are and images/volumes with the channel axis moved second.  neural-tangents
0.6.5 (JAX 0.4.30) in float64 (`jax_enable_x64`).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "neural_tangents"
NAME = "neural_tangents_conv"
INPUTS = (("seq/x1", (3, 8, 3)), ("seq/x2", (2, 8, 3)), ("img/x1", (3, 6, 5, 3)), ("img/x2", (2, 6, 5, 3)),
          ("vol/x1", (3, 4, 3, 4, 2)), ("vol/x2", (2, 4, 3, 4, 2)))
HYPER = "W_std=1.5, b_std=0.05"
STANDARD = f"{HYPER}, parameterization='standard'"
READOUT = f"Dense(1, {HYPER})"
CASES = {   # name: architecture (inputs: the name's prefix)
    "seq/conv_flatten": f"Conv(16, (3,), padding='SAME', {HYPER}), Relu(), Conv(16, (2,), strides=(2,), "
                        f"padding='VALID', {HYPER}), Relu(), Flatten(), {READOUT}",
    "seq/conv_pool_gap": f"Conv(16, (3,), strides=(2,), padding='CIRCULAR', {HYPER}), Erf(), "
                         f"AvgPool((2,), strides=(1,), padding='SAME'), Conv(16, (3,), padding='SAME', "
                         f"{STANDARD}), Relu(), SumPool((2,), strides=(2,)), GlobalAvgPool(), {READOUT}",
    "vol/conv_pool_sum": f"Conv(8, (2, 3, 2), padding='SAME', {HYPER}), Relu(), AvgPool((2, 2, 2), "
                         f"strides=(1, 2, 1), padding='VALID'), Conv(8, (2, 2, 2), strides=(1, 1, 2), "
                         f"padding='CIRCULAR', {HYPER}), Relu(), GlobalSumPool(), {READOUT}",
    "vol/conv_flatten": f"Conv(8, (3, 3, 3), strides=(2, 1, 1), padding='SAME', {STANDARD}), Relu(), "
                        f"Flatten(), {READOUT}",
    "img/transpose_same_gap": f"Conv(8, (3, 3), padding='SAME', {HYPER}), Relu(), ConvTranspose(8, (3, 3), "
                              f"strides=(2, 2), padding='SAME', {HYPER}), Relu(), GlobalAvgPool(), {READOUT}",
    "img/transpose_valid_flatten": f"ConvTranspose(8, (3, 2), strides=(2, 3), padding='VALID', {STANDARD}), "
                                   f"Relu(), ConvTranspose(8, (2, 2), padding='VALID', {HYPER}), Relu(), "
                                   f"Flatten(), {READOUT}",
    "img/transpose_circular_gap": f"ConvTranspose(8, (3, 3), strides=(2, 1), padding='CIRCULAR', {HYPER}), "
                                  f"Relu(), ConvTranspose(8, (4, 2), strides=(1, 2), padding='CIRCULAR', "
                                  f"{STANDARD}), Relu(), GlobalAvgPool(), {READOUT}",
    "img/transpose_circular_flatten": f"ConvTranspose(8, (3, 3), strides=(2, 1), padding='CIRCULAR', "
                                      f"{HYPER}), Relu(), ConvTranspose(8, (4, 2), strides=(1, 2), "
                                      f"padding='CIRCULAR', {STANDARD}), Relu(), Flatten(), {READOUT}",
    "seq/transpose": f"ConvTranspose(8, (4,), strides=(3,), padding='SAME', {HYPER}), Relu(), "
                     f"ConvTranspose(8, (2,), strides=(2,), padding='CIRCULAR', {HYPER}), GlobalAvgPool(), "
                     f"{READOUT}",
    "vol/transpose": f"ConvTranspose(8, (2, 2, 3), strides=(2, 1, 1), padding='VALID', {HYPER}), Relu(), "
                     f"GlobalAvgPool(), {READOUT}",
    "img/local_gap": f"ConvLocal(8, (3, 3), padding='SAME', {HYPER}), Relu(), ConvLocal(8, (2, 2), "
                     f"strides=(2, 1), padding='VALID', {STANDARD}), Relu(), GlobalAvgPool(), {READOUT}",
    "img/local_circular_pool": f"Conv(8, (3, 3), padding='SAME', {HYPER}), Relu(), ConvLocal(8, (3, 3), "
                               f"strides=(2, 2), padding='CIRCULAR', {HYPER}), Relu(), AvgPool((2, 2), "
                               f"strides=(1, 1), padding='SAME'), Flatten(), {READOUT}",
    "img/local_flatten": f"ConvLocal(8, (3, 3), strides=(2, 2), padding='SAME', {HYPER}), Relu(), "
                         f"ConvLocal(8, (2, 2), {STANDARD}), Erf(), Flatten(), {READOUT}",
    "seq/local": f"ConvLocal(8, (3,), padding='SAME', {HYPER}), Relu(), Conv(8, (2,), {HYPER}), Relu(), "
                 f"GlobalAvgPool(), {READOUT}",
    "vol/local": f"ConvLocal(8, (2, 2, 2), padding='SAME', {STANDARD}), Relu(), ConvLocal(8, (2, 1, 2), "
                 f"{HYPER}), GlobalAvgPool(), {READOUT}",
}
# neural-tangents 0.6.5 applies ConvLocal's strides and filter shape to swapped spatial axes when
# the all-position-pairs kernel reaching it comes through a shared Conv (which leaves its kernel's
# spatial axes reversed, `is_reversed`; `_Conv.kernel_fn` un-reverses them for shared weights
# only): its value is the kernel of the architecture with those two arguments reversed, stored as
# `neural_tangents_computes` and checked by the tests.
SWAPPED = {
    "img/local_after_conv_strided": (
        f"Conv(8, (3, 3), padding='SAME', {HYPER}), Relu(), ConvLocal(8, (3, 2), strides=(1, 2), "
        f"padding='SAME', {HYPER}), Relu(), AvgPool((2, 2), strides=(1, 1), padding='SAME'), Flatten(), "
        f"{READOUT}",
        f"Conv(8, (3, 3), padding='SAME', {HYPER}), Relu(), ConvLocal(8, (2, 3), strides=(2, 1), "
        f"padding='SAME', {HYPER}), Relu(), AvgPool((2, 2), strides=(1, 1), padding='SAME'), Flatten(), "
        f"{READOUT}"),
}


def draw_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    return {key: rng.standard_normal(shape) for key, shape in INPUTS}


def cases() -> list[dict]:
    """The JSON description of every case."""
    out = []
    for name, architecture in {**CASES, **{name: lines[0] for name, lines in SWAPPED.items()}}.items():
        kind = name.split("/")[0]
        out.append(dict(name=name, kind=kind, architecture=architecture, x1=f"{kind}/x1", x2=f"{kind}/x2",
                        arrays={f"{get}_{pair}": f"{name}/{get}_{pair}"
                                for pair in ("x1x2", "x1x1") for get in ("nngp", "ntk")}))
        if name in SWAPPED:
            out[-1]["neural_tangents_computes"] = SWAPPED[name][1]
    return out


def compute() -> dict[str, np.ndarray]:
    """The inputs and every case's kernels, computed with neural-tangents."""
    import warnings
    warnings.filterwarnings("ignore", module="neural_tangents")
    import jax
    jax.config.update("jax_enable_x64", True)
    from neural_tangents import stax

    names = {name: getattr(stax, name) for name in (
        "Conv", "ConvTranspose", "ConvLocal", "AvgPool", "SumPool", "GlobalAvgPool", "GlobalSumPool",
        "Flatten", "Relu", "Erf", "Dense")}
    z = draw_inputs()
    for case in cases():
        # our own architecture lines (above), in the layer names both libraries share
        kernel_fn = eval(f"serial({case['architecture']})", {"serial": stax.serial, **names})[2]
        x1, x2 = z[case["x1"]], z[case["x2"]]
        for suffix, other in (("x1x2", x2), ("x1x1", None)):
            k = kernel_fn(x1, other, ("nngp", "ntk"))
            for get in ("nngp", "ntk"):
                z[f"{case['name']}/{get}_{suffix}"] = np.asarray(getattr(k, get))
    return z


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DATA, help="folder for the .json/.npz pair")
    parser.add_argument("--compare", action="store_true", help=f"compare with the pair stored in {DATA}")
    parser.add_argument("--tol", type=float, default=1e-12)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    z = compute()
    from make_reference import compare   # the sibling script (run from benchmarks/)
    ok = compare(z, DATA / f"{NAME}.npz", args.tol) if args.compare else True
    meta = {"source": "neural-tangents 0.6.5, JAX 0.4.30, float64; benchmarks/make_reference_conv.py",
            "conventions": "inputs channels-last (NWC, NHWC, NDHWC) as neural-tangents; W_std=1.5, "
                           "b_std=0.05; the architecture line is read by both libraries",
            "cases": cases()}
    for suffix, write in ((".json", lambda f: f.write(json.dumps(meta, indent=1).encode())),
                          (".npz", lambda f: np.savez_compressed(f, **z))):
        tmp = args.out / f".{NAME}{suffix}.tmp"
        with open(tmp, "wb") as f:   # atomic: a temporary file renamed over the old one
            write(f)
        tmp.replace(args.out / f"{NAME}{suffix}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
