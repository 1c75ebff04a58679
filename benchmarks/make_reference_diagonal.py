"""neural-tangents reference values of the diagonal-only kernels (tests/arch/test_diagonal_kernels.py).

Writes `tests/data/neural_tangents/diagonal.npz` with neural-tangents 0.6.5 (JAX 0.4.30, float64):
for each case its inputs `<case>/x1` `[4, ...]`, `<case>/x2` `[3, ...]` (neural-tangents'
layouts: images NHWC, sequences `[N, T, C]`; `numpy.random.default_rng(2)` draws in the order
below) and, with `diagonal_spatial=True`, `<case>/nngp`, `<case>/ntk` (x1 against x2),
`<case>/ntk_x1x1` (x1 with itself) and `<case>/cov1` (`get="cov1"`: each x1 with itself, the
NNGP's `diagonal_batch` variances).  W_std 1.5, b_std 0.05 throughout.

  conv        Conv(8, (3, 3), SAME), Relu, Conv(8, (3, 3), VALID), Erf: ends on 4x4 images
  strided     Conv(8, (3, 3), strides (2, 2), CIRCULAR), Gelu, Conv(8, (2, 2)), Relu: 2x2 images
  tokens      on [N, 5, 3]: Dense(8), Relu, Dense(8), Erf, Dense(8): per-token kernels
  flatten     Conv(8, (3, 3), SAME), Relu, Flatten, Dense(1): vectors, as without diagonal_spatial

    pip install -e ".[bench]"
    python benchmarks/make_reference_diagonal.py [--out tests/data/neural_tangents/diagonal.npz]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "neural_tangents" / "diagonal.npz"
W, B = 1.5, 0.05
SHAPES = {"conv": (6, 6, 2), "strided": (6, 6, 2), "tokens": (5, 3), "flatten": (5, 5, 2)}


def architectures(stax) -> dict:
    conv = lambda filt, **kw: stax.Conv(8, filt, W_std=W, b_std=B, **kw)  # noqa: E731
    dense = lambda n: stax.Dense(n, W_std=W, b_std=B)  # noqa: E731
    return {
        "conv": stax.serial(conv((3, 3), padding="SAME"), stax.Relu(), conv((3, 3)), stax.Erf()),
        "strided": stax.serial(conv((3, 3), strides=(2, 2), padding="CIRCULAR"), stax.Gelu(),
                               conv((2, 2)), stax.Relu()),
        "tokens": stax.serial(dense(8), stax.Relu(), dense(8), stax.Erf(), dense(8)),
        "flatten": stax.serial(conv((3, 3), padding="SAME"), stax.Relu(), stax.Flatten(), dense(1)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    from jax import config
    config.update("jax_enable_x64", True)
    from neural_tangents import stax

    rng = np.random.default_rng(2)
    arrays = {}
    for case, (_, _, kernel_fn) in architectures(stax).items():
        x1, x2 = rng.standard_normal((4, *SHAPES[case])), rng.standard_normal((3, *SHAPES[case]))
        arrays.update({f"{case}/x1": x1, f"{case}/x2": x2})
        pair = kernel_fn(x1, x2, ("nngp", "ntk"), diagonal_spatial=True)
        arrays[f"{case}/nngp"], arrays[f"{case}/ntk"] = np.asarray(pair.nngp), np.asarray(pair.ntk)
        arrays[f"{case}/ntk_x1x1"] = np.asarray(kernel_fn(x1, None, "ntk", diagonal_spatial=True))
        arrays[f"{case}/cov1"] = np.asarray(kernel_fn(x1, None, "cov1", diagonal_spatial=True))
    np.savez_compressed(args.out, **arrays)
    print({key: value.shape for key, value in arrays.items()})


if __name__ == "__main__":
    main()
