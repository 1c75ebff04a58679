"""neural-tangents 0.6.5 values of the layers of issue 29's "rest of stax" set: `repeat`, `Dense`
per pixel of images, `Dropout`, `Index`/`Slice`, `ImageResize`, `Gelu`, `Gabor`.

Writes `neural_tangents_misc.json` (each case's name, the neural-tangents architecture as
text, the array keys) and `neural_tangents_misc.npz` (inputs and kernels, float64) to `--out`
(default tests/data/neural_tangents).  Needs the `bench` extra (jax 0.4.30, neural-tangents
0.6.5).  Inputs: `numpy.random.default_rng(29).standard_normal`, vectors (4, 6) and (3, 6),
NHWC images (3, 6, 6, 2) and (2, 6, 6, 2), drawn in that order; images are stored NHWC
(`x.transpose(0, 3, 1, 2)` gives torch's NCHW).  `*_x1x1` is neural-tangents called with
`x2=None`, `*_x1x2` with both.

    python benchmarks/make_reference_misc.py --out /tmp/misc
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "neural_tangents"
NAME = "neural_tangents_misc"
W, B = 1.5, 0.05

CASES = {   # name: (inputs, neural-tangents architecture, evaluated in `networks`)
    "repeat": ("fc", "Dense(W, B), repeat(serial(Relu(), Dense(W, B)), 3), Relu(), Dense(W, B)"),
    "gelu": ("fc", "Dense(W, B), Gelu(), Dense(W, B), Gelu(), Dense(W, B)"),
    "gelu_approximate": ("fc", "Dense(W, B), Gelu(approximate=True), Dense(W, B)"),
    "gabor": ("fc", "Dense(W, B), Gabor(), Dense(W, B), Gabor(), Dense(W, B)"),
    "dropout": ("fc", "Dense(W, B), Relu(), Dropout(0.7), Dense(W, B), Relu(), Dense(W, B)"),
    "dense_pixels": ("conv", "Conv(3x3 SAME), Relu(), Dense(W, B) per pixel, Relu(), Flatten(), Dense(W, B)"),
    "dense_pixels_gap": ("conv", "Conv(3x3 SAME), Relu(), Dense(W, B) per pixel, Relu(), GlobalAvgPool(), "
                                 "Dense(W, B)"),
    "dropout_conv": ("conv", "Conv(3x3 SAME), Relu(), Dropout(0.6), Conv(3x3 SAME), Relu(), GlobalAvgPool(), "
                             "Dense(W, B)"),
    "index": ("conv", "Conv(3x3 SAME), Relu(), Index(Slice[:, 1:5, ::-2, :]), Conv(3x3 SAME), Relu(), "
                      "GlobalAvgPool(), Dense(W, B)"),
    "resize_linear_up": ("conv", "Conv(3x3 SAME), Relu(), ImageResize(9x7, linear), Conv(3x3 SAME), Relu(), "
                                 "GlobalAvgPool(), Dense(W, B)"),
    "resize_linear_down": ("conv", "Conv(3x3 SAME), ImageResize(4x3, linear), Relu(), Flatten(), Dense(W, B)"),
    "resize_nearest": ("conv", "Conv(3x3 SAME), Relu(), ImageResize(4x9, nearest), Conv(3x3 SAME), Relu(), "
                               "Flatten(), Dense(W, B)"),
}


def networks(stax) -> dict:
    """The neural-tangents networks of `CASES`, by name."""
    def dense():
        return stax.Dense(1, W, B)

    def conv():
        return stax.Conv(1, (3, 3), padding="SAME", W_std=W, b_std=B)

    def resized(shape, method):
        return stax.ImageResize((-1, *shape, -1), method)

    return {
        "repeat": stax.serial(dense(), stax.repeat(stax.serial(stax.Relu(), dense()), 3), stax.Relu(), dense()),
        "gelu": stax.serial(dense(), stax.Gelu(), dense(), stax.Gelu(), dense()),
        "gelu_approximate": stax.serial(dense(), stax.Gelu(approximate=True), dense()),
        "gabor": stax.serial(dense(), stax.Gabor(), dense(), stax.Gabor(), dense()),
        "dropout": stax.serial(dense(), stax.Relu(), stax.Dropout(0.7), dense(), stax.Relu(), dense()),
        "dense_pixels": stax.serial(conv(), stax.Relu(), dense(), stax.Relu(), stax.Flatten(), dense()),
        "dense_pixels_gap": stax.serial(conv(), stax.Relu(), dense(), stax.Relu(), stax.GlobalAvgPool(), dense()),
        "dropout_conv": stax.serial(conv(), stax.Relu(), stax.Dropout(0.6), conv(), stax.Relu(),
                                    stax.GlobalAvgPool(), dense()),
        "index": stax.serial(conv(), stax.Relu(), stax.Index(stax.Slice[:, 1:5, ::-2, :]), conv(), stax.Relu(),
                             stax.GlobalAvgPool(), dense()),
        "resize_linear_up": stax.serial(conv(), stax.Relu(), resized((9, 7), "linear"), conv(), stax.Relu(),
                                        stax.GlobalAvgPool(), dense()),
        "resize_linear_down": stax.serial(conv(), resized((4, 3), "linear"), stax.Relu(), stax.Flatten(),
                                          dense()),
        "resize_nearest": stax.serial(conv(), stax.Relu(), resized((4, 9), "nearest"), conv(), stax.Relu(),
                                      stax.Flatten(), dense()),
    }


def draw_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(29)
    return {k: rng.standard_normal(shape) for k, shape in (
        ("fc/x1", (4, 6)), ("fc/x2", (3, 6)), ("conv/x1", (3, 6, 6, 2)), ("conv/x2", (2, 6, 6, 2)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DATA)
    out = parser.parse_args().out
    import jax
    jax.config.update("jax_enable_x64", True)
    from neural_tangents import stax

    arrays = draw_inputs()
    cases = []
    for name, net in networks(stax).items():
        inputs, text = CASES[name]
        kernel_fn = net[2]
        keys = {}
        for pair, x2 in (("x1x1", None), ("x1x2", arrays[f"{inputs}/x2"])):
            kernels = kernel_fn(arrays[f"{inputs}/x1"], x2, ("nngp", "ntk"))
            for get, value in zip(("nngp", "ntk"), kernels, strict=True):
                keys[f"{get}_{pair}"] = f"{name}/{get}_{pair}"
                arrays[keys[f"{get}_{pair}"]] = np.asarray(value, dtype=np.float64)
        cases.append({"name": name, "architecture": text, "x1": f"{inputs}/x1", "x2": f"{inputs}/x2",
                      "arrays": keys})
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{NAME}.json").write_text(json.dumps({
        "source": "neural-tangents 0.6.5, jax 0.4.30, float64; benchmarks/make_reference_misc.py",
        "conventions": {"W_std": W, "b_std": B, "images": "NHWC", "Dropout rate": "keep probability"},
        "cases": cases}, indent=1) + "\n")
    np.savez_compressed(out / f"{NAME}.npz", **arrays)


if __name__ == "__main__":
    main()
