"""Scratch tensors reused from one block of pairs to the next, so that the layer maps of a
kernel computation allocate (almost) no fresh memory.

A block's state tensors are megabytes (a 3 x 3 block of 16x16 images with all pixel pairs:
4.7 MB per tensor; of 32x32 images: 75 MB), and memory fresh from the operating system costs
a page fault per 4 KiB page on its first write: measured 16-22 ns per float64 entry on this
2-core EPYC, against 0.2 ns for the addition that fills it and 3.5 ns for an atan2.  A
CNTK-GAP (3 conv + ReLU, 20 images 16x16) took ~180,000 page faults per kernel, a third of
its time.  So the maps that need temporaries (`windows.window_sum_`, the in-place ReLU dual)
borrow them from a `BufferPool` that the engine keeps for one kernel call, per worker thread
(`Serial.kernel`), and give them back when done; no scratch tensor ever leaves the function
that borrowed it.

Outside a pool (`torch.func`, autograd, a layer map called on its own) `scratch` returns fresh
tensors: the numbers are the same either way.
"""
from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from typing import Iterator

import torch

from .._core import transforms

MAX_HELD = 4   # scratch tensors a pool keeps between uses (a map borrows at most 2 at once)

_current = threading.local()


class BufferPool:
    """Free scratch tensors of one thread, kept between uses; the most recently used first."""

    def __init__(self) -> None:
        self.free: OrderedDict[int, torch.Tensor] = OrderedDict()

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """`scratch` borrows from this pool in this thread while the context lasts."""
        previous = getattr(_current, "pool", None)
        _current.pool = self
        try:
            yield
        finally:
            _current.pool = previous

    def take(self, like: torch.Tensor) -> torch.Tensor:
        """A free tensor of `like`'s shape, dtype and device (contiguous), or a fresh one."""
        for key, t in self.free.items():
            if t.shape == like.shape and t.dtype == like.dtype and t.device == like.device:
                return self.free.pop(key)
        return torch.empty(like.shape, dtype=like.dtype, device=like.device)

    def give(self, t: torch.Tensor) -> None:
        """Keep `t` for later, dropping the least recently used beyond `MAX_HELD`."""
        self.free[id(t)] = t
        while len(self.free) > MAX_HELD:
            self.free.popitem(last=False)


def in_place_ok(*tensors: object) -> bool:
    """The in-place fast paths may run: no tensor requires grad or is under a `torch.func`
    transform, and no compilation is tracing (those run the out-of-place maps)."""
    return not (torch.compiler.is_compiling() or transforms.transformed(*tensors)
                or any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors))


@contextlib.contextmanager
def scratch(like: torch.Tensor, count: int = 1) -> Iterator[list[torch.Tensor]]:
    """`count` uninitialized contiguous tensors shaped like `like`, from the thread's active
    pool (returned to it on exit) or fresh outside one.  They must not outlive the context."""
    pool = getattr(_current, "pool", None)
    tensors = [torch.empty(like.shape, dtype=like.dtype, device=like.device) if pool is None
               else pool.take(like) for _ in range(count)]
    try:
        yield tensors
    finally:
        if pool is not None:
            for t in tensors:
                pool.give(t)
