"""Byte-identical ONNX Runtime programs timed side by side: how far apart their sessions alone put them.

Copies of one program (the DeiT-T/14 @224 original, static INT8, as ``mixa export`` writes it at batch 1), each
in its own session, timed round-robin in one process: 1 thread, batch 1, thread CPU time. Every copy's speed
against copy 0 is the median over rounds of the per-round ratio (``mixa.profile.timing.paired_speedup``); with
nothing but the program deciding, every ratio would be 1. Two ways of opening the sessions:

- ``reused``: opened once, in the copies' order, and timed again in every run (what the edge benchmarks did up
  to the twentieth session);
- ``shuffled``: opened anew each run, in an order shuffled by the run (``side_by_side.fresh_runners``, what the
  ONNX Runtime benchmarks of this folder do since the twenty-first session).

Printed per mode: each copy's ratio in every run, its mean over the runs, and the spread of those means (copy
0's, 1 by definition, included) -- the part of a ratio that repeating runs does not average away. The fault this
shows: with ``reused``, a copy's place in the opening order moves its speed the same way in every run, so the
runs agree with each other while all being off by the same amount.

    PYTHONPATH=. python benchmarks/edge/ort_session_order.py --work /tmp/session_order --runs 5 \\
        --output benchmarks/edge
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODES = ("reused", "shuffled")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True, help="the program and its copies (kept: a second call only times)")
    p.add_argument("--copies", type=int, default=5, help="copies of the program, copy 0 the reference")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--rounds", type=int, default=150)
    p.add_argument("--output", default=None, metavar="DIR", help="write ort_session_order[_TAG].{json,md} there")
    p.add_argument("--tag", default=None)
    args = p.parse_args()
    if args.copies < 2 or args.runs < 2:
        p.error("--copies and --runs: at least 2")
    warnings.simplefilter("ignore")
    from bench_edge import OrtRunner
    from ort_one_image import build, calibration, export
    from side_by_side import fresh_runners, ort_header, write_results
    from mixa.profile.records import environment
    from mixa.profile.timing import paired_speedup, round_robin

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    size, ((_, original),) = build("deit", keeps=[], kinds=())
    program = export(original, work, "original", size, "one-image", "static", calibration(size))
    copies = [work / f"copy{i}.onnx" for i in range(args.copies)]
    for copy in copies:
        if not copy.is_file():
            shutil.copyfile(program, copy)
    header = ort_header(environment(), args.rounds, f"{args.copies} copies of one static INT8 DeiT-T/14 program; "
                        f"sessions {' then '.join(MODES)}", fresh_sessions=False)
    print(header, flush=True)
    records = []
    for mode in MODES:
        reused = [OrtRunner(copy, 1, size[-1]) for copy in copies] if mode == "reused" else None
        for run in range(1, args.runs + 1):
            runners = reused or fresh_runners(copies, size[-1], run)
            times = round_robin(runners, warmup=3, rounds=args.rounds, clock="cpu")
            ratios = [paired_speedup(times[0], t) for t in times[1:]]
            records.append({"mode": mode, "run": run, "vs_copy0": ratios})
            print(f"{mode} run {run}: " + " ".join(f"{r:.4f}" for r in ratios), file=sys.stderr, flush=True)
    table = markdown(records)
    print(table)
    write_results(args.output, "ort_session_order", args.tag, environment(), args.rounds, records, header, table)
    return 0


def markdown(records) -> str:
    copies = len(records[0]["vs_copy0"])
    lines = ["| mode | run | " + " | ".join(f"copy {i} / copy 0" for i in range(1, copies + 1)) + " |",
             "|---|---|" + "---:|" * copies]
    for mode in MODES:
        rows = [r["vs_copy0"] for r in records if r["mode"] == mode]
        lines += [f"| {mode} | {run} | " + " | ".join(f"{v:.4f}" for v in row) + " |"
                  for run, row in enumerate(rows, 1)]
        means = [statistics.mean(column) for column in zip(*rows)]
        lines.append(f"| {mode} | mean | " + " | ".join(f"{v:.4f}" for v in means) + " |")
        spread = max(means + [1.0]) - min(means + [1.0])  # copy 0's own mean is 1
        lines.append(f"| {mode} | spread of the means (copy 0 included) | {100 * spread:.2f}% |" + " |" * (copies - 1))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
