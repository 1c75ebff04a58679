"""Peak memory of `empirical_ntk` against its `max_memory` promise (issue 13).

A 9.3M-parameter MLP (100 -> 3000 -> 3000 -> 10, ReLU, float32), N samples, each strategy
in its own child process (`isolated.measure`): peak resident set size of the child minus
its size after building the model and inputs (the working memory `max_memory` bounds), or
the clear refusal when one sample's Jacobian alone does not fit.

    python benchmarks/bench_empirical_memory.py [--n 48] [--max-memory 2GiB 4GiB]
"""
from __future__ import annotations

import argparse
import resource
import time

import isolated


def one_run(implementation: str, n: int, max_memory: str) -> dict:
    import torch
    from torch import nn

    import ntklab as nk
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(100, 3000), nn.ReLU(), nn.Linear(3000, 3000), nn.ReLU(),
                          nn.Linear(3000, 10))
    x = torch.randn(n, 100)
    model(x[:2])
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    start = time.perf_counter()
    try:
        out = nk.empirical_ntk(model, x, mode="trace", implementation=implementation,
                               max_memory=max_memory, progress=False)
    except ValueError as err:
        return {"seconds": None, "check": None, "refused": str(err)[:90], "baseline_gib": baseline}
    return {"seconds": time.perf_counter() - start, "check": float(out.trace()), "refused": None,
            "baseline_gib": baseline}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=48)
    parser.add_argument("--max-memory", nargs="+", default=["1GiB", "4GiB"])
    args = parser.parse_args()
    print(f"{'implementation':>14} {'max_memory':>10} {'seconds':>8} {'working GiB':>11}  note")
    for max_memory in args.max_memory:
        for implementation in ("structured", "jacobian", "ntk_vp"):
            result = isolated.measure(one_run, (implementation, args.n, max_memory),
                                      isolated.parse_bytes("20GiB"), 600)
            working = (result["peak_gib"] - result["baseline_gib"]) if result.get("baseline_gib") else None
            seconds = f"{result['seconds']:8.1f}" if result["seconds"] else f"{'-':>8}"
            note = result.get("refused") or result.get("error") or ""
            print(f"{implementation:>14} {max_memory:>10} {seconds} "
                  f"{working if working is None else round(working, 2)!s:>11}  {note}", flush=True)


if __name__ == "__main__":
    main()
