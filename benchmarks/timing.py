"""Shared by the benchmark scripts: a median of wall-clock times."""

from __future__ import annotations

import statistics
import time


def median_time(fn, repeats: int, warmup: bool = True) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` (after one untimed call if ``warmup``)."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
