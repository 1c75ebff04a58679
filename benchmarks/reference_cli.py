"""The command line of the neural-tangents reference scripts (`make_reference_graph.py`,
`make_reference_masking.py`): compute the values, write them to `--out`, and with `--compare` print
the largest difference from the stored file (exit 1 above 1e-12)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import numpy as np


def main(compute: Callable[[], dict[str, np.ndarray]], stored: Path, description: str,
         argv: list[str] | None = None) -> int:
    """Run one reference script: `compute()` -> arrays saved to --out (default `stored`)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=stored)
    parser.add_argument("--compare", action="store_true", help="print the largest difference from the stored file")
    args = parser.parse_args(argv)
    new = compute()
    np.savez(args.out, **new)
    if args.compare:
        reference = np.load(stored)
        worst = max(float(np.abs(new[k] - reference[k]).max()) for k in reference.files)
        print(f"largest difference from {stored}: {worst:.3g}")
        return int(worst > 1e-12)
    return 0
