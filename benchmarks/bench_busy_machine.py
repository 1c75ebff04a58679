"""Kernels on an idle and on a busy machine: ntklab's default (blocks shared by worker threads,
each running torch single-threaded) against `workers=1` with torch's intra-op threads (the
default before) and against one thread, in the same run.

The recursions are long chains of small memory-bound operations; torch's intra-op parallel
regions make every thread wait for the slowest, so with other work on the cores they slow
down many times over, while independent blocks do not.  `--busy K` starts K spinning
processes for the busy half of the run.

    python benchmarks/bench_busy_machine.py [--busy 2]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time

import torch

import ntklab as nk
from bench_architectures import architecture, inputs

CASES = [("fc", 4000), ("resnet-gap", 20), ("strided", 60), ("transformer", 200)]


def spin() -> None:
    while True:
        pass


def seconds_per_entry(case: str, n: int, mode: str) -> float:
    net = architecture(nk, case, 16) if case != "fc" else nk.mlp(3, 512, W_std=1.5, b_std=0.05)
    x = (torch.from_numpy(inputs(case, 16, n)) if case != "fc" else
         torch.randn(n, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    threads = torch.get_num_threads()
    options = {"intra-op": {"workers": 1}, "default": {}, "one thread": {}}[mode]
    if mode == "one thread":
        torch.set_num_threads(1)
    try:
        net.kernel(x[:4], get="ntk", **options)
        start = time.perf_counter()
        net.kernel(x, get="ntk", progress=False, **options)
        return (time.perf_counter() - start) / n ** 2
    finally:
        torch.set_num_threads(threads)


def table(title: str) -> None:
    print(f"\n{title} (load average {os.getloadavg()[0]:.1f}, torch threads {torch.get_num_threads()}); "
          f"us per kernel entry")
    print(f"{'case':>16} | {'default':>9} | {'workers=1':>9} | {'one thread':>10} | default vs workers=1")
    for case, n in CASES:
        t = {mode: seconds_per_entry(case, n, mode) * 1e6 for mode in ("default", "intra-op", "one thread")}
        print(f"{case + ' N=' + str(n):>16} | {t['default']:9.2f} | {t['intra-op']:9.2f} | "
              f"{t['one thread']:10.2f} | {t['intra-op'] / t['default']:.1f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--busy", type=int, default=os.cpu_count() or 1,
                        help="spinning processes for the busy half")
    args = parser.parse_args()
    table("idle")
    spinners = [mp.get_context("spawn").Process(target=spin, daemon=True) for _ in range(args.busy)]
    for process in spinners:
        process.start()
    try:
        time.sleep(2)
        table(f"busy: {args.busy} spinning processes")
    finally:
        for process in spinners:
            process.kill()


if __name__ == "__main__":
    main()
