"""The `ntklab` command: list and run experiments, compute kernels from files."""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import click
import numpy as np

from . import experiments
from .arch.spec import parse_architecture
from .data import load_matrix
from .report import atomic_write_bytes


def _fail(err: Exception) -> None:
    raise click.ClickException(str(err))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ntklab")
def main() -> None:
    """ntklab: neural networks seen through their kernels (NNGP, NTK)."""


@main.command("list")
def list_experiments() -> None:
    """List the reproducible experiments."""
    for name, experiment in sorted(experiments.REGISTRY.items()):
        click.echo(f"{name:20s} {experiment.summary}")


@main.command()
@click.argument("name")
@click.option("--seed", default=0, show_default=True, help="Random seed (runs are deterministic).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Run folder to create [default: runs/NAME-seedSEED].")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 or auto.")
@click.option("--quick", is_flag=True, help="Small settings (seconds), for tests and previews.")
@click.option("--overwrite", is_flag=True, help="Replace an existing run folder.")
def run(name: str, seed: int, out: Path | None, device: str | None, quick: bool,
        overwrite: bool) -> None:
    """Run experiment NAME, writing config.json, metrics.csv, figures/ and report.md."""
    out = out or Path("runs") / f"{name}-seed{seed}{'-quick' if quick else ''}"
    try:
        summary = experiments.run(name, out, seed=seed, quick=quick, device=device,
                                  overwrite=overwrite)
    except ValueError as err:
        _fail(err)
    click.echo(json.dumps(summary, indent=2, default=str))
    click.echo(f"wrote {out}/ (report.md, metrics.csv, config.json, figures/)")


@main.command()
@click.option("--arch", required=True,
              help="Layers, e.g. 'Dense(512, W_std=1.5, b_std=0.05), Relu(), Dense(1)'.")
@click.option("--x1", "x1_path", required=True, type=click.Path(path_type=Path),
              help="Inputs [N1, d] (.npy, .npz or .csv).")
@click.option("--x2", "x2_path", type=click.Path(path_type=Path), default=None,
              help="Inputs [N2, d]; omitted: x1 with itself.")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Output .npz with arrays nngp and ntk.")
@click.option("--get", type=click.Choice(["both", "nngp", "ntk"]), default="both",
              show_default=True)
@click.option("--device", default=None, help="cpu, cuda or auto.")
def kernel(arch: str, x1_path: Path, x2_path: Path | None, out: Path, get: str,
           device: str | None) -> None:
    """Compute the infinite-width NNGP/NTK of an architecture between input files."""
    try:
        if out.suffix != ".npz":
            raise ValueError(f"--out must end in .npz, got {str(out)!r}")
        net = parse_architecture(arch)
        x1 = load_matrix(x1_path, "x1")
        x2 = None if x2_path is None else load_matrix(x2_path, "x2")
        result = net.kernel(x1, x2, None if get == "both" else get, device=device,
                            progress=sys.stderr.isatty())
    except ValueError as err:
        _fail(err)
    arrays = {g: getattr(result, g).cpu().numpy() for g in ("nngp", "ntk")
              if getattr(result, g) is not None}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(out, buffer.getvalue())
    shapes = ", ".join(f"{g} {a.shape}" for g, a in arrays.items())
    click.echo(f"wrote {out}: {shapes}")


if __name__ == "__main__":
    main()
