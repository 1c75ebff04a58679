"""float32 kernels: their error against float64 and the time they save, same run.

For ReLU MLPs and CNTK-GAP networks of depth 1 to 21 (W_std sqrt 2, b_std 0.1; CNTK-GAP:
[Conv 3x3 SAME, ReLU] x depth on 8x8x3 images, GlobalAvgPool, Dense), the NTK and NNGP of N
inputs with themselves in float32 and float64: the largest error relative to the largest
entry, the largest error relative to each entry, whether the float32 diagonal equals the
kernel of each input alone (identical inputs at correlation exactly 1 in float32 too), and the
float64 / float32 time ratio.

    python benchmarks/bench_float32.py [--depths 1 2 3 6 11 21]
"""
from __future__ import annotations

import argparse
import math
import os
import time

import torch

import ntklab as nk


def network(kind: str, depth: int) -> nk.Serial:
    w, b = math.sqrt(2.0), 0.1
    if kind == "fc":
        return nk.mlp(depth, 512, W_std=w, b_std=b)
    layers = []
    for _ in range(depth):
        layers += [nk.Conv(16, (3, 3), padding="SAME", W_std=w, b_std=b), nk.Relu()]
    return nk.serial(*layers, nk.GlobalAvgPool(), nk.Dense(1, W_std=w, b_std=b))


def timed(net: nk.Serial, x: torch.Tensor) -> tuple[nk.Kernel, float]:
    net.kernel(x[:2])
    start = time.perf_counter()
    kernel = net.kernel(x, progress=False)
    return kernel, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[1, 2, 3, 6, 11, 21])
    parser.add_argument("--n-fc", type=int, default=2000)
    parser.add_argument("--n-cntk", type=int, default=24)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f}, torch threads {torch.get_num_threads()}")
    print(f"{'network':>16} | {'kernel':>6} | {'max err / max|K|':>16} | {'max entry rel. err':>18} | "
          f"{'diag = alone':>12} | {'f64/f32 time':>12}")
    generator = torch.Generator().manual_seed(0)
    inputs = {"fc": torch.randn(args.n_fc, 32, generator=generator, dtype=torch.float64),
              "cntk-gap": torch.randn(args.n_cntk, 3, 8, 8, generator=generator, dtype=torch.float64)}
    for kind, x in inputs.items():
        for depth in args.depths:
            net = network(kind, depth)
            k64, t64 = timed(net, x)
            k32, t32 = timed(net, x.float())
            alone = torch.stack([net.kernel(x[i:i + 1].float(), get="ntk")[0, 0] for i in range(4)])
            exact_diagonal = bool(torch.equal(alone, k32.ntk.diagonal()[:4]))
            for name in ("nngp", "ntk"):
                a, b = getattr(k32, name).double(), getattr(k64, name)
                error = (a - b).abs()
                print(f"{kind + ' depth ' + str(depth):>16} | {name:>6} | {float(error.max() / b.abs().max()):16.1e} | "
                      f"{float((error / b.abs()).max()):18.1e} | {str(exact_diagonal):>12} | "
                      f"{t64 / t32:11.1f}x", flush=True)


if __name__ == "__main__":
    main()
