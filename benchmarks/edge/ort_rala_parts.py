"""What rala's output gate and LePE cost in ONNX Runtime, against the original at its best.

DeiT-T/14 @224 keep-6 rala (``--select uniform``) as ``mixa convert`` builds it (identity gate, LePE) and with
``--gate none``, ``--no-lepe`` or both, their new parameters given small random values as a trained student's
would have; exported as ``mixa export`` writes them at batch 1 (``mixa.export.quantize_onnx`` for static INT8)
and timed round-robin in one process with the original in fp32 and static INT8 (the faster INT8 original on the
AVX-512 EPYCs): 1 thread, batch 1, thread CPU time. "vs original" is the median over rounds of the per-round
ratio original / student, beside the MAC ratio; each run opens new sessions in a shuffled order
(``side_by_side.fresh_runners``), and the table ends with the mean over runs and its standard error.

    PYTHONPATH=. python benchmarks/edge/ort_rala_parts.py --work /tmp/rala_parts --runs 3 --output benchmarks/edge
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "benchmarks" / "proxy"))
sys.path.insert(0, str(REPO / "benchmarks" / "edge"))

PARTS = {"rala": {}, "rala gate=none": {"gate": "none"}, "rala no-lepe": {"lepe": False},
         "rala gate=none no-lepe": {"gate": "none", "lepe": False}}
PRECISIONS = ("fp32", "static")


def main() -> int:
    from side_by_side import add_run_arguments, fresh_runners, ort_header, write_results

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(p, "ort_rala_parts")
    args = p.parse_args()
    warnings.simplefilter("ignore")
    from ort_one_image import build, calibration, export, student
    from mixa.macs import count_macs
    from mixa.profile.records import environment
    from mixa.profile.timing import paired_speedup, round_robin

    size, models = build("deit", keeps=[])  # the original alone
    original = models[0][1]
    models += [(label, student(original, 6, "rala", options)) for label, options in PARTS.items()]
    macs = {label: count_macs(model, size) for label, model in models}
    Path(args.work).mkdir(parents=True, exist_ok=True)
    calib, programs = calibration(size), []
    for label, model in models:  # as mixa export writes them at batch 1
        stem = label.replace(" ", "_").replace("=", "")
        programs += [(label, precision, export(model, Path(args.work), stem, size, "one-image", precision, calib))
                     for precision in PRECISIONS]
        print(f"  exported {label}", file=sys.stderr, flush=True)
    header = ort_header(environment(), args.rounds, "DeiT-T/14 keep-6 rala parts")
    print(header, flush=True)
    records = []
    for run in range(1, args.runs + 1):
        runners = fresh_runners([path for *_, path in programs], size[-1], run)
        times = dict(zip([(label, precision) for label, precision, _ in programs],
                         round_robin(runners, warmup=3, rounds=args.rounds, clock="cpu")))
        records += [{"run": run, "model": label, "precision": precision,
                     "mac_ratio": macs["original"] / macs[label],
                     "median_ms": statistics.median(times[(label, precision)]) * 1e3,
                     "vs_original": paired_speedup(times[("original", precision)], times[(label, precision)])}
                    for label in PARTS for precision in PRECISIONS]
        print(f"run {run}: {args.rounds} rounds, 1-minute load average {os.getloadavg()[0]:.2f}", file=sys.stderr,
              flush=True)
    table = markdown(records)
    print(table)
    write_results(args.output, "ort_rala_parts", args.tag, environment(), args.rounds, records, header, table)
    return 0


def markdown(records) -> str:
    from side_by_side import mean_table

    lines = ["| run | model | precision | MAC ratio | ms | vs original |", "|---|---|---|---:|---:|---:|"]
    lines += [f"| {r['run']} | {r['model']} | {r['precision']} | {r['mac_ratio']:.3f} | {r['median_ms']:.2f} | "
              f"{r['vs_original']:.3f} |" for r in records]
    lines += mean_table(records, lambda r: r["vs_original"], "vs original")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
