"""Kernel regression past memory: exact dense solve vs PCG (in memory and streamed from the store) vs
Nystrom on m centers vs ridge on random features of the NTK (`nk.kernels.RandomFeatures`), same run, on
an FC 3-layer ReLU NTK regression of a teacher network (d = 32).

For each solver: relative test error against the exact solve's prediction and against the targets,
wall time, the process's peak RSS growth (ru_maxrss, so run one size per process for clean numbers),
and CG iterations and residual. The exact solve holds the n x n kernel (8 n^2 bytes); PCG from the
store and Nystrom never do.

    python benchmarks/bench_solvers.py --n 20000 --centers 2000 5000 10000 --features 1024 4096
    python benchmarks/bench_solvers.py --quick          # n = 2000: seconds
    taskset -c 1 env OMP_NUM_THREADS=1 python benchmarks/bench_solvers.py --n 5000
"""
from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import torch

import ntklab as nk

NET = nk.mlp(3, 512, W_std=2 ** 0.5, b_std=0.1)   # the NTK of a 3-hidden-layer ReLU MLP


def teacher_task(n: int, n_test: int, d: int, seed: int = 0):
    """Targets of a random width-64 ReLU teacher on Gaussian inputs, plus noise of 10 % of their scale."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n + n_test, d, generator=generator, dtype=torch.float64)
    w1 = torch.randn(d, 64, generator=generator, dtype=torch.float64) / d ** 0.5
    w2 = torch.randn(64, 1, generator=generator, dtype=torch.float64) / 8
    y = torch.relu(x @ w1) @ w2
    y = y + 0.1 * y.std() * torch.randn(y.shape, generator=generator, dtype=torch.float64)
    return x[:n], y[:n], x[n:], y[n:]


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def timed(label, fn, rows):
    before, start = peak_rss_gib(), time.perf_counter()
    prediction, extra = fn()
    rows.append((label, prediction, time.perf_counter() - start, peak_rss_gib() - before, extra))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--centers", type=int, nargs="+", default=[2000, 5000, 10000])
    parser.add_argument("--diag-reg", type=float, default=1e-3)
    parser.add_argument("--rank", type=int, default=300)
    parser.add_argument("--rtol", type=float, default=1e-6, help="CG's relative residual (the test error "
                        "moves by far less than 1 %% below 1e-4)")
    parser.add_argument("--features", type=int, nargs="+", default=[1024, 4096],
                        help="random features per ReLU layer (the NTK map has about twice as many)")
    parser.add_argument("--tile-size", type=int, default=2048)
    parser.add_argument("--store-dtype", choices=["float64", "float32"], default="float64",
                        help="the store's dtype (float32 halves the disk and each pass; products in float64)")
    parser.add_argument("--store-dir", default=None, help="where the store is written (default: a temporary "
                        "folder, removed after)")
    parser.add_argument("--pc-centers", type=int, default=None,
                        help="precondition CG with the column Nystrom approximation on this many centers "
                        "(NystromPreconditioner.from_centers) instead of the randomized one of --rank")
    parser.add_argument("--solvers", nargs="+", choices=["exact", "memory", "store", "nystrom", "features"],
                        default=["exact", "memory", "store", "nystrom", "features"],
                        help="which to run (one per process gives each its own peak RSS)")
    parser.add_argument("--device", default="cpu", help="where the kernels, products and solves run (cuda: the "
                        "GPU timings; the store stays on disk, its tiles are copied to the device)")
    parser.add_argument("--quick", action="store_true", help="n = 2000, 500 test points, 200 / 500 centers, "
                        "256 / 1024 features: runs in seconds")
    args = parser.parse_args()
    if args.quick:
        args.n, args.n_test, args.centers, args.features, args.rank = 2000, 500, [200, 500], [256, 1024], 100
    return args


def main() -> None:
    args = parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("--device cuda: no CUDA GPU on this machine; skipped")
        return
    print(f"load average {os.getloadavg()[0]:.1f}, torch threads {torch.get_num_threads()}, n = {args.n}, "
          f"device {args.device}")
    x, y, x_test, y_test = (t.to(args.device) for t in teacher_task(args.n, args.n_test, 32))
    rows: list = []
    if "exact" in args.solvers:
        exact_solve(args, x, y, x_test, rows)
    if "memory" in args.solvers:
        pcg_in_memory(args, x, y, x_test, rows)
    if "store" in args.solvers:
        pcg_from_store(args, x, y, x_test, rows)
    for m in args.centers if "nystrom" in args.solvers else []:
        if m > args.n:
            continue

        def nystrom(m=m):
            model = nk.predict.nystrom_regression(NET, x, y, centers=m, diag_reg=args.diag_reg, block_size=2048)
            return model.predict(x_test), f"m = {m}"
        timed(f"Nystrom, {m} centers", nystrom, rows)
    for m in args.features if "features" in args.solvers else []:
        random_features(args, m, x, y, x_test, rows)
    report(rows, y_test, exact="exact" in args.solvers)


def exact_solve(args, x, y, x_test, rows) -> None:
    """The dense kernel and its Cholesky solve: the reference of the other rows."""
    def dense():
        k = NET.kernel(x, get="ntk", progress=False)
        alpha = nk.predict.solve(k, y, diag_reg=args.diag_reg)
        return NET.kernel(x_test, x, get="ntk") @ alpha, "Cholesky"
    timed("exact (dense Cholesky)", dense, rows)


def pcg_in_memory(args, x, y, x_test, rows) -> None:
    """PCG on the dense kernel (the same preconditioner as from the store)."""
    def pcg_memory():
        k = NET.kernel(x, get="ntk", progress=False)
        k_test = NET.kernel(x_test, x, get="ntk")
        result = nk.predict.conjugate_gradients(k, y, diag_reg=args.diag_reg, rtol=args.rtol,
                                                **preconditioner(args, x))
        residual = float(result.relative_residual.max())
        return k_test @ result.solution, f"{result.iterations} it, residual {residual:.1e}"
    timed(f"PCG in memory ({preconditioner_label(args)})", pcg_memory, rows)


def random_features(args, m, x, y, x_test, rows) -> None:
    """Ridge on m random features per layer of the NTK (D = 2m + 1)."""
    def features():
        phi = nk.kernels.RandomFeatures(NET, x.shape[1], features=m, get="ntk")
        model = nk.predict.feature_regression(phi, x, y, diag_reg=args.diag_reg, block_size=2048)
        return model.predict(x_test), f"D = {phi.dimension}"
    timed(f"random features, {m} per layer", features, rows)


def preconditioner(args, x) -> dict:
    """conjugate_gradients' preconditioner arguments: the column Nystrom approximation on --pc-centers
    centers (built here, timed with the solve), or the randomized one of rank --rank."""
    if args.pc_centers is None:
        return {"rank": args.rank}
    return {"preconditioner": nk.predict.NystromPreconditioner.from_centers(NET, x, centers=args.pc_centers,
                                                                            block_size=2048)}


def preconditioner_label(args) -> str:
    return f"{args.pc_centers} centers" if args.pc_centers else f"rank {args.rank}"


def pcg_from_store(args, x, y, x_test, rows) -> None:
    """Compute the kernel into a store, then PCG whose products stream it (the kernel's time and the
    solve's are reported apart in the notes)."""
    with tempfile.TemporaryDirectory(dir=args.store_dir) as folder:
        store_path = Path(folder) / "k.zarr"

        def pcg_store():
            start = time.perf_counter()
            store = nk.kernels.compute_kernel(NET, x, store=store_path, get="ntk", tile_size=args.tile_size,
                                              dtype=getattr(torch, args.store_dtype), device=args.device,
                                              progress=True)
            computed = time.perf_counter() - start
            operator = nk.kernels.StoredKernel(store, "ntk", progress=False, device=args.device)
            result = nk.predict.conjugate_gradients(operator, y, diag_reg=args.diag_reg, rtol=args.rtol,
                                                    progress=True, **preconditioner(args, x))
            prediction = torch.cat([NET.kernel(x_test[i:i + 500], x, get="ntk") @ result.solution
                                    for i in range(0, len(x_test), 500)])
            return prediction, (f"{result.iterations} it, residual {float(result.relative_residual.max()):.1e}, "
                                f"{operator.passes} passes, store {args.store_dtype} {computed:.0f} s, "
                                f"solve {time.perf_counter() - start - computed:.0f} s")
        timed(f"PCG from the store ({preconditioner_label(args)})", pcg_store, rows)


def report(rows, y_test, exact: bool) -> None:
    rows = [(label, prediction.cpu(), seconds, rss, extra) for label, prediction, seconds, rss, extra in rows]
    y_test = y_test.cpu()
    print(f"{'solver':>36} | {'vs exact':>9} | {'test rel. err':>13} | {'time s':>8} | {'+peak RSS GiB':>13} | notes")
    for label, prediction, seconds, rss, extra in rows:
        versus = f"{float((prediction - rows[0][1]).norm() / rows[0][1].norm()):9.2e}" if exact else f"{'-':>9}"
        error = float((prediction - y_test).norm() / y_test.norm())
        print(f"{label:>36} | {versus} | {error:13.4f} | {seconds:8.1f} | {rss:13.2f} | {extra}")


if __name__ == "__main__":
    main()
