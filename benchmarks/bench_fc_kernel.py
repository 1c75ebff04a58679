"""Analytic NTK of a 3-hidden-layer ReLU net (W_std 1.5, b_std 0.05), x [N, 100],
float64, x against itself: ntklab vs neural-tangents 0.6.5 (jit-compiled, warm),
in the same process, and vs ntklab without its blocking/symmetry (one block of
x against a copy of x) as an ablation.  Prints times, ratios and the fraction of
the machine's measured float64 matmul rate.

Run: `make bench` (installs the optional `bench` extra: jax 0.4.30 + neural-tangents 0.6.5).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

import ntklab as nk
from timing import best_of

W_STD, B_STD, DEPTH, D = 1.5, 0.05, 3, 100
# elementwise operations per pair and layer in ntklab's ReLU + Dense recursion:
# outer product, square, subtract, clamp, sqrt, atan2, 2 for the derivative term,
# 2 for the new NNGP, 1 for the NTK product, 2 + 2 for the affine NNGP/NTK updates
OPS_PER_PAIR_LAYER = 15




def matmul_rate(n: int = 2048) -> float:
    a = torch.randn(n, n, dtype=torch.float64)
    seconds = best_of(lambda: a @ a, 3)
    return 2 * n ** 3 / seconds


def ntklab_net():
    layers = []
    for _ in range(DEPTH):
        layers += [nk.Dense(512, W_STD, B_STD), nk.Relu()]
    return nk.serial(*layers, nk.Dense(1, W_STD, B_STD))


def neural_tangents_fn():
    try:
        from jax import config
        config.update("jax_enable_x64", True)
        import jax
        from neural_tangents import stax
    except ImportError:
        return None
    layers = []
    for _ in range(DEPTH):
        layers += [stax.Dense(512, W_STD, B_STD), stax.Relu()]
    _, _, kernel_fn = stax.serial(*layers, stax.Dense(1, W_STD, B_STD))
    kernel_fn = jax.jit(kernel_fn, static_argnames="get")
    return lambda x: kernel_fn(x, None, "ntk").block_until_ready()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 4000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    net, nt_fn = ntklab_net(), neural_tangents_fn()
    rate = matmul_rate()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; float64 matmul "
          f"rate {rate / 1e9:.1f} GFLOP/s")
    if nt_fn is None:
        print("neural-tangents not installed (pip install -e '.[bench]'): its column is skipped")
    print(f"{'N':>6} {'ntklab s':>9} {'unblocked s':>11} {'nt 0.6.5 s':>10} {'nt/ntklab':>9} "
          f"{'ns/pair/layer':>13} {'% matmul rate':>13} {'max |diff| vs nt':>16}")
    rng = np.random.default_rng(0)
    for n in args.sizes:
        x_np = rng.standard_normal((n, D))
        x = torch.as_tensor(x_np, device=args.device)
        ours = best_of(lambda x=x: net.kernel(x, get="ntk", device=args.device, progress=False),
                       args.repeats)
        unblocked = best_of(lambda x=x, n=n: net.kernel(x, x.clone(), get="ntk", block_size=n,
                                                        device=args.device, progress=False), 1)
        nt_time, diff = float("nan"), float("nan")
        if nt_fn is not None:
            nt_time = best_of(lambda x_np=x_np: nt_fn(x_np), args.repeats)
            mine = net.kernel(x, get="ntk", device=args.device).cpu().numpy()
            gap = np.abs(mine - np.asarray(nt_fn(x_np)))
            np.fill_diagonal(gap, 0)  # nt's diagonal carries arccos rounding noise (tests/arch/test_reference.py)
            diff = float(gap.max())
        pairs = n * (n + 1) / 2  # symmetric: upper triangle only
        flops = 2 * pairs * D + pairs * (DEPTH + 1) * OPS_PER_PAIR_LAYER
        print(f"{n:>6} {ours:>9.3f} {unblocked:>11.3f} {nt_time:>10.3f} {nt_time / ours:>9.2f} "
              f"{ours / pairs / (DEPTH + 1) * 1e9:>13.2f} {100 * flops / ours / rate:>13.2f} "
              f"{diff:>16.2e}")


if __name__ == "__main__":
    main()
