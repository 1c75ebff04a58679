"""Parse architecture strings for the command line, e.g.

    "Dense(512, W_std=1.5, b_std=0.05), Relu(), Dense(1, W_std=1.5, b_std=0.05)"
    "Dense(512), FanOut(2), parallel(serial(Relu(), Dense(512)), Identity()), FanInSum(), Dense(1)"

The string is read with `ast` (never `eval`): only calls of ntklab layer names
(`ntklab.arch.LAYERS`) with literal arguments, and the combinators `serial(...)`,
`parallel(...)` and `repeat(..., n)` of such calls (nested to any depth), are accepted, so
`parse_architecture(repr(net))` rebuilds `net` whenever `net.identity` is not None.
`Elementwise` takes a function and `Index` slices: they are not parseable."""
from __future__ import annotations

import ast

from . import COMBINATORS, LAYERS as REGISTRY
from .layer import Layer
from .serial import Serial, serial

LAYERS = {name: cls for name, cls in REGISTRY.items() if name not in ("Elementwise", "Index")}


def parse_architecture(spec: str, argument: str = "--arch") -> Serial:
    """`"Dense(512), Relu(), Dense(1)"` -> `serial(Dense(512), Relu(), Dense(1))`; errors name the
    argument the string came in (`argument`: "--arch" on the command line)."""
    try:
        tree = ast.parse(spec.strip(), mode="eval").body
    except SyntaxError as err:
        raise ValueError(f"{argument} {spec!r} is not a comma-separated list of layers such as "
                         f"'Dense(512, W_std=1.5), Relu(), Dense(1)': {err.msg}") from err
    calls = tree.elts if isinstance(tree, ast.Tuple) else [tree]
    return serial(*(_layer(call, argument) for call in calls))


def _layer(call: ast.expr, argument: str) -> Layer:
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)):
        raise ValueError(f"{argument}: expected a layer call like Relu(), got {ast.unparse(call)!r}")
    name = call.func.id
    if name in COMBINATORS:
        if call.keywords:
            raise ValueError(f"{argument}: {name}(...) takes layers only, got {ast.unparse(call)!r}")
        try:   # layers, and repeat's count
            return COMBINATORS[name](*(_layer(arg, argument) if isinstance(arg, ast.Call) else
                                       ast.literal_eval(arg) for arg in call.args))
        except (ValueError, TypeError) as err:
            raise ValueError(f"{argument}: bad arguments for {name}: {err}") from err
    if name not in LAYERS:
        raise ValueError(f"{argument}: unknown layer {name!r}; known layers: "
                         f"{', '.join(sorted([*LAYERS, *COMBINATORS]))}")
    if any(k.arg is None for k in call.keywords):
        raise ValueError(f"{argument}: write the arguments of {name} out (no **), got {ast.unparse(call)!r}")
    try:
        args = [ast.literal_eval(a) for a in call.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg is not None}
    except ValueError as err:
        raise ValueError(f"{argument}: arguments of {name} must be literals, got "
                         f"{ast.unparse(call)!r}") from err
    try:
        return LAYERS[name](*args, **kwargs)
    except TypeError as err:
        raise ValueError(f"{argument}: bad arguments for {name}: {err}") from err
