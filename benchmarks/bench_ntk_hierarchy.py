"""The NTK hierarchy (`nk.ntk_hierarchy`) and gradient-flow training of a
tanh MLP on the CPU and, where there is one, on a CUDA GPU, in the same process (seconds and
ratios); with --widths, the `nearly-kernel` experiment's trained-network comparison on the
fastest device for wider networks than its default run (rows as they finish, then the slopes).

    python benchmarks/bench_ntk_hierarchy.py --width 512
    python benchmarks/bench_ntk_hierarchy.py --widths 512,1024,2048,4096 --seeds 4 --csv deep.csv
"""
from __future__ import annotations

import argparse
import csv
import os
import time

import torch

import ntklab as nk
from ntklab.lab.experiments import nearly_kernel as experiment


def timed(device: torch.device, depth: int, width: int, x, y, x_test) -> dict:
    model = nk.mlp(depth, width, W_std=1.5, b_std=0.1, activation=nk.Tanh()).module(
        x.shape[1], dtype=torch.float64, device=device)
    x, y, x_test = x.to(device), y.to(device), x_test.to(device)
    nk.ntk_hierarchy(model, x, x_test)                       # warm-up (lazy initialization, kernels)
    started = time.perf_counter()
    hierarchy = nk.ntk_hierarchy(model, x, x_test)
    if device.type == "cuda":
        torch.cuda.synchronize()
    middle = time.perf_counter()
    smallest = float(torch.linalg.eigvalsh(hierarchy.ntk[:len(x)])[0])
    nk.train_gradient_flow(model, x, y, [10.0 / smallest], x_test)
    return {"hierarchy_s": middle - started, "flow_s": time.perf_counter() - middle}


def width_sweep(args, x, y, x_test, device) -> None:
    """Trained networks against their 1/n predictions over the widths of --widths and the seeds
    (rows to --csv after each), then the fitted slopes and the per-width summary."""
    sweep = experiment.Config(networks=((args.depth, tuple(int(w) for w in args.widths.split(","))),),
                              network_seeds=args.seeds)
    rows = []
    for depth, widths in sweep.networks:
        for width in widths:
            for seed in range(args.first_seed, args.first_seed + sweep.network_seeds):
                rows.append(experiment._network_errors(sweep, depth, width, seed, x.to(device), y.to(device),
                                                       x_test.to(device)))
                print({k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)
                with open(args.csv, "w", newline="") as handle:     # rewritten after each row
                    writer = csv.DictWriter(handle, list(rows[0]))
                    writer.writeheader()
                    writer.writerows(rows)
    if len({r["width"] for r in rows}) > 1:
        for row in experiment._network_slopes(sweep, experiment._network_fits(sweep, rows)):
            print(row)
    for row in experiment._network_summary(rows):
        print({k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in row.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--width", type=int, default=512, help="width of the CPU/GPU timing")
    parser.add_argument("--widths", default="", help="comma-separated widths of the sweep (none: no sweep)")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--csv", default="ntk_hierarchy.csv")
    args = parser.parse_args()
    cfg = experiment.Config()
    x, y, x_test, _ = experiment._task(cfg, 0)
    x, y, x_test = x[:cfg.network_train], y[:cfg.network_train, 0], x_test[:cfg.network_test]
    gpu = torch.device("cuda") if torch.cuda.is_available() else None
    print(f"torch {torch.__version__}, GPU: {torch.cuda.get_device_name() if gpu else 'none'}, "
          f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}")

    times = {"cpu": timed(torch.device("cpu"), args.depth, args.width, x, y, x_test)}
    if gpu:
        times["cuda"] = timed(gpu, args.depth, args.width, x, y, x_test)
    for device, t in times.items():
        print(f"depth {args.depth} width {args.width} on {device}: hierarchy {t['hierarchy_s']:.2f} s, "
              f"gradient flow {t['flow_s']:.2f} s")
    if gpu:
        print("CPU / GPU:", ", ".join(f"{k} {times['cpu'][k] / times['cuda'][k]:.1f}x" for k in times["cpu"]))

    if args.widths:
        width_sweep(args, x, y, x_test, gpu or torch.device("cpu"))


if __name__ == "__main__":
    main()
