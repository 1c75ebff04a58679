"""Parse architecture strings for the command line, e.g.

    "Dense(512, W_std=1.5, b_std=0.05), Relu(), Dense(1, W_std=1.5, b_std=0.05)"

The string is read with `ast` (never `eval`): only calls of ntklab layer names
(`ntklab.arch.LAYERS`) with literal arguments are accepted, optionally wrapped in
`serial(...)`, so `parse_architecture(repr(net))` rebuilds `net` whenever
`net.identity` is not None.  `Elementwise` takes a function and is not parseable."""
from __future__ import annotations

import ast

from . import LAYERS as REGISTRY
from .serial import Serial, serial

LAYERS = {name: cls for name, cls in REGISTRY.items() if name != "Elementwise"}


def parse_architecture(spec: str, argument: str = "--arch") -> Serial:
    """`"Dense(512), Relu(), Dense(1)"` -> `serial(Dense(512), Relu(), Dense(1))`; errors name the
    argument the string came in (`argument`: "--arch" on the command line)."""
    try:
        tree = ast.parse(spec.strip(), mode="eval").body
    except SyntaxError as err:
        raise ValueError(f"{argument} {spec!r} is not a comma-separated list of layers such as "
                         f"'Dense(512, W_std=1.5), Relu(), Dense(1)': {err.msg}") from err
    if (isinstance(tree, ast.Call) and isinstance(tree.func, ast.Name) and tree.func.id == "serial"
            and not tree.keywords):
        tree = ast.Tuple(elts=tree.args)
    calls = tree.elts if isinstance(tree, ast.Tuple) else [tree]
    layers = []
    for call in calls:
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)):
            raise ValueError(f"{argument}: expected a layer call like Relu(), got "
                             f"{ast.unparse(call)!r}")
        name = call.func.id
        if name not in LAYERS:
            raise ValueError(f"{argument}: unknown layer {name!r}; known layers: "
                             f"{', '.join(sorted(LAYERS))}")
        try:
            args = [ast.literal_eval(a) for a in call.args]
            kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
        except ValueError as err:
            raise ValueError(f"{argument}: arguments of {name} must be literals, got "
                             f"{ast.unparse(call)!r}") from err
        try:
            layers.append(LAYERS[name](*args, **kwargs))
        except TypeError as err:
            raise ValueError(f"{argument}: bad arguments for {name}: {err}") from err
    return serial(*layers)
