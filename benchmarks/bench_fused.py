"""Fused (torch.compile) against eager layer maps, same process: ms per kernel entry, the
compilation time, and the largest difference between the two kernels.

Cases `kind:size:N:depth` (float64): `fc` ReLU MLPs (width-512 Dense, inputs [N, 100]) and
`gap` CNTK-GAP networks ([Conv 3x3 SAME, ReLU] x depth on size x size x 3 images, GlobalAvgPool).
The fused times are warm (after the compiling call, whose time is printed separately; inductor
caches compiled code on disk, so a second process compiles faster than the first).

    python benchmarks/bench_fused.py [--cases fc:0:4000:3 gap:16:40:3 gap:32:6:3 gap:32:4:21]
"""
from __future__ import annotations

import argparse
import math
import os
import time

import torch

import ntklab as nk
from timing import best_of


def case(spec: str) -> tuple[nk.Serial, torch.Tensor]:
    kind, size, n, depth = spec.split(":")
    size, n, depth = int(size), int(n), int(depth)
    generator = torch.Generator().manual_seed(0)
    w, b = math.sqrt(2.0), 0.1
    if kind == "fc":
        return nk.mlp(depth, 512, W_std=w, b_std=b), torch.randn(n, 100, generator=generator,
                                                                 dtype=torch.float64)
    layers = []
    for _ in range(depth):
        layers += [nk.Conv(16, (3, 3), padding="SAME", W_std=w, b_std=b), nk.Relu()]
    net = nk.serial(*layers, nk.GlobalAvgPool(), nk.Dense(1, W_std=w, b_std=b))
    return net, torch.randn(n, 3, size, size, generator=generator, dtype=torch.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=["fc:0:4000:3", "gap:16:40:3", "gap:32:6:3",
                                                       "gap:32:4:21"])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f}, torch threads {torch.get_num_threads()}")
    print(f"{'case':>14} | {'eager ms/entry':>14} | {'fused ms/entry':>14} | {'eager/fused':>11} | "
          f"{'compile s':>9} | {'max diff / max|K|':>17}")
    for spec in args.cases:
        net, x = case(spec)
        entries = len(x) * (len(x) + 1) / 2
        eager = net.kernel(x, fused=False, progress=False)
        start = time.perf_counter()
        fused = net.kernel(x, fused=True, progress=False)
        first = time.perf_counter() - start
        t_fused = best_of(lambda net=net, x=x: net.kernel(x, fused=True, progress=False), args.repeats)
        t_eager = best_of(lambda net=net, x=x: net.kernel(x, fused=False, progress=False), args.repeats)
        diff = max(float((getattr(fused, g) - getattr(eager, g)).abs().max() / getattr(eager, g).abs().max())
                   for g in ("nngp", "ntk"))
        print(f"{spec:>14} | {t_eager / entries * 1e3:14.3f} | {t_fused / entries * 1e3:14.3f} | "
              f"{t_eager / t_fused:11.2f} | {max(first - t_fused, 0.0):9.1f} | {diff:17.1e}", flush=True)


if __name__ == "__main__":
    main()
