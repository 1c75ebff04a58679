"""Empirical NTK of ntklab's own finite networks (`net.module(...)`): the structured rule
(now applied to ntklab's Dense and Conv modules) against the vmap/jacrev path they took
before (`implementation="jacobian"`), in the same process, same inputs.

  MLP: nk.mlp(4, 512, W_std=sqrt 2, b_std=0.1) on x [N, 8]  (the finite-width study's nets)
  CNN: 3 x [Conv(32, 3x3, SAME), Relu] + GlobalAvgPool + Dense(10) on [N, 3, 16, 16]

Run it pinned to one core and with all cores; the load average is printed beside each
figure (threads of elementwise ops slow down many times over on a busy machine):

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/bench_ntklab_modules.py
    python benchmarks/bench_ntklab_modules.py
"""
from __future__ import annotations

import argparse
import math
import os

import torch

import ntklab as nk
from timing import best_of


def networks():
    mlp = nk.mlp(4, 512, W_std=math.sqrt(2), b_std=0.1)
    cnn = nk.serial(*[layer for _ in range(3) for layer in (nk.Conv(32, (3, 3), padding="SAME", W_std=1.4),
                                                            nk.Relu())],
                    nk.GlobalAvgPool(), nk.Dense(10))
    return {"mlp": (mlp, (8,)), "cnn": (cnn, (3, 16, 16))}




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}")
    print(f"{'net':5} {'N':>5} {'mode':>6} {'structured s':>13} {'jacobian s':>11} {'ratio':>7} "
          f"{'max rel diff':>13} {'load':>5}")
    for name, (arch, shape) in networks().items():
        model = arch.module(shape, seed=0, dtype=torch.float32)
        for n in args.sizes:
            x = torch.randn(n, *shape, generator=torch.Generator().manual_seed(0))
            for mode in ("trace", "full"):
                run = {impl: (lambda impl=impl, model=model, x=x, mode=mode: nk.empirical_ntk(
                    model, x, mode=mode, implementation=impl, progress=False))
                       for impl in ("structured", "jacobian")}
                structured, jacobian = run["structured"](), run["jacobian"]()
                diff = float((structured - jacobian).abs().max() / jacobian.abs().max())
                seconds = {impl: best_of(fn, args.repeats) for impl, fn in run.items()}
                print(f"{name:5} {n:5d} {mode:>6} {seconds['structured']:13.3f} {seconds['jacobian']:11.3f} "
                      f"{seconds['jacobian'] / seconds['structured']:7.1f}x {diff:13.1e} "
                      f"{os.getloadavg()[0]:5.2f}", flush=True)


if __name__ == "__main__":
    main()
