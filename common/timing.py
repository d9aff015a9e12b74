"""Timing: medians of repeated and interleaved calls, and the device a figure was measured on."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax


def time_call(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall-clock seconds of ``fn()`` (its result blocked on), after ``warmup`` calls."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_interleaved(fns: dict[str, Callable[[], Any]], *, repeats: int = 7,
                     calls: int = 1, rotate: bool = False) -> dict[str, tuple[float, float]]:
    """``{name: (min, median)}`` seconds per call, calling the functions in turn ``repeats`` times.

    Interleaving spreads a noisy machine's slow moments over all contenders; the
    minimum is the least disturbed run. Each function is called once first (compile).
    Each sample times ``calls`` calls in a row (the last one blocked on) and divides: for functions
    of microseconds, where one call is below the timer's and the dispatcher's noise. ``rotate`` starts
    each round with the next contender, so that each follows each other equally often: after a PyTorch
    training step, whichever JAX step came next ran up to 2× slower (a 1 s sleep between them did not
    help), which a fixed order charges to one contender.
    """
    for fn in fns.values():
        jax.block_until_ready(fn())
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        for name in (names[r % len(names):] + names[:r % len(names)]) if rotate else names:
            fn = fns[name]
            start = time.perf_counter()
            for _ in range(calls - 1):
                fn()
            jax.block_until_ready(fn())
            times[name].append((time.perf_counter() - start) / calls)
    return {name: (min(t), statistics.median(t)) for name, t in times.items()}


def device_description() -> str:
    """E.g. ``cpu ×1 (jax 0.10.2)``."""
    devices = jax.devices()
    return f"{devices[0].platform} ×{len(devices)} ({devices[0].device_kind}; jax {jax.__version__})"
