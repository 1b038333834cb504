"""Target 4 of issue 17 for the between transfer: images to control - 1 of `mixa distill`'s default (the
``tkd-auto`` rows) against KD alone, on the far k = 2 rows and rala k = 0, seeds 1-3: ``auto/`` at the
seventeenth session's rule, ``auto_lr15/`` (rala k = 0) at the eighteenth's, whose stage after a transfer that
left the student 5-15% from the teacher runs at lr x 0.2 instead of the recipe's lr.

KD alone is taken from two earlier grids of the same students and data (bench_transfer.py, same seeds):
``fine_k2b/`` (the proxy's 3-epoch plan, points every 256 images; k = 2 rows) and ``far_k2_long/`` (a 12-epoch
plan, points every 512 images). Images to control - 1 are bench_transfer's ``images_to_reach`` on each
seed's curve and on the mean curve over the seeds.

    PYTHONPATH=. python benchmarks/transfer/between/reach.py
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location("bench_transfer", HERE.parent / "bench_transfer.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def rows(path: Path, seeds=(1, 2, 3)) -> dict:
    """bench_transfer's summary rows of a results.json, over ``seeds`` only."""
    results = json.loads(path.read_text())
    results["records"] = [r for r in results["records"] if r["seed"] in seeds]
    return {(r["kind"], r["keep"], r["mode"]): r for r in bench.summary_rows(results)}


def main() -> None:
    defaults = {"seventeenth session (auto/)": rows(HERE / "auto" / "results.json"),
                "eighteenth session (auto_lr15/)": rows(HERE / "auto_lr15" / "results.json")}
    references = {"3-epoch plan (fine_k2b)": rows(HERE.parent / "fine_k2b" / "results.json"),
                  "12-epoch plan (far_k2_long)": rows(HERE.parent / "far_k2_long" / "results.json")}
    show = lambda v: "—" if v is None else str(v)  # noqa: E731
    print("| kind | k | default | KD alone | KD alone: each seed; mean curve | default: each seed; mean curve "
          "| at most half (mean curve) |")
    print("|---|---:|---|---|---|---|---|")
    for version, auto in defaults.items():
        for (kind, keep, mode), row in sorted(auto.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            if mode != "tkd-auto":
                continue
            for label, ref in references.items():
                kd = ref.get((kind, keep, "kd"))
                if kd is None or kd["seeds"] != row["seeds"]:
                    continue
                half = bench.at_most_half(kd["reach_mean_curve"], row["reach_mean_curve"])
                print(f"| {kind} | {keep} | {version} | {label} | {', '.join(map(show, kd['reach_each']))}; "
                      f"{show(kd['reach_mean_curve'])} | {', '.join(map(show, row['reach_each']))}; "
                      f"{show(row['reach_mean_curve'])} | {half} |")


if __name__ == "__main__":
    main()
