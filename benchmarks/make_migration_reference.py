"""Run the neural-tangents side of every snippet pair of docs/migration.md and store its results
(tests/data/neural_tangents/migration.npz and .json), which `tests/test_docs_migration.py` checks
the ntklab side against.

The page's pairs are fenced `{code-block} python` blocks captioned "neural-tangents" and "ntklab",
after one block captioned "both libraries: the inputs" (plain numpy). Each side runs its blocks
in order in one namespace, after the inputs; after each block of a pair, every name that both
blocks of the pair assign is compared when its value is numeric: an array, a number, or a
(named) tuple of them, stored as `<pair>/<name>` and `<pair>/<name>[i]...`.

    /tmp/ntvenv/bin/python benchmarks/make_migration_reference.py   # neural-tangents 0.6.5, JAX 0.4.30

This file needs neither torch nor JAX to be imported (the test reads the page with it)."""
from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "migration.md"
DATA = ROOT / "tests" / "data" / "neural_tangents"
INPUTS = "both libraries: the inputs"
SIDES = ("neural-tangents", "ntklab")
BLOCK = re.compile(r"```\{code-block\} python\n:caption: (.*?)\n\n?(.*?)```", re.S)


def read_pairs(text: str) -> tuple[str, list[dict[str, str]]]:
    """The inputs block and the list of pairs `{"neural-tangents": code, "ntklab": code}` of the page."""
    blocks = BLOCK.findall(text)
    if not blocks or blocks[0][0] != INPUTS:
        raise ValueError(f"the first captioned block of the page must be {INPUTS!r}")
    sides = [caption for caption, _ in blocks[1:]]
    if sides != list(SIDES) * (len(sides) // 2) or len(sides) % 2:
        raise ValueError(f"after the inputs, blocks must alternate {SIDES}: found {sides}")
    codes = [code for _, code in blocks[1:]]
    return blocks[0][1], [dict(zip(SIDES, codes[i:i + 2], strict=True)) for i in range(0, len(codes), 2)]


def assigned(code: str) -> set[str]:
    """The names a block assigns at its top level (plain and tuple-unpacking assignments)."""
    names = set()
    for node in ast.parse(code).body:
        for target in node.targets if isinstance(node, ast.Assign) else []:
            names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return names


def numeric(key: str, value) -> dict[str, np.ndarray]:
    """`value` as float64 arrays by key: arrays (numpy, JAX, torch) and numbers as themselves,
    tuples element by element; anything else (functions, modules) gives nothing."""
    if isinstance(value, tuple):
        return {k: v for i, item in enumerate(value) for k, v in numeric(f"{key}[{i}]", item).items()}
    if hasattr(value, "detach"):   # a torch tensor
        value = value.detach().cpu().numpy()
    if isinstance(value, (int, float)) and not isinstance(value, bool) or hasattr(value, "__array__"):
        return {key: np.asarray(value, dtype=np.float64)}
    return {}


def run_side(inputs: str, pairs: list[dict[str, str]], side: str) -> list[dict[str, np.ndarray]]:
    """Each pair's compared values on one side, its blocks run in order in one namespace."""
    namespace: dict = {"__name__": "__migration__"}
    exec(compile(inputs, "migration.md inputs", "exec"), namespace)
    results = []
    for index, pair in enumerate(pairs):
        exec(compile(pair[side], f"migration.md pair {index} ({side})", "exec"), namespace)
        shared = assigned(pair["neural-tangents"]) & assigned(pair["ntklab"])
        results.append({k: v for name in sorted(shared) for k, v in numeric(name, namespace[name]).items()})
    return results


def main() -> None:
    import jax
    import neural_tangents

    inputs, pairs = read_pairs(PAGE.read_text())
    results = run_side(inputs, pairs, "neural-tangents")
    arrays = {f"{index}/{key}": value for index, values in enumerate(results) for key, value in values.items()}
    np.savez_compressed(DATA / "migration.npz", **arrays)
    description = {
        "source": f"neural-tangents {neural_tangents.__version__}, JAX {jax.__version__}, jax_enable_x64; "
                  "written by benchmarks/make_migration_reference.py from docs/migration.md",
        "inputs": inputs,
        "pairs": [{"neural-tangents": pair["neural-tangents"], "compared": sorted(values)}
                  for pair, values in zip(pairs, results, strict=True)],
    }
    (DATA / "migration.json").write_text(json.dumps(description, indent=1) + "\n")
    print(f"{len(pairs)} pairs, {len(arrays)} arrays -> {DATA / 'migration.npz'}", file=sys.stderr)


if __name__ == "__main__":
    main()
