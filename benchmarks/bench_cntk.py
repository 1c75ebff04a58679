"""CNTK-V and CNTK-GAP: ntklab against neural-tangents on the same CPU, same run.

Architecture (issue 5): three (or `:depth`) [Conv(8, 3x3, SAME, W_std = sqrt 2, b_std = 0.1),
ReLU] blocks, then Flatten (V) or GlobalAvgPool (GAP), then Dense(1); the NTK of N images
with themselves (x2 = None), float64 in both libraries.  Baselines:

  nt        neural_tangents.stax kernel_fn, jit-compiled, all N images at once
  nt.batch  the same through neural_tangents.batch(kernel_fn, batch_size=B), its
            tool for kernels that do not fit in memory

The transcendental floor (--floor L:size:N, default 21:32:6): ntklab's CNTK-GAP of N images
with themselves at L conv layers against the time of one atan2 and one sqrt per pixel pair,
unique image pair (N(N+1)/2) and layer, the least an exact ReLU arc-cosine recursion evaluates
(timed in the same child, best of 5, on the [P, P] tensor of one image pair: compute-bound, the
same per entry on 9 pairs).

Each measurement runs in its own child process under an address-space cap (--cap),
so a method that needs more memory reports "out of memory"; neural-tangents is
called twice and the second call timed (the first jit-compiles for those shapes);
peak memory is the child's peak RSS (for nt, of both calls).
Entries agree across methods (checked on the first 3x3 block).

    python benchmarks/bench_cntk.py [--cases gap:16:40 gap:16:100 v:32:100 ...] [--cap 20GiB]
                                    [--floor 21:32:6 | --floor none]
"""
from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np

import isolated
import versus_nt

CHANNELS, W_STD, B_STD = 8, math.sqrt(2.0), 0.1
DEFAULT_CASES = ["v:16:100", "v:32:100", "gap:16:40", "gap:16:100", "gap:32:10", "gap:32:20"]


def images(n: int, size: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 3, size, size))  # NCHW


def run_ntklab(readout: str, n: int, size: int, max_memory: int, depth: int = 3, device: str = "cpu") -> dict:
    import torch
    import ntklab as nk
    layers = []
    for _ in range(depth):
        layers += [nk.Conv(CHANNELS, (3, 3), None, "SAME", W_STD, B_STD), nk.Relu()]
    pool = nk.Flatten() if readout == "v" else nk.GlobalAvgPool()
    net = nk.serial(*layers, pool, nk.Dense(1, W_STD, B_STD))
    x = torch.from_numpy(images(n, size)).to(device)
    net.kernel(x[:2], get="ntk", progress=False)
    synchronize = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    synchronize()
    start = time.perf_counter()
    ntk = net.kernel(x, get="ntk", max_memory=max_memory, progress=False)
    synchronize()
    return {"seconds": time.perf_counter() - start, "check": float(ntk[:3, :3].sum())}


def run_floor(depth: int, size: int, n: int, max_memory: int) -> dict:
    """ntklab's CNTK-GAP time and its floor: atan2 + sqrt per pixel pair, unique pair and layer."""
    import torch
    positions = size * size
    cov = torch.rand(positions, positions, dtype=torch.float64) - 0.5
    root, theta = torch.rand_like(cov), torch.empty_like(cov)
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        torch.atan2(torch.sqrt(root, out=theta), cov, out=theta)
        timings.append((time.perf_counter() - start) / cov.numel())
    per_entry = min(timings)
    floor = per_entry * positions ** 2 * depth * n * (n + 1) / 2
    return {**run_ntklab("gap", n, size, max_memory, depth), "floor": floor, "floor_ns": per_entry * 1e9}


def run_nt(readout: str, n: int, size: int, batch_size: int | None, depth: int = 3) -> dict:
    versus_nt.find_nt()
    from neural_tangents import stax
    layers = []
    for _ in range(depth):
        layers += [stax.Conv(CHANNELS, (3, 3), padding="SAME", W_std=W_STD, b_std=B_STD), stax.Relu()]
    pool = stax.Flatten() if readout == "v" else stax.GlobalAvgPool()
    _, _, kernel_fn = stax.serial(*layers, pool, stax.Dense(1, W_STD, B_STD))
    return versus_nt.time_nt(kernel_fn, images(n, size).transpose(0, 2, 3, 1), batch_size)  # NHWC


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES,
                        help="readout:image_size:N[:conv layers, default 3], readout v (Flatten) or gap")
    parser.add_argument("--cap", default="20GiB", help="address-space cap per measurement")
    parser.add_argument("--max-memory", default="2GiB", help="ntklab's max_memory")
    parser.add_argument("--batch-size", type=int, default=10, help="nt.batch batch size")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per measurement")
    parser.add_argument("--floor", default="21:32:6",
                        help="conv layers:image size:N of the floor comparison, or 'none'")
    parser.add_argument("--device", default="cpu", help="ntklab's device (cuda: GPU time per entry; "
                        "neural-tangents stays on its own CPU build)")
    args = parser.parse_args()
    if args.device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            print("--device cuda: no CUDA GPU on this machine; skipped")
            return
    cap = isolated.parse_bytes(args.cap)
    print(f"load average {os.getloadavg()[0]:.1f}; float64, cap {cap / 2 ** 30:.0f} GiB per run, "
          f"ntklab max_memory {args.max_memory}, "
          f"nt.batch batch_size {args.batch_size}; time per kernel entry (N^2 entries)")
    print(versus_nt.header(28))
    for case in args.cases:
        readout, size, n, *depth = case.split(":")
        size, n, depth = int(size), int(n), int(depth[0]) if depth else 3
        results = {
            "ntklab": isolated.measure(run_ntklab, (readout, n, size, isolated.parse_bytes(args.max_memory),
                                                    depth, args.device), cap, args.timeout),
            "nt": isolated.measure(run_nt, (readout, n, size, None, depth), cap, args.timeout),
            "nt.batch": (isolated.measure(run_nt, (readout, n, size, args.batch_size, depth), cap, args.timeout)
                         if n % args.batch_size == 0 else versus_nt.skipped("N % batch")),
        }
        label = f"CNTK-{readout.upper()} L={depth} {size}x{size} N={n}"
        print(versus_nt.row(label, 28, results, n), flush=True)
    if args.floor != "none":
        depth, size, n = map(int, args.floor.split(":"))
        result = isolated.measure(run_floor, (depth, size, n, isolated.parse_bytes(args.max_memory)),
                                  cap, args.timeout)
        if result["seconds"] is None:
            print(f"floor at L={depth} {size}x{size} N={n}: {result['error']}")
        else:
            pair_layers = depth * n * (n + 1) / 2
            print(f"floor at L={depth} {size}x{size} N={n}: ntklab {result['seconds']:.2f} s "
                  f"({result['seconds'] / pair_layers * 1e3:.1f} ms per unique pair and layer), floor "
                  f"{result['floor']:.2f} s ({result['floor'] / pair_layers * 1e3:.1f} ms: atan2 + sqrt "
                  f"{result['floor_ns']:.2f} ns per entry): {result['seconds'] / result['floor']:.2f}x the floor")


if __name__ == "__main__":
    main()
