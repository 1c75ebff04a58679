"""Fused activation maps: one compiled loop per activation instead of a chain of eager passes.

A layer's infinite-width map is a chain of elementwise operations over the block's state
(the ReLU dual alone is ~9 passes: product, square, subtract, clamp, sqrt, atan2, ...) and,
for a convolution, a sum of shifted views (2 copies and 4 additions for a 3x3 filter on the
all-pixel-pairs state).  Eager torch runs each as a pass over memory; `torch.compile`
(inductor: vectorized C++ with OpenMP on CPU) fuses the chain into one loop that reads the
inputs once.  Measured on one core (float64): the ReLU dual + Dense update of a 2000 x 2000
block 66 -> 18 ms, but whole kernels gain less (their blocks are cache-sized, and a CNTK's
time goes mostly to the convolution's shifted sums, which stay eager: compiled, they were
slower): 1.05x for a ReLU MLP, 1.15-1.26x for CNTK-GAP on one core, none on two
(`benchmarks/bench_fused.py`).

`fusible(fn)` wraps a function of tensors and constants (numbers, strings, tuples):
`wrapped(*args, fused=True)` runs the compiled function, `fused=False` the eager one.  The
first call of each argument signature compiles under a lock (dynamo is not thread-safe while
compiling; the kernel's worker threads then run the compiled code concurrently).  Compiling
costs seconds (about 20 s per graph on a cold cache, 3 s from inductor's on-disk cache) and,
on this 2-core CPU, pays too little to be the default (`Serial.kernel(fused=False)`).  When
compilation fails (no C++ compiler, an unsupported platform) the function falls back to
eager for the rest of the process with one warning: the numbers are the same either way
(equal to rounding, tested).
"""
from __future__ import annotations

import threading
import warnings
from typing import Callable

import torch

# graphs per fused function (activation kinds x block shapes x layouts; dynamo's default is 8)
RECOMPILE_LIMIT = 64


def _signature(args) -> tuple:
    return tuple((a.shape, a.stride(), a.dtype, a.device) if isinstance(a, torch.Tensor) else a
                 for a in args)


class fusible:  # noqa: N801 -- used as a decorator, like functools.cache
    """`fn` with a compiled twin: `self(*args, fused=...)`."""

    def __init__(self, fn: Callable):
        self.fn, self.__doc__, self.__name__ = fn, fn.__doc__, fn.__name__
        self._compiled: Callable | None = None
        self._seen: set = set()
        self._lock = threading.Lock()
        self._broken = False

    def __call__(self, *args, fused: bool = False):
        if not fused or self._broken:
            return self.fn(*args)
        key = _signature(args)
        if key in self._seen and self._compiled is not None:
            return self._compiled(*args)
        with self._lock, torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            try:
                if self._compiled is None:
                    self._compiled = torch.compile(self.fn, dynamic=False)
                out = self._compiled(*args)
            except Exception as error:  # noqa: BLE001 -- any compiler failure: eager is exact
                self._broken = True
                warnings.warn(f"ntklab: could not compile {self.__name__} ({type(error).__name__}: "
                              f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}); "
                              f"running the eager layer maps (same numbers, slower). Pass "
                              f"fused=False to net.kernel to skip the attempt.", RuntimeWarning,
                              stacklevel=2)
                return self.fn(*args)
            self._seen.add(key)
            return out
