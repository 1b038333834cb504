"""What the ONNX Runtime side-by-side benchmarks of this folder share: the sessions of one run, the line naming
the machine and the timing, and the results written as ``NAME[_TAG].json`` (the command, environment and
records) and ``.md``."""
from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path
from typing import Optional, Sequence

from mixa.profile.records import describe_cpu


def add_run_arguments(p, name: str) -> None:
    """The flags every timing script here takes: where its programs live, rounds, runs, where ``name``'s
    results go."""
    p.add_argument("--work", required=True, help="the .onnx programs (kept: a second call only times)")
    p.add_argument("--rounds", type=int, default=150)
    p.add_argument("--runs", type=int, default=1, help="timings, each a round-robin of new sessions in this process")
    p.add_argument("--output", default=None, metavar="DIR", help=f"write {name}[_TAG].{{json,md}} there")
    p.add_argument("--tag", default=None)


def fresh_runners(paths: Sequence, size: int, run: int) -> list:
    """A new 1-thread ONNX Runtime session for each of ``paths`` (``bench_edge.OrtRunner``, one image of ``size``
    px), opened in an order shuffled by ``run``, returned in the order of ``paths``. Sessions opened one after
    another in a fixed order ran byte-identical programs up to 2% apart, in the same pattern in every run that
    reused that order; opened in a new order each run, the pattern changed from run to run
    (``ort_session_order.py``). So each run is a new sample of that effect, not a repeat of one draw."""
    from bench_edge import OrtRunner
    from mixa.profile.compare import open_shuffled

    return open_shuffled([lambda path=path: OrtRunner(path, 1, size) for path in paths], run)


def mean_band(values: Sequence[float]) -> str:
    """Runs of new sessions are independent samples: their mean, its standard error and their range."""
    mean = statistics.mean(values)
    error = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return f"{mean:.3f} +- {error:.3f} ({min(values):.3f}-{max(values):.3f}, {len(values)} runs)"


def mean_table(records: Sequence[dict], value, what: str) -> list:
    """Markdown lines (a blank one first) of a table of ``mean_band`` over the runs of each (model, precision)
    of ``records``, in the order first met; ``value(record)`` is the number, ``what`` names it."""
    lines = ["", f"| model | precision | {what}: mean +- standard error (range, runs) |", "|---|---|---|"]
    for key in dict.fromkeys((r["model"], r["precision"]) for r in records):
        values = [value(r) for r in records if (r["model"], r["precision"]) == key]
        lines.append(f"| {key[0]} | {key[1]} | {mean_band(values)} |")
    return lines


def ort_header(env: dict, rounds: int, what: str = "", fresh_sessions: bool = True) -> str:
    """The CPU, ONNX Runtime version and timing settings of a 1-thread round-robin run, and its command."""
    sessions = ", sessions opened anew in a shuffled order each run (fresh_runners)" if fresh_sessions else ""
    return (f"CPU: {describe_cpu(env)}; ONNX Runtime "
            f"{env['versions']['onnxruntime']}, 1 thread, batch 1, thread CPU time, {rounds} rounds "
            f"round-robin in one process{sessions}; {what + '; ' if what else ''}command: python {' '.join(sys.argv)}")


def write_results(output: Optional[str], name: str, tag: Optional[str], env: dict, rounds: int, records: list,
                  header: str, table: str) -> None:
    """``output/name[_tag].json`` and ``.md``; nothing when ``output`` is None."""
    if not output:
        return
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / (name + (f"_{tag}" if tag else ""))
    stem.with_suffix(".json").write_text(json.dumps({"command": " ".join(sys.argv), "environment": env,
                                                     "rounds": rounds, "records": records}, indent=1))
    stem.with_suffix(".md").write_text(header + "\n\n" + table + "\n")
    print(f"wrote {stem}.json and {stem}.md", file=sys.stderr)
