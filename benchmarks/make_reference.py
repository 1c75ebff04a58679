"""Regenerate the neural-tangents reference values of the tests (tests/data/neural_tangents/).

Each set is a pair: `<name>.json` lists the cases (architecture, hyperparameters, the keys of
its arrays) and `<name>.npz` holds the arrays.  This script reads the JSON files as the list of
cases, draws the inputs, recomputes every array with neural-tangents 0.6.5 (JAX 0.4.30, float64)
and writes both files to `--out`; with `--compare` it prints, for every array, the largest
absolute difference from the stored one and exits non-zero if any exceeds `--tol`.

    pip install -e ".[bench]"        # jax[cpu] 0.4.30, jaxlib 0.4.30, neural-tangents 0.6.5
    python benchmarks/make_reference.py --out /tmp/reference --compare
    make reference                   # rewrite tests/data/neural_tangents in place

Inputs (`draw_inputs`, numpy only) are `numpy.random.default_rng(seed).standard_normal` draws
from one generator per set, in the order below: seed 0 for `neural_tangents_public`, seed 1 for
`neural_tangents_v2`.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "neural_tangents"
SETS = ("neural_tangents_public", "neural_tangents_v2")
TIMES = {"inf": None, "1.0": 1.0, "10.0": 10.0}     # array-key suffix -> neural-tangents' t


def draw_inputs(name: str) -> dict[str, np.ndarray]:
    """The input arrays of set `name`, as stored (float64)."""
    if name == "neural_tangents_public":
        rng = np.random.default_rng(0)
        z = {k: rng.standard_normal(shape) for k, shape in (
            ("fc/x1", (20, 8)), ("fc/x2", (15, 8)), ("conv/x1", (6, 8, 8, 3)), ("conv/x2", (4, 8, 8, 3)),
            ("pred/x_train", (30, 5)), ("pred/x_test", (10, 5)))}
        for split in ("train", "test"):   # targets y = sin(sum of the coordinates)
            z[f"pred/y_{split}"] = np.sin(z[f"pred/x_{split}"].sum(1, keepdims=True))
        return z
    if name == "neural_tangents_v2":
        rng = np.random.default_rng(1)
        z = {k: rng.standard_normal(shape) for k, shape in (
            ("fc/x1", (12, 8)), ("fc/x2", (9, 8)), ("conv/x1", (5, 8, 8, 3)), ("conv/x2", (3, 8, 8, 3)),
            ("attn/x1", (4, 6, 4)), ("attn/x2", (3, 6, 4)))}
        features = rng.standard_normal((27, 40))   # a linear kernel on 20 training + 7 test points
        k = features @ features.T / features.shape[1]
        z["pred/k_train_train"], z["pred/k_test_train"] = k[:20, :20], k[20:, :20]
        z["pred/y_train"] = np.eye(3)[rng.integers(0, 3, 20)]   # one-hot labels, 3 classes
        z["pred/fx_train_0"] = 0.1 * rng.standard_normal((20, 3))
        z["pred/fx_test_0"] = 0.1 * rng.standard_normal((7, 3))
        return z
    raise ValueError(f"name={name!r}: expected one of {SETS}")


def architectures(stax) -> dict:
    """Builders of the networks of both sets, by case name or (public set) by case fields;
    they follow each case's JSON description."""
    W, B = 1.5, 0.05
    act = {"relu": stax.Relu, "erf": stax.Erf, "sign": stax.Sign,
           "gelu": lambda: stax.Gelu(approximate=False)}

    def dense(width):
        return stax.Dense(width, W, B)

    def conv(channels, filter_shape=(3, 3), **kwargs):
        return stax.Conv(channels, filter_shape, W_std=W, b_std=B, **kwargs)

    def residual(*branch):
        return stax.serial(stax.FanOut(2), stax.parallel(stax.serial(*branch), stax.Identity()),
                           stax.FanInSum())

    def res_conv_block():   # its convolutions too have the case's W,b = 1.5, 0.05
        return residual(stax.Relu(), conv(64, padding="SAME"), stax.Relu(), conv(64, padding="SAME"))

    def chain(case):   # public fc/*, conv/* and pred/0: [Dense or Conv, activation] x depth, readout
        hyper = dict(W_std=case["W_std"], b_std=case["b_std"], parameterization=case["parameterization"])
        if case["kind"] == "conv":   # 64 channels: any width gives the same NTK-parameterized kernel
            layer = lambda: stax.Conv(64, tuple(case["filter"]), padding=case["padding"],  # noqa: E731
                                      **hyper)
            readout = {"flatten": stax.Flatten, "gap": stax.GlobalAvgPool}[case["readout"]]()
            depth, readout = case["conv_layers"], [readout]
        else:   # pred/0 records no width: 512 as in fc/*
            layer = lambda: stax.Dense(case.get("width", 512), **hyper)  # noqa: E731
            depth, readout = case["hidden_layers"], []
        layers = [item for _ in range(depth) for item in (layer(), act[case["activation"]]())]
        return stax.serial(*layers, *readout, stax.Dense(case.get("out", 1), **hyper))

    activations = [stax.Sin(a=1.0, b=1.3, c=0.2), stax.Cos(a=0.7, b=1.1, c=0.0), stax.Rbf(gamma=0.8),
                   stax.Gaussian(a=1.0, b=-1.0), stax.Exp(a=0.5, b=0.3), stax.Monomial(3),
                   stax.RectifiedMonomial(2), stax.Polynomial([0.1, -0.5, 0.3, 0.2]), stax.Hermite(3),
                   stax.ABRelu(-0.3, 0.8)]
    named = {
        "fc/residual": lambda: stax.serial(
            dense(512), *[residual(stax.Relu(), dense(512), stax.Relu(), dense(512)) for _ in range(2)],
            stax.Relu(), dense(1)),
        "fc/concat": lambda: stax.serial(stax.FanOut(2), stax.parallel(dense(512), stax.serial(
            dense(512), stax.Relu(), dense(512))), stax.FanInConcat(), dense(512), stax.Relu(), dense(1)),
        "fc/layernorm": lambda: stax.serial(dense(512), stax.LayerNorm(axis=-1), dense(512), stax.Relu(),
                                            dense(512), stax.LayerNorm(axis=-1), dense(1)),
        **{f"fc/act{i}": (lambda a=a: stax.serial(dense(512), a, dense(512), a, dense(1)))
           for i, a in enumerate(activations)},
        "conv/resnet_gap": lambda: stax.serial(
            conv(64, padding="SAME"), res_conv_block(), stax.AvgPool((2, 2), strides=(2, 2), padding="VALID"),
            res_conv_block(), stax.Relu(), stax.GlobalAvgPool(), dense(1)),
        "conv/avgpool_same_flatten": lambda: stax.serial(
            conv(32, padding="SAME"), stax.Relu(),
            stax.AvgPool((3, 3), strides=(1, 1), padding="SAME", normalize_edges=False),
            conv(32, padding="SAME"), stax.Relu(), stax.AvgPool((2, 2), strides=(2, 2), padding="VALID"),
            stax.Flatten(), dense(1)),
        "conv/strided_circular": lambda: stax.serial(
            conv(32, strides=(2, 2), padding="SAME"), stax.Relu(), conv(32, padding="CIRCULAR"), stax.Relu(),
            conv(32, (2, 2), padding="VALID"), stax.Relu(), stax.GlobalAvgPool(), dense(1)),
        "conv/concat_unequal": lambda: stax.serial(   # Inception-style: 16 + 32 channels
            conv(24, padding="SAME"), stax.Relu(), stax.FanOut(2),
            stax.parallel(conv(16, padding="SAME"),
                          stax.serial(conv(40, (1, 1)), stax.Relu(), conv(32, padding="SAME"))),
            stax.FanInConcat(), stax.Conv(8, (3, 3), padding="SAME", W_std=W, b_std=B,
                                          parameterization="standard"),
            stax.Relu(), stax.Flatten(), dense(1)),
        "attn/transformer": lambda: stax.serial(
            dense(64), stax.GlobalSelfAttention(64, 64, 64, n_heads=4, linear_scaling=True,
                                                attention_mechanism="SOFTMAX", b_std=None),
            stax.LayerNorm(axis=-1), dense(64), stax.Relu(), stax.GlobalAvgPool(), dense(1)),
    }
    return lambda case: named[case["name"]]() if case["name"] in named else chain(case)


def compute(name: str, cases: list[dict]) -> dict[str, np.ndarray]:
    """Inputs and every array the cases of set `name` list, computed with neural-tangents."""
    import warnings
    warnings.filterwarnings("ignore", module="neural_tangents")   # FanIn/attention/Gaussian notices
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import neural_tangents as nt
    from neural_tangents import stax

    build, z = architectures(stax), draw_inputs(name)
    for case in cases:
        if case["kind"] == "finite_kernel_predictions":
            z.update(finite_predictions(jax, nt, jnp, case, z))
            continue
        if not case["arrays"]:   # e.g. fc/act6: neural-tangents returns NaN, nothing stored
            continue
        kernel_fn = build(case)[2]
        if case["kind"] == "gd_mse_ensemble":
            predict_fn = nt.predict.gradient_descent_mse_ensemble(
                kernel_fn, z["pred/x_train"], z["pred/y_train"], learning_rate=case["learning_rate"],
                diag_reg=case["diag_reg"])
            for suffix, t in TIMES.items():
                for get in ("ntk", "nngp"):
                    mean, cov = predict_fn(t, z["pred/x_test"], get, compute_cov=True)
                    z[f"{case['name']}/{get}_mean_t{suffix}"] = np.asarray(mean)
                    z[f"{case['name']}/{get}_cov_t{suffix}"] = np.asarray(cov)
            continue
        x1, x2 = z[case["x1"]], z[case["x2"]]
        for suffix, other in (("x1x2", x2), ("x1x1", None)):
            k = kernel_fn(x1, other, ("nngp", "ntk"))
            for get in ("nngp", "ntk"):
                z[f"{case['name']}/{get}_{suffix}"] = np.asarray(getattr(k, get))
    missing = {key for case in cases for key in case["arrays"].values()} - set(z)
    if missing:
        raise RuntimeError(f"{name}: no values computed for {sorted(missing)}")
    return z


def finite_predictions(jax, nt, jnp, case: dict, z: dict) -> dict[str, np.ndarray]:
    """`pred/finite`: gradient descent on the given finite kernels, MSE and cross-entropy."""
    k, k_test, y = z["pred/k_train_train"], z["pred/k_test_train"], z["pred/y_train"]
    f0, f0_test, lr, out = z["pred/fx_train_0"], z["pred/fx_test_0"], case["learning_rate"], {}

    def cross_entropy(fx, y_):
        return -jnp.mean(jnp.sum(jax.nn.log_softmax(fx) * y_, axis=-1))

    mse = nt.predict.gradient_descent_mse(k, y, learning_rate=lr, diag_reg=case["diag_reg"])
    ce = nt.predict.gradient_descent(cross_entropy, k, y, learning_rate=lr)
    for suffix, t in TIMES.items():
        for loss, fn in (("mse", mse), ("ce", ce)):
            if t is None and loss == "ce":   # the cross-entropy flow has no infinite-time limit
                continue
            train, test = fn(t, f0, f0_test, k_test)
            out[f"pred/finite/{loss}_train_t{suffix}"] = np.asarray(train)
            out[f"pred/finite/{loss}_test_t{suffix}"] = np.asarray(test)
    out["pred/finite/max_learning_rate"] = np.asarray(max_learning_rate(nt, k, y.size))
    return out


def max_learning_rate(nt, k: np.ndarray, y_train_size: int) -> float:
    """`nt.predict.max_learning_rate(k, y_train_size)`.  On CPU it calls
    `scipy.linalg.eigvalsh(..., eigvals=...)`, a keyword SciPy 1.14 removed (now
    `subset_by_index`); with such a SciPy, the same expression: 2 |Y| / (lambda_max + 1e-12)."""
    try:
        return float(nt.predict.max_learning_rate(k, y_train_size=y_train_size))
    except TypeError as error:
        if "eigvals" not in str(error):
            raise
    import scipy.linalg
    top = len(k) - 1
    return 2 * y_train_size / (scipy.linalg.eigvalsh(k, subset_by_index=(top, top))[-1] + 1e-12)


def compare(new: dict[str, np.ndarray], stored: Path, tol: float) -> bool:
    """Print the largest absolute difference per array; True when all are within `tol`."""
    with np.load(stored) as old:
        keys = set(old.files) | set(new)
        worst = {}
        for key in sorted(keys):
            if key not in old.files or key not in new:
                print(f"  {key}: only in {'the new' if key in new else 'the stored'} set")
                worst[key] = np.inf
                continue
            a, b = np.asarray(new[key]), old[key]
            worst[key] = np.inf if a.shape != b.shape else float(np.max(np.abs(a - b), initial=0.0))
    for key, gap in worst.items():
        if gap > tol:
            print(f"  {key}: max |new - stored| = {gap:.3g} > {tol:g}")
    print(f"{stored.name}: {len(keys)} arrays, largest difference {max(worst.values()):.3g} "
          f"({max(worst, key=worst.get)})")
    return all(gap <= tol for gap in worst.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DATA,
                        help="folder for the .json/.npz pairs (default: %(default)s)")
    parser.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS))
    parser.add_argument("--compare", action="store_true", help=f"compare with the files stored in {DATA}")
    parser.add_argument("--tol", type=float, default=1e-12,
                        help="largest absolute difference --compare accepts")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    ok = True
    for name in args.sets:
        meta = DATA / f"{name}.json"
        cases = json.loads(meta.read_text())["cases"]
        z = compute(name, cases)
        if args.compare:
            ok &= compare(z, DATA / f"{name}.npz", args.tol)
        tmp = args.out / f".{name}.npz.tmp"
        with open(tmp, "wb") as f:   # atomic: a temporary file renamed over the old one
            np.savez_compressed(f, **z)
        tmp.replace(args.out / f"{name}.npz")
        if args.out.resolve() != DATA:
            shutil.copyfile(meta, args.out / meta.name)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
