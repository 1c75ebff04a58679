"""The `ntklab` command: list and run experiments, compute kernels from files."""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._core.extras import import_extra

if TYPE_CHECKING:
    import click
else:
    click = import_extra("click", "lab")   # the command line is part of the lab extra

from . import experiments  # noqa: E402
from ..arch.spec import parse_architecture  # noqa: E402
from .data import load_array  # noqa: E402
from ..kernels.engine import check_scheduler, compute_kernel  # noqa: E402
from .._core.files import atomic_write_bytes, check_writable  # noqa: E402


def _fail(err: Exception) -> None:
    raise click.ClickException(str(err))


def _flag(ctx: click.Context, name: str) -> str | None:
    """The flag of option `name` when the user gave it ("--verify/--no-verify"), else None."""
    if ctx.get_parameter_source(name) in (None, click.core.ParameterSource.DEFAULT):
        return None
    param = next(p for p in ctx.command.params if p.name == name)
    return "/".join(param.opts + param.secondary_opts)


def _check_kernel_out(ctx: click.Context, out: Path, overwrite: bool) -> None:
    """`ntklab kernel --out` before any work: a .npz or .zarr path in a writable folder; flags
    that only a .zarr store uses are refused with .npz; an existing .npz is replaced only
    with --overwrite; an existing .zarr store is resumed, or with --overwrite replaced (only
    a kernel store: any other folder is refused).  The scheduler is checked here too."""
    if out.suffix not in (".npz", ".zarr"):
        raise ValueError(f"--out must end in .npz or .zarr, got {str(out)!r}")
    if out.suffix == ".zarr":
        if overwrite and out.exists() and not (out / "ntklab.json").is_file():
            raise ValueError(f"--out {str(out)!r} is not a kernel store (no ntklab.json), so "
                             f"--overwrite leaves it alone; choose another path")
        check_scheduler(ctx.params["scheduler"], ctx.params["workers"])
    else:
        for name in ("scheduler", "workers", "tile_size", "verify"):
            if (flag := _flag(ctx, name)) is not None:
                raise ValueError(f"{flag} applies to .zarr output only (a .npz is computed in "
                                 f"memory, in this process); drop {flag} or write --out DIR.zarr")
        if out.is_dir():
            raise ValueError(f"--out {str(out)!r} is a folder; choose a file path ending in .npz")
        if out.exists() and not overwrite:
            raise ValueError(f"--out {str(out)!r} already exists; choose another path or pass "
                             f"--overwrite to replace it")
    check_writable(out, "--out")


def parse_assignments(assignments: tuple[str, ...]) -> dict[str, object]:
    """`--set FIELD=VALUE` options as {field: value}: VALUE parsed as JSON (numbers, lists,
    true/false, quoted strings), else kept as the string itself; a missing `=` or a field set
    twice is a ValueError."""
    settings: dict[str, object] = {}
    for assignment in assignments:
        field, equals, text = assignment.partition("=")
        field = field.strip()
        if not equals or not field:
            raise ValueError(f"--set takes FIELD=VALUE (e.g. --set seeds=5), got {assignment!r}")
        if field in settings:
            raise ValueError(f"--set {field} is given twice; give each setting once")
        try:
            settings[field] = json.loads(text)
        except json.JSONDecodeError:
            settings[field] = text
    return settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ntklab")
def main() -> None:
    """ntklab: neural networks seen through their kernels (NNGP, NTK)."""


@main.command("list")
@click.option("--names", is_flag=True, help="Only the names, one per line (for scripts).")
def list_experiments(names: bool) -> None:
    """List the reproducible experiments."""
    for name, experiment in sorted(experiments.REGISTRY.items()):
        click.echo(name if names else f"{name:20s} {experiment.summary}")


@main.command()
@click.argument("name")
@click.option("--seed", default=0, show_default=True, help="Random seed (runs are deterministic).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Run folder to create [default: runs/NAME-seedSEED].")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 or auto.")
@click.option("--quick", is_flag=True, help="Small settings (seconds), for tests and previews.")
@click.option("--overwrite", is_flag=True, help="Replace an existing run folder.")
@click.option("--data", default=None, help="Dataset, for experiments that take one "
              "(cntk-table, resnet-kernels: digits, digits-shifted or cifar10:DIR with the CIFAR-10 binary batches).")
@click.option("--train-size", type=click.IntRange(min=1), default=None, help="Training images (subset).")
@click.option("--test-size", type=click.IntRange(min=1), default=None, help="Test images (subset).")
@click.option("--scheduler", default=None, help="Kernel tiles: local, processes, or a Dask "
              "scheduler tcp://host:port (experiments with tiled kernels).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Processes for --scheduler processes [default: one per CPU].")
@click.option("--set", "assignments", multiple=True, metavar="FIELD=VALUE",
              help="Change one setting of the experiment (repeatable), e.g. --set seeds=5 --set "
                   "'widths=[64,256]'; VALUE is read as JSON, else as a string (config.json lists them).")
def run(name: str, seed: int, out: Path | None, device: str | None, quick: bool,
        overwrite: bool, data: str | None, train_size: int | None, test_size: int | None,
        scheduler: str | None, workers: int | None, assignments: tuple[str, ...]) -> None:
    """Run experiment NAME, writing config.json, metrics.csv, figures/ and report.md."""
    out = out or Path("runs") / f"{name}-seed{seed}{'-quick' if quick else ''}"
    try:
        summary = experiments.run(name, out, seed=seed, quick=quick, device=device,
                                  overwrite=overwrite, config=parse_assignments(assignments), data=data,
                                  train_size=train_size, test_size=test_size, scheduler=scheduler,
                                  workers=workers)
    except ValueError as err:
        _fail(err)
    click.echo(json.dumps(summary, indent=2, default=str))
    click.echo(f"wrote {out}/ (report.md, metrics.csv, config.json, figures/)")


run.epilog = "\b\nExperiments (NAME):\n" + "\n".join(   # \b: click keeps these lines as they are
    f"  {name:20s} {experiment.summary}" for name, experiment in sorted(experiments.REGISTRY.items()))


@main.command()
@click.option("--arch", required=True,
              help="Layers, e.g. 'Dense(512, W_std=1.5, b_std=0.05), Relu(), Dense(1)' or "
                   "'Conv(64, (3, 3), padding=\"SAME\"), Relu(), GlobalAvgPool(), Dense(1)'.")
@click.option("--x1", "x1_path", required=True, type=click.Path(path_type=Path),
              help="Inputs [N1, d] or NCHW images [N1, C, H, W] (.npy, .npz or .csv).")
@click.option("--x2", "x2_path", type=click.Path(path_type=Path), default=None,
              help="Inputs [N2, ...]; omitted: x1 with itself.")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Output: FILE.npz (arrays nngp, ntk, computed in memory) or DIR.zarr "
                   "(tiled, resumable: run the same command again after an interruption).")
@click.option("--get", type=click.Choice(["both", "nngp", "ntk"]), default="both",
              show_default=True, help="Which kernels to compute: the NNGP, the NTK, or both (the NNGP "
                                      "comes almost free with the NTK).")
@click.option("--device", default=None, help="cpu, cuda or auto (auto: on each Dask worker).")
@click.option("--tile-size", type=click.IntRange(min=1), default=256, show_default=True,
              help="Rows/columns per tile (.zarr).")
@click.option("--scheduler", default="local", show_default=True,
              help="For .zarr: local, processes, or a Dask scheduler address tcp://host:port.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Processes for --scheduler processes [default: one per CPU].")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="For .zarr: check finished tiles against their checksums and recompute damaged ones.")
@click.option("--max-memory", default="1GiB", show_default=True,
              help="Working memory of one block of pairs (e.g. 512MiB, 4GB).")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing .npz file, or start an existing .zarr store anew "
                   "(without it a .zarr store of the same computation is resumed).")
@click.pass_context
def kernel(ctx: click.Context, arch: str, x1_path: Path, x2_path: Path | None, out: Path, get: str,
           device: str | None, tile_size: int, scheduler: str, workers: int | None,
           verify: bool, max_memory: str, overwrite: bool) -> None:
    """Compute the infinite-width NNGP/NTK of an architecture between input files."""
    get_names = ("nngp", "ntk") if get == "both" else (get,)
    try:
        _check_kernel_out(ctx, out, overwrite)   # before any work
        net = parse_architecture(arch)
        x1 = load_array(x1_path, "x1")
        x2 = None if x2_path is None else load_array(x2_path, "x2")
        if out.suffix == ".zarr":
            store = compute_kernel(net, x1, x2, store=out, get=get_names, tile_size=tile_size,
                                   scheduler=scheduler, workers=workers, device=device,
                                   max_memory=max_memory, progress=sys.stderr.isatty() or None,
                                   verify=verify, overwrite=overwrite)
            click.echo(f"wrote {out}: {', '.join(store.names)} {store.shape}, "
                       f"{len(store.tiles())} tiles (read with ntklab.kernels.KernelStore.open)")
            return
        result = net.kernel(x1, x2, get_names, device=device, max_memory=max_memory,
                            progress=sys.stderr.isatty())
    except ValueError as err:
        _fail(err)
    arrays = {g: getattr(result, g).cpu().numpy() for g in ("nngp", "ntk")
              if getattr(result, g) is not None}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    try:
        atomic_write_bytes(out, buffer.getvalue())   # all or nothing: no half-written .npz
    except OSError as err:
        _fail(ValueError(f"--out {str(out)!r} could not be written ({err.strerror or err}); "
                         f"nothing was written there: free some space or choose another path"))
    shapes = ", ".join(f"{g} {a.shape}" for g, a in arrays.items())
    click.echo(f"wrote {out}: {shapes}")


@main.command()
@click.option("--store", "store_path", required=True, type=click.Path(path_type=Path),
              help="A kernel store of the training inputs with themselves (ntklab kernel --out k.zarr).")
@click.option("--y", "y_path", required=True, type=click.Path(path_type=Path),
              help="Training targets [N] or [N, K] (.npy, .npz or .csv).")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Where to write alpha = (K + lambda I)^-1 y (.npy).")
@click.option("--get", type=click.Choice(["ntk", "nngp"]), default="ntk", show_default=True)
@click.option("--diag-reg", type=click.FloatRange(min=0), default=1e-4, show_default=True,
              help="lambda relative to the mean diagonal of K.")
@click.option("--rank", type=click.IntRange(min=1), default=100, show_default=True,
              help="Rank of the randomized Nystrom preconditioner (one more pass over the store).")
@click.option("--x", "x_path", type=click.Path(path_type=Path), default=None,
              help="The store's training inputs (as given to ntklab kernel): with --centers, precondition by the "
              "Nystrom approximation on that many of them, computed from the store's architecture (no pass over "
              "the store; far larger ranks than --rank for the same time).")
@click.option("--centers", type=click.IntRange(min=1), default=None,
              help="Nystrom centers of the preconditioner (needs --x); replaces --rank.")
@click.option("--rtol", type=click.FloatRange(min=0, min_open=True), default=1e-6, show_default=True,
              help="Relative residual ||y - (K + lambda I) alpha|| / ||y|| to stop at.")
@click.option("--max-iterations", type=click.IntRange(min=1), default=None,
              help="Default: N (each iteration reads the store once).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
@click.option("--scheduler", default=None, help="Spread each product K v over processes, one task per tile: "
              "local (default), processes, or a Dask scheduler tcp://host:port (a lost worker's tiles are "
              "recomputed by the others).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Processes for --scheduler processes [default: one per CPU].")
def solve(store_path: Path, y_path: Path, out: Path, get: str, diag_reg: float, rank: int, x_path: Path | None,
          centers: int | None, rtol: float, max_iterations: int | None, overwrite: bool, scheduler: str | None,
          workers: int | None) -> None:
    """Kernel ridge regression from a kernel store without loading it: preconditioned conjugate
    gradients whose products K v stream the store's tiles (nk.predict.conjugate_gradients)."""
    from .. import kernels, predict
    try:
        if out.exists() and not overwrite:
            raise ValueError(f"--out {str(out)!r} exists; pass --overwrite to replace it")
        if (x_path is None) != (centers is None):
            raise ValueError("--x and --centers go together: the Nystrom preconditioner on --centers of the "
                             "inputs --x")
        check_writable(out, "--out")
        y = load_array(y_path, "y")
        with kernels.StoredKernel(str(store_path), get, progress=sys.stderr.isatty() or None, scheduler=scheduler,
                                  workers=workers) as operator:
            preconditioner = ("nystrom" if x_path is None else
                              _centers_preconditioner(operator.store, load_array(x_path, "x"), centers, get))
            result = predict.conjugate_gradients(operator, y, diag_reg=diag_reg, rank=rank, rtol=rtol,
                                                 preconditioner=preconditioner, max_iterations=max_iterations,
                                                 progress=sys.stderr.isatty() or None)
    except ValueError as err:
        _fail(err)
    buffer = io.BytesIO()
    np.save(buffer, result.solution.cpu().numpy())
    atomic_write_bytes(out, buffer.getvalue())
    click.echo(f"wrote {out}: alpha {tuple(result.solution.shape)} after {result.iterations} iterations, "
               f"relative residual {float(result.relative_residual.max()):.2e}"
               + ("" if result.converged else f" (> rtol {rtol:g}: see the warning)"))


def _centers_preconditioner(store, x: np.ndarray, centers: int | None, get: str):
    """The Nystrom preconditioner on `centers` of the store's inputs `x`, from the store's architecture;
    ValueError when `x` is not what the store was computed from."""
    from ..predict import NystromPreconditioner
    if not store.computed_from(x):
        raise ValueError(f"--x is not the input file the store {store.path} was computed from (its values, order or "
                         f"shape differ); give the same file as to ntklab kernel")
    return NystromPreconditioner.from_centers(parse_architecture(store.config["architecture"]), x,
                                              centers=int(centers or 1), get=get)


if __name__ == "__main__":
    main()
