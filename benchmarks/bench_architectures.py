"""Architectures beyond a chain: ntklab against neural-tangents on the same CPU, same run.

Cases (the NTK of N inputs with themselves, x2 = None, float64 in both libraries; W_std 1.5,
b_std 0.05 throughout):

  resnet-gap   WideResNet-style CNN on 16x16x3 images: Conv(C, 3x3, SAME), residual block
               [Relu, Conv, Relu, Conv] + identity, AvgPool 2x2 stride 2, residual block, Relu,
               GlobalAvgPool, Dense(1)
  avgpool-v    Conv, Relu, AvgPool 3x3 stride 1 SAME, Conv, Relu, AvgPool 2x2 stride 2,
               Flatten, Dense(1) (Myrtle-style local pooling)
  strided      Conv 3x3 stride 2 SAME, Relu, Conv 3x3 CIRCULAR, Relu, Conv 2x2 VALID, Relu,
               GlobalAvgPool, Dense(1)
  transformer  token sequences [N, T, 8]: Dense, GlobalSelfAttention (4 heads, softmax),
               LayerNorm, Dense, Relu, GlobalAvgPool over tokens, Dense(1)
  residual-mlp Dense, two residual blocks [Relu, Dense, Relu, Dense] + identity, Relu, Dense(1)

Baselines: `nt` (neural_tangents.stax kernel_fn, jit-compiled, all N at once) and `nt.batch`
(the same through neural_tangents.batch(kernel_fn, batch_size=B), its memory-bounded tool).
Each measurement runs in its own child process under an address-space cap (isolated.py);
neural-tangents is called twice and the second call timed (the first compiles); peak memory
is the child's peak RSS.  Entries are checked to agree across methods.

    python benchmarks/bench_architectures.py [--cases resnet-gap:16:100 transformer:16:200 ...]

Pin it to one core for the one-core figures (`OMP_NUM_THREADS=1 taskset -c 1` and
XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"); the load
average is printed beside the figures.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

import isolated
import versus_nt

W, B = 1.5, 0.05
DEFAULT_CASES = ["resnet-gap:16:100", "avgpool-v:16:100", "strided:16:100", "transformer:16:200",
                 "residual-mlp:32:1000"]


def inputs(case: str, size: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    if case in ("resnet-gap", "avgpool-v", "strided"):
        return rng.standard_normal((n, 3, size, size))           # NCHW
    if case == "transformer":
        return rng.standard_normal((n, size, 8))                 # [N, T, C]
    return rng.standard_normal((n, size))


def architecture(lib, case: str, channels: int):
    """The case's network in ntklab (`lib` = ntklab) or neural-tangents (`lib` = stax)."""
    nt = lib.__name__ != "ntklab"
    serial = lib.serial
    conv = lambda filt=(3, 3), **kw: lib.Conv(channels, filt, W_std=W, b_std=B, **kw)  # noqa: E731
    dense = lambda n: lib.Dense(n, W_std=W, b_std=B)  # noqa: E731
    gap = lib.GlobalAvgPool()

    def residual(*branch):
        return serial(lib.FanOut(2), lib.parallel(serial(*branch), lib.Identity()), lib.FanInSum())

    if case == "resnet-gap":
        block = lambda: residual(lib.Relu(), conv(padding="SAME"), lib.Relu(), conv(padding="SAME"))  # noqa: E731
        return serial(conv(padding="SAME"), block(), lib.AvgPool((2, 2), strides=(2, 2)), block(),
                      lib.Relu(), gap, dense(1))
    if case == "avgpool-v":
        return serial(conv(padding="SAME"), lib.Relu(), lib.AvgPool((3, 3), strides=(1, 1), padding="SAME"),
                      conv(padding="SAME"), lib.Relu(), lib.AvgPool((2, 2), strides=(2, 2)),
                      lib.Flatten(), dense(1))
    if case == "strided":
        return serial(conv(strides=(2, 2), padding="SAME"), lib.Relu(), conv(padding="CIRCULAR"),
                      lib.Relu(), conv((2, 2), padding="VALID"), lib.Relu(), gap, dense(1))
    if case == "transformer":
        attention = lib.GlobalSelfAttention(channels, channels, channels, n_heads=4, linear_scaling=True)
        return serial(dense(channels), attention, lib.LayerNorm(axis=-1), dense(channels), lib.Relu(),
                      gap, dense(1))
    if case == "residual-mlp":
        block = lambda: residual(lib.Relu(), dense(512), lib.Relu(), dense(512))  # noqa: E731
        return serial(dense(512), block(), block(), lib.Relu(), dense(1))
    raise ValueError(f"unknown case {case!r}; cases: resnet-gap, avgpool-v, strided, transformer, "
                     f"residual-mlp ({'nt' if nt else 'ntklab'})")


def run_ntklab(case: str, size: int, n: int, channels: int, max_memory: int) -> dict:
    import torch
    import ntklab
    net = architecture(ntklab, case, channels)
    x = torch.from_numpy(inputs(case, size, n))
    net.kernel(x[:2], get="ntk")
    start = time.perf_counter()
    ntk = net.kernel(x, get="ntk", max_memory=max_memory, progress=False)
    return {"seconds": time.perf_counter() - start, "check": float(ntk[:3, :3].sum())}


def run_nt(case: str, size: int, n: int, channels: int, batch_size: int | None) -> dict:
    versus_nt.find_nt()
    from neural_tangents import stax
    _, _, kernel_fn = architecture(stax, case, channels)
    x = inputs(case, size, n)
    return versus_nt.time_nt(kernel_fn, x.transpose(0, 2, 3, 1) if x.ndim == 4 else x, batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES,
                        help="case:size:N (size: image side, tokens, or input dimension)")
    parser.add_argument("--channels", type=int, default=16, help="channels of Conv/attention (any: "
                        "the kernels do not depend on it)")
    parser.add_argument("--cap", default="20GiB", help="address-space cap per measurement")
    parser.add_argument("--max-memory", default="2GiB", help="ntklab's max_memory")
    parser.add_argument("--batch-size", type=int, default=10, help="nt.batch batch size")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per measurement")
    parser.add_argument("--skip-nt", action="store_true", help="ntklab only (memory check)")
    args = parser.parse_args()
    cap = isolated.parse_bytes(args.cap)
    print(f"float64, cap {cap / 2 ** 30:.0f} GiB per run, ntklab max_memory {args.max_memory}, "
          f"nt.batch batch_size {args.batch_size}; load average {os.getloadavg()[0]:.1f}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; time per kernel entry")
    print(versus_nt.header(24))
    for spec in args.cases:
        case, size, n = spec.split(":")
        size, n = int(size), int(n)
        skip = versus_nt.skipped("skipped")
        results = {
            "ntklab": isolated.measure(run_ntklab, (case, size, n, args.channels,
                                                    isolated.parse_bytes(args.max_memory)), cap, args.timeout),
            "nt": skip if args.skip_nt else
            isolated.measure(run_nt, (case, size, n, args.channels, None), cap, args.timeout),
            "nt.batch": skip if args.skip_nt else versus_nt.skipped("N % batch") if n % args.batch_size else
            isolated.measure(run_nt, (case, size, n, args.channels, args.batch_size), cap, args.timeout),
        }
        print(versus_nt.row(spec, 24, results, n), flush=True)


if __name__ == "__main__":
    main()
