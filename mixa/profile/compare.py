"""Timing several targets side by side: every target of one command is timed round-robin in one process
(one call of each per round, ``mixa.profile.timing.round_robin``), so that load from other processes hits
them alike and the speed-up column compares calls made at the same moments (round by round:
``mixa.profile.records.speedups``). Pure Python + numpy (records).

A target is a ``Runner``: what to record about it, and ``start`` -- called when its round-robin begins, after
the thread count has been set -- which loads it (an ONNX Runtime session, an ExecuTorch program, a model) and
returns the zero-argument call to time. Targets with different thread counts are timed in separate
round-robins (one per count): ExecuTorch's and torch's thread pools are process-wide."""
from __future__ import annotations

import itertools
import os
import random
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..errors import UsageError
from .records import make_record
from .timing import CLOCKS, round_robin


# The default number of rounds: 60, unless they would take over DEFAULT_BUDGET_S seconds, then fewer but at
# least DEFAULT_MIN_ROUNDS (the earlier default). Measured (benchmarks/edge/profile_repeat.py, DeiT-T/14
# original vs keep-6 relu, five `mixa profile` runs per batch, load ~3.3 on 2 CPUs): the speed-up spread
# was 1.6-3.7% with 20 rounds (one batch of five over 3%) and 0.8-2.3% with 60, for 3.5 s -> 8 s a command.
DEFAULT_ROUNDS = 60
DEFAULT_MIN_ROUNDS = 20
DEFAULT_BUDGET_S = 10.0

_ROUND_ROBINS = itertools.count()  # names each round-robin of this process (records pair their rounds by it)


@dataclass
class Runner:
    record: Dict[str, Any]                      # make_record's fields besides ``seconds``
    start: Callable[[], Callable[[], object]]   # loads the target, returns the call to time
    warmup: int = 0                             # extra untimed calls (torch.compile compiles in them)


def open_shuffled(openers: Sequence[Callable[[], Any]], seed: Any = None) -> list:
    """Call each of ``openers`` (each loads one target) in an order shuffled by ``seed`` (None: a new order
    each call); their results in the order of ``openers``. Why: where a program's memory lands depends on
    what was loaded before it, and byte-identical programs loaded one after another in a fixed order ran
    apart by the same amounts in every run: of four copies given to `mixa profile`, the last ran 0.77% faster
    than the first on average over ten commands (9 of 10 above 1), whichever copy came last; the first-loaded
    of five ExecuTorch copies 0.6-0.9% slower (benchmarks/edge/README.md, twenty-first session). In a fixed
    order each target keeps its place, and its share of that, in every command; shuffled, the ten commands
    gave +0.12% (6 of 10 above 1): the error has no sign, and repeated commands average it away."""
    order = list(range(len(openers)))
    random.Random(seed).shuffle(order)
    opened = {i: openers[i]() for i in order}
    return [opened[i] for i in range(len(openers))]


def measure(runners: List[Runner], *, warmup: int = 5, repeat: Optional[int] = 20, clock: str = "wall",
            progress=None, seed: Any = None) -> List[Dict[str, Any]]:
    """One record per runner, in the order given: ``warmup`` untimed calls each, then ``repeat`` rounds
    of one timed call of each runner (per thread count); ``repeat=None``: DEFAULT_ROUNDS rounds, stopping
    after DEFAULT_MIN_ROUNDS once a round-robin has run DEFAULT_BUDGET_S seconds. Targets are loaded
    (``Runner.start``) in an order shuffled by ``seed`` (``open_shuffled``). ``clock='cpu'`` times the
    calling thread's CPU time: right for 1-thread runtimes on a shared machine, refused with more threads (it
    would miss the workers' time)."""
    if clock not in CLOCKS:
        raise UsageError(f"unknown clock {clock!r}; choose from {', '.join(CLOCKS)}")
    if clock == "cpu" and any((r.record.get("threads") or 0) != 1 or r.record.get("device", "cpu") != "cpu"
                              for r in runners):
        raise UsageError("--clock cpu measures the calling thread's CPU time: use it with --threads 1 on CPU")
    records: List[Optional[Dict[str, Any]]] = [None] * len(runners)
    for threads in dict.fromkeys(r.record.get("threads") for r in runners):
        group = [i for i, r in enumerate(runners) if r.record.get("threads") == threads]
        calls = open_shuffled([runners[i].start for i in group], seed)
        for i, call in zip(group, calls):
            for _ in range(runners[i].warmup):
                call()
        if repeat is None:
            times = round_robin(calls, warmup=warmup, rounds=DEFAULT_ROUNDS, budget=DEFAULT_BUDGET_S,
                                min_rounds=DEFAULT_MIN_ROUNDS, progress=progress, clock=clock)
        else:
            times = round_robin(calls, warmup=warmup, rounds=repeat, progress=progress, clock=clock)
        name = f"{os.getpid()}.{next(_ROUND_ROBINS)}"
        for i, seconds in zip(group, times):
            records[i] = make_record(**runners[i].record, seconds=seconds, round_robin=name)
    return records
