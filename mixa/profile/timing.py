"""The one way mixa measures latency: wall time of a call, after untimed warm-up calls, and -- when several
things are compared -- round-robin (one call of each per round), so that load from other processes hits
them alike and their ratios stay meaningful on a shared machine. Pure Python (no numpy, no torch).

``clock="cpu"`` measures the calling thread's CPU time instead (``time.thread_time``): on a machine shared
with other jobs, time spent descheduled does not count. It is the work of a single-threaded runtime that
runs on the caller's thread (ONNX Runtime with 1 intra-op thread, ExecuTorch with a 1-thread pool); with
more threads it misses the workers' time, so it is for 1-thread comparisons only."""
from __future__ import annotations

import statistics
import time
from typing import Callable, List, Optional, Sequence


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def round_robin(calls: Sequence[Callable[[], object]], *, warmup: int = 1, rounds: int = 20,
                budget: Optional[float] = None, min_rounds: int = 3, progress=None,
                clock: str = "wall") -> List[List[float]]:
    """Seconds per call of each of ``calls``: ``warmup`` untimed calls each, then ``rounds`` rounds of one
    timed call each (stopping early after ``min_rounds`` once ``budget`` seconds have passed).
    ``progress`` (a tqdm bar or None) advances by one per timed call."""
    now = CLOCKS[clock]
    for call in calls:
        for _ in range(warmup):
            call()
    times: List[List[float]] = [[] for _ in calls]
    start = time.perf_counter()
    for r in range(rounds):
        for i, call in enumerate(calls):
            t0 = now()
            call()
            times[i].append(now() - t0)
            if progress is not None:
                progress.update(1)
        if budget is not None and r + 1 >= min_rounds and time.perf_counter() - start > budget:
            break
    return times


def time_call(call: Callable[[], object], *, warmup: int = 5, repeat: int = 20, progress=None) -> List[float]:
    """Seconds per call of ``call`` (``repeat`` timed calls after ``warmup`` untimed ones)."""
    return round_robin([call], warmup=warmup, rounds=repeat, progress=progress)[0]


def paired_speedup(reference: Sequence[float], measured: Sequence[float]) -> float:
    """How many times faster ``measured`` is than ``reference``, two timings of one round-robin: the median
    over rounds of the per-round ratio reference / measured. Both calls of a round met the same load from
    other processes, so a slow stretch cancels instead of moving one of two medians."""
    if len(reference) != len(measured) or not reference:
        raise ValueError(f"paired timings need equal, non-zero round counts ({len(reference)}, {len(measured)})")
    return statistics.median(r / m for r, m in zip(reference, measured))
