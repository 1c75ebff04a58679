"""The layer contract: one description, two objects (after neural-tangents' stax).

Every layer implements
  * `build(in_shape, generator, dtype)` -> (torch module, out_shape): the finite network
    (shapes without the batch axis: `(d,)` for vectors, `(T, C)` for token sequences,
    `(C, H, W)` for images; a list of shapes between `FanOut` and a fan-in layer);
  * `kernel_map(state)` -> state: the infinite-width NNGP/NTK recursion (a list of states,
    one per branch, between `FanOut` and a fan-in layer);
  * optionally `input_state(x1, x2, ...)`: as the first layer, its output state computed
    from the inputs directly when that is cheaper (a strided Conv: one GEMM over patches).

What a layer may assume and must guarantee
------------------------------------------
* `kernel_map` **consumes** its input `KernelState`: it may update the input's tensors
  in place (the recursions are memory-bound, so they avoid copies) and the caller must
  not use the input state afterwards.  It returns a new state (`state.replace(...)`).
* It may assume only what the state declares: `state.is_gaussian` (pre-activations are
  Gaussian: set by affine layers, required and cleared by nonlinearities, as
  neural-tangents' `Kernel.is_gaussian`), `state.symmetric` (the block pairs inputs with
  themselves, `x2=None`: `var2` is `var1`, and a layer computes it once), `state.fresh`
  (the branch is independent of the other branches of its `FanOut`: set by affine layers
  with their own weights, cleared by `FanOut`, kept by every other layer, required by
  `FanInSum`/`FanInProd` of all branches but one), `state.spatial` and `state.full` (the
  layout, see `KernelState`).  A new layer that draws weights of its own and mixes units
  (an affine map) sets `fresh=True`; one that combines units without fresh weights would
  have to clear it.
* It declares what it needs as class attributes, read by `serial` (never probed):
  `takes_images` (inputs must be NCHW images or NCDHW volumes), `needs_all_pixel_pairs` (the recursion
  needs the covariance of every pixel pair, e.g. GlobalAvgPool), `quadrature_points`
  (the map holds this many numbers per pair at once, for block sizes), `position_growth`
  (its output has at most this many times its input's positions, e.g. ConvTranspose's
  upsampling, for block sizes), `takes_sequences`
  (inputs must be token sequences `[N, T, C]`), `takes_branches` (the layer consumes a
  list of states, one per branch, as produced by `FanOut`), `takes_pattern` (the layer reads
  the graphs given with the inputs, `KernelState.pattern`, and its module's forward takes
  `pattern=`), `mask_rule` (how it treats masked inputs, `mask_constant=`: one of
  `masking.MASK_RULES`, see `arch/masking.py`; None, the default, refuses them),
  `same_position_variances` (its map reads and writes each variance of a `full` state only on
  same-position pairs, so it takes `KernelState.same_position_variances` states exactly),
  `reads_variances` (its kernels depend on the variances; False: only on nngp and ntk).
* Errors are `ValueError`s that say what is wrong and the fix; `serial` and `parallel`
  prefix the layer's position (`serial(...) layer 3, FanInSum(): ...`).
* Hyperparameters may be 0-dim torch tensors (`Dense`/`Conv` `W_std`, `b_std`): when one
  requires grad the kernel is computed under autograd (`Serial.kernel`).
* Its `repr` is its constructor call with the arguments given (defaults omitted), which
  the `--arch` parser reads back; `identity` is that string when every argument is a
  literal or a named module-level function, else None (e.g. a lambda): a tiled kernel
  store refuses to resume what it cannot identify exactly.  In `identity` a Python
  function also carries a digest of its code (see `_function_identity`), so that a
  function edited between two runs under the same name is a different architecture.
"""
from __future__ import annotations

import ast
import hashlib
import inspect
import types
from abc import ABC, abstractmethod
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from torch import nn

from .state import KernelState


def _literal(value: Any) -> str | None:
    """`repr(value)` when it reads back as the same literal, else None."""
    text = repr(value)
    try:
        return text if ast.literal_eval(text) == value else None
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def _named_function(value: Any) -> str | None:
    """`module.qualname` of a function importable by name (not a lambda or a local)."""
    module, qualname = getattr(value, "__module__", None), getattr(value, "__qualname__", "")
    if not callable(value) or not module or not qualname or "<" in qualname:
        return None
    return f"{module}.{qualname}"


def _constant(value: Any, digest) -> None:
    """Feed a code constant to `digest`: nested code objects by their code, frozensets in a
    fixed order (their repr follows the string hash seed, which changes between processes)."""
    if isinstance(value, types.CodeType):
        _code(value, digest)
    elif isinstance(value, (tuple, frozenset)):
        digest.update(b"(" if isinstance(value, tuple) else b"{")
        items = sorted(value, key=repr) if isinstance(value, frozenset) else value
        for item in items:
            _constant(item, digest)
        digest.update(b")")
    else:
        digest.update(repr(value).encode() + b"\0")


def _code(code: types.CodeType, digest) -> None:
    digest.update(code.co_code)
    digest.update(repr((code.co_names, code.co_varnames, code.co_argcount,
                        code.co_kwonlyargcount)).encode())
    _constant(code.co_consts, digest)


def _referenced_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            names |= _referenced_names(constant)
    return names


def _function_identity(value: Any) -> str | None:
    """`module.qualname` of a named function (builtins such as `torch.sin`: that name alone);
    for a Python function `module.qualname@digest`, the SHA-256 (16 hex digits) of its code
    (bytecode, constants, names, defaults), of the module globals it reads (literals such as
    `SCALE = 2.0` by value, numpy/torch arrays by their bytes, modules and other modules'
    functions by name) and, recursively, of the Python functions of its own module that it
    calls by name; a global of any other kind makes the function unidentifiable (None).
    Editing such a body therefore changes the identity; the digest also changes
    with the Python version (bytecode), which makes a store refuse, never mix, its tiles.
    None for what cannot be identified: lambdas, local functions, closures, bound methods."""
    name = _named_function(value)
    if name is None or inspect.ismethod(value):
        return None
    if not inspect.isfunction(value):
        return name
    digest = _FunctionDigest()
    return f"{name}@{digest.hexdigest()[:16]}" if digest.visit(value) else None


class _FunctionDigest:
    """The SHA-256 of Python functions' code and of the globals they read (`_function_identity`)."""

    def __init__(self):
        self.sha, self.seen = hashlib.sha256(), set()

    def hexdigest(self) -> str:
        return self.sha.hexdigest()

    def visit(self, function: types.FunctionType) -> bool:
        """Feed `function` (once) and, in the sorted order of their names, the globals it reads;
        False when one of them cannot be identified (a closure's captured variables neither)."""
        if function in self.seen:
            return True
        self.seen.add(function)
        if function.__closure__:
            return False   # captured variables cannot be identified
        self.sha.update(f"{function.__module__}.{function.__qualname__}\0".encode())
        _code(function.__code__, self.sha)
        self.sha.update(repr((function.__defaults__, function.__kwdefaults__)).encode())
        return all(self._global(global_name, function.__globals__[global_name], function)
                   for global_name in sorted(_referenced_names(function.__code__))
                   if global_name in function.__globals__)   # else an attribute name or a builtin

    def _global(self, global_name: str, other: Any, function: types.FunctionType) -> bool:
        """Feed one global `other` that `function` reads; False when it cannot be identified."""
        if inspect.isfunction(other) and other.__module__ == function.__module__:
            return self.visit(other)
        if inspect.ismodule(other):
            self.sha.update(f"{global_name}=module {other.__name__}\0".encode())
        elif _literal(other) is not None:
            self.sha.update(f"{global_name}={_literal(other)}\0".encode())
        elif isinstance(other, (np.ndarray, np.generic, torch.Tensor)):
            array = other.detach().cpu().numpy() if isinstance(other, torch.Tensor) else np.asarray(other)
            self.sha.update(f"{global_name}={array.dtype.str}{array.shape}\0".encode())
            self.sha.update(np.ascontiguousarray(array).tobytes())
        elif (callable(other) and _named_function(other) is not None
              and other.__module__ != function.__module__):
            self.sha.update(f"{global_name}={_named_function(other)}\0".encode())  # a library's
        else:
            return False   # a global whose value cannot be identified (an object, a closure)
        return True


class ArchitectureError(ValueError):
    """A ValueError that already names where in the architecture it happened."""


def channel_axis(shape: tuple[int, ...]) -> int:
    """The channel axis of a batch whose samples have `shape`: 1 for NCHW images `(C, H, W)` and
    volumes `(C, D, H, W)`,
    the last one for vectors `(d,)` and token sequences `(T, C)`."""
    return 1 if len(shape) >= 3 else -1


In = TypeVar("In")     # what a layer's kernel map takes: a KernelState, or a list (branches)
Out = TypeVar("Out")   # what it returns


class Layer(ABC, Generic[In, Out]):
    """Base class of all ntklab layers (see the module docstring for the contract): `Layer[In,
    Out]` maps a kernel state `In` to `Out`, `KernelState` for most layers, a list of states (one
    per branch) after `FanOut` and before a fan-in layer."""

    _arguments: dict[str, Any]   # the constructor's arguments, as given (set by __new__)
    takes_images: bool = False
    takes_sequences: bool = False
    takes_branches: bool = False
    takes_pattern: bool = False
    mask_rule: str | None = None
    needs_all_pixel_pairs: bool = False
    quadrature_points: int = 1
    position_growth: int = 1   # at most this many times the input's positions in the output
    same_position_variances: bool = False   # takes KernelState.same_position_variances states
    reads_variances: bool = True             # nngp/ntk depend on var1/var2

    def __new__(cls, *args, **kwargs):
        self = super().__new__(cls)
        try:
            bound = inspect.signature(cls.__init__).bind(None, *args, **kwargs)
        except TypeError:  # __init__ raises the proper error
            bound = None
        self._arguments = {} if bound is None else dict(list(bound.arguments.items())[1:])
        return self

    @abstractmethod
    def build(self, in_shape: tuple[int, ...], generator: torch.Generator,
              dtype: torch.dtype) -> tuple[nn.Module, tuple[int, ...]]:
        """Finite-width torch module and the shape of one output sample."""

    @abstractmethod
    def kernel_map(self, k: In) -> Out:
        """Infinite-width recursion: kernel state of the inputs (consumed) -> of the outputs."""

    def _call(self, render) -> str | None:
        """The constructor call, each argument rendered by `render` (None: not renderable)."""
        parameters = inspect.signature(type(self).__init__).parameters
        parts = []
        for name, value in self._arguments.items():
            parameter = parameters[name]
            if parameter.default is not inspect.Parameter.empty and _same(value, parameter.default):
                continue
            if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
                rendered = [render(v) for v in value]
                if None in rendered:
                    return None
                parts.extend(rendered)
                continue
            text = render(value)
            if text is None:
                return None
            positional = parameter.default is inspect.Parameter.empty
            parts.append(text if positional else f"{name}={text}")
        return f"{type(self).__name__}({', '.join(parts)})"

    def input_state(self, x1: torch.Tensor, x2: torch.Tensor | None, *, need_ntk: bool,
                    full: bool) -> KernelState | None:
        """As the first layer: its output state computed from the inputs directly, when the
        layer has a cheaper way than `kernel_map(KernelState.from_inputs(...))`; else None."""
        return None

    def input_state_shape(self, sample_shape: tuple[int, ...]) -> tuple[int, ...] | None:
        """The sample shape of the state `input_state` starts from (None: it does not apply),
        so that block sizes count the largest state actually held."""
        return None

    def hyperparameter_tensors(self) -> list[torch.Tensor]:
        """The torch tensors among the constructor arguments (e.g. `W_std=torch.tensor(1.5,
        requires_grad=True)`): a kernel is differentiated when one of them requires grad."""
        return [value for value in self._arguments.values() if isinstance(value, torch.Tensor)]

    @property
    def label(self) -> str:
        """Short description for error messages."""
        text = repr(self)
        return text if len(text) <= 80 else text[:text.index("(")] + "(...)"

    @property
    def identity(self) -> str | None:
        """Exact description of this layer, or None when an argument cannot be identified."""
        return self._call(lambda v: v.identity if isinstance(v, Layer) else
                          _literal(v) or _function_identity(v))

    def __repr__(self) -> str:
        text = self._call(lambda v: _literal(v) or _named_function(v) or repr(v))
        return object.__repr__(self) if text is None else text   # None: never (every value renders)


def _same(value: Any, default: Any) -> bool:
    try:
        return type(value) is type(default) and bool(value == default)
    except (TypeError, ValueError, RuntimeError):
        return False
