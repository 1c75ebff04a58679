"""Run one benchmark measurement in a child process with an address-space cap, so a
method that needs more memory fails cleanly ("out of memory") instead of taking the
machine down; the child's peak resident set size is its peak memory."""
from __future__ import annotations

import multiprocessing as mp
import resource
from typing import Any, Callable


def _child(queue, cap: int, fn: Callable[..., dict], args: tuple) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    try:
        result = {**fn(*args), "error": None}
    except (RuntimeError, MemoryError, ValueError) as err:
        text = str(err)
        oom = isinstance(err, MemoryError) or any(w in text.lower() for w in
                                                  ("memory", "resource_exhausted", "allocat"))
        result = {"seconds": None, "check": None, "error": "out of memory" if oom else text[:120]}
    result["peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    queue.put(result)


def measure(fn: Callable[..., dict], args: tuple, cap: int, timeout: float) -> dict[str, Any]:
    """`fn(*args)` (a top-level function returning {"seconds", "check", ...}) in a
    spawned child limited to `cap` bytes of address space and `timeout` seconds."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(queue, cap, fn, args))
    process.start()
    process.join(timeout)
    if process.is_alive():
        process.kill()
        return {"seconds": None, "error": f"over {timeout:.0f} s", "peak_gib": None, "check": None}
    if queue.empty():
        return {"seconds": None, "error": f"crashed (exit {process.exitcode})", "peak_gib": None,
                "check": None}
    return queue.get()


def parse_bytes(text: str) -> int:
    units = {"GIB": 2 ** 30, "MIB": 2 ** 20, "GB": 10 ** 9, "MB": 10 ** 6}
    for unit, size in units.items():
        if text.upper().endswith(unit):
            return int(float(text[:-len(unit)]) * size)
    return int(text)
