"""Empirical NTK: ntklab against the two methods of PyTorch's torch.func NTK tutorial.

The tutorial ("Neural Tangent Kernels", pytorch.org/functorch) computes the
empirical NTK by (1) Jacobian contraction: per-sample Jacobians of x1 and of x2
by vmap(jacrev), contracted per parameter with einsum and summed; (2) NTK-vector
products: vmap over x1 and x2 of vjp-then-jvp with the basis of output
cotangents.  Both are re-implemented here (from the tutorial's description) as
baselines and run in the same benchmark run, on the same inputs and models:

  MLP: 100 -> 512 -> 512 -> 512 -> 10 (ReLU), inputs [N, 100]
  MLP784: 784 -> 512 -> 512 -> 10 (ReLU), inputs [N, 784]
  CNN: the tutorial's small CNN on [N, 3, 32, 32]: three 3x3 convolutions with
       32 channels (ReLU), flatten, linear to 10 outputs

for N in 64 ... 512 and mode "trace" and "full" (float32, Gram matrix of x with
itself, as in the tutorial's usage x_train vs x_train).

Each measurement runs in its own child process with an address-space cap
(--cap, default 12 GiB), so a baseline that needs more memory fails cleanly
with "out of memory" instead of taking the machine down; peak memory is the
child's peak resident set size.  ntklab runs with max_memory = cap / 4.

    python benchmarks/bench_empirical_ntk.py [--sizes 64 128 256 512] [--cap 12GiB]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

import isolated


# ----------------------------------------------------------------- models
def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(100, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                         nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))


def mlp784() -> nn.Module:
    """The MLP of issue 16's target: 784 -> 512 -> 512 -> 10."""
    return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                         nn.Linear(512, 10))


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3)
        self.conv2 = nn.Conv2d(32, 32, 3)
        self.conv3 = nn.Conv2d(32, 32, 3)
        self.fc = nn.Linear(32 * 26 * 26, 10)

    def forward(self, x):
        x = self.conv1(x).relu()
        x = self.conv2(x).relu()
        x = self.conv3(x).flatten(1)
        return self.fc(x)


MODELS = {"mlp": (mlp, (100,)), "mlp784": (mlp784, (784,)), "cnn": (CNN, (3, 32, 32))}


# ----------------------------------------------------------------- tutorial baselines
def tutorial_jacobian_contraction(model, x1, x2, mode):
    params = {k: v.detach() for k, v in model.named_parameters()}

    def single(p, x):
        return functional_call(model, p, (x[None],)).squeeze(0)

    jac1 = vmap(jacrev(single), (None, 0))(params, x1)
    jac2 = vmap(jacrev(single), (None, 0))(params, x2)
    jac1 = [j.flatten(2) for j in jac1.values()]
    jac2 = [j.flatten(2) for j in jac2.values()]
    equation = {"full": "Naf,Mbf->NMab", "trace": "Naf,Maf->NM"}[mode]
    return torch.stack([torch.einsum(equation, a, b) for a, b in zip(jac1, jac2, strict=True)]).sum(0)


def tutorial_ntk_vector_products(model, x1, x2, mode):
    params = {k: v.detach() for k, v in model.named_parameters()}

    def single(p, x):
        return functional_call(model, p, (x[None],)).squeeze(0)

    def pair(a, b):
        out, pullback = vjp(lambda p: single(p, a), params)

        def column(vec):
            return jvp(lambda p: single(p, b), (params,), pullback(vec))[1]
        return vmap(column)(torch.eye(out.numel(), dtype=out.dtype))

    result = vmap(vmap(pair, (None, 0)), (0, None))(x1, x2)
    return result if mode == "full" else torch.einsum("NMKK->NM", result)


def ntklab_method(max_memory):
    def compute(model, x1, x2, mode):
        import ntklab as nk
        out = nk.empirical_ntk(model, x1, None if x2 is x1 else x2, mode=mode,
                               max_memory=max_memory, progress=False)
        return out
    return compute


# ----------------------------------------------------------------- one measurement
def one_run(model_name, method, mode, n, cap, seed=0):
    torch.manual_seed(seed)
    make, shape = MODELS[model_name]
    model = make()
    x = torch.randn(n, *shape)
    fn = {"jacobian": tutorial_jacobian_contraction, "ntk_vp": tutorial_ntk_vector_products,
          "ntklab": ntklab_method(cap // 4)}[method]
    fn(model, x[:4], x[:4], mode)            # warm-up (and auto's choice for small N)
    start = time.perf_counter()
    out = fn(model, x, x, mode)
    seconds = time.perf_counter() - start
    # the tutorial's trace is the sum over outputs, ntklab's the mean (neural-tangents)
    scale = out.new_tensor(10.0 if method == "ntklab" and mode == "trace" else 1.0)
    return {"seconds": seconds, "check": float((out * scale)[:3, :3].double().sum())}


def measure(model_name, method, mode, n, cap, timeout):
    return isolated.measure(one_run, (model_name, method, mode, n, cap), cap, timeout)


def cell(result):
    if result["seconds"] is None:
        return f"{result['error'][:16]:>16}"
    return f"{result['seconds']:9.3f} {result['peak_gib']:5.2f}"


def print_row(row):
    """One line of the table: each method's time and memory, the speed-up, a value check."""
    ours = row["ntklab"]["seconds"]
    best = min((row[m]["seconds"] for m in ("jacobian", "ntk_vp") if row[m]["seconds"] is not None),
               default=None)
    ratio = (f"{best / ours:.1f}x" if ours and best else "baselines fail" if ours else "ntklab failed")
    agree = [row[m]["check"] for m in ("ntklab", "jacobian", "ntk_vp") if row[m]["check"] is not None]
    if len(agree) > 1 and max(agree) - min(agree) > 1e-3 * max(map(abs, agree)):
        ratio += " (VALUES DISAGREE)"
    print(f"{row['model']:5} {row['mode']:6} {row['N']:5} | {cell(row['ntklab'])} | "
          f"{cell(row['jacobian']):>16} | {cell(row['ntk_vp'])} | {ratio:>26}", flush=True)


def sweep(model_name, mode, sizes, cap, timeout):
    """The rows of one model and mode over the sizes (a baseline that failed at N is not
    retried at larger N), each printed as it is measured."""
    rows, skip = [], set()
    for n in sizes:
        row = {"model": model_name, "mode": mode, "N": n}
        for method in ("ntklab", "jacobian", "ntk_vp"):
            if method in skip:
                row[method] = {"seconds": None, "error": "skipped (failed at smaller N)", "peak_gib": None,
                               "check": None}
                continue
            row[method] = measure(model_name, method, mode, n, cap, timeout)
            if row[method]["seconds"] is None:
                skip.add(method)
        rows.append(row)
        print_row(row)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--models", nargs="+", default=["mlp", "mlp784", "cnn"])
    parser.add_argument("--modes", nargs="+", default=["trace", "full"])
    parser.add_argument("--cap", default="12GiB", help="address-space cap per measurement")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per measurement")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    cap = isolated.parse_bytes(args.cap)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, "
          f"cap {cap / 2 ** 30:.1f} GiB per run, ntklab max_memory {cap / 4 / 2 ** 30:.1f} GiB")
    header = (f"{'model':5} {'mode':6} {'N':>5} | {'ntklab s':>9} {'GiB':>5} | {'jacobian s':>10} "
              f"{'GiB':>5} | {'ntk_vp s':>9} {'GiB':>5} | {'speed-up vs best baseline':>26}")
    print(header)
    print("-" * len(header))
    rows = [row for model_name in args.models for mode in args.modes
            for row in sweep(model_name, mode, args.sizes, cap, args.timeout)]
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    sys.exit(main())
