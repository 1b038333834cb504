"""Is `mixa profile`'s speed-up column repeatable? (issue 20 target: five repeated runs within 3%.)

Runs the same command -- ``mixa profile ORIGINAL.onnx STUDENT.onnx --clock cpu --threads 1`` -- five times in
a row, each in its own process as a user would, reads each run's ``--json`` records and prints the five
speed-ups of the second target over the first (the table's column, ``mixa.profile.records.speedups``) and
their spread (largest / smallest - 1). Exits 1 when the spread is over ``--tolerance`` (3%), so it can fail.

    python benchmarks/edge/profile_repeat.py                        # DeiT-T/14 224 px: original vs keep-6 relu
    python benchmarks/edge/profile_repeat.py A.onnx B.onnx --runs 5 --output /tmp/repeat.json

Without targets it exports the issue's setting first: random-init ``deit_tiny_patch16_224`` with
``patch_size=14`` and its keep-6 relu conversion (``--select uniform``), at 224 px.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def export_pair(work: Path):
    """The DeiT-T/14 original and keep-6 relu student as .onnx files in ``work``."""
    import mixa
    from mixa.export import export_onnx
    from mixa.models import create_model

    original = create_model("deit_tiny_patch16_224", pretrained=False, patch_size=14).eval()
    student = mixa.convert(original, keep=6, attn="relu", select="uniform", progress=False)
    paths = work / "original.onnx", work / "keep6_relu.onnx"
    for model, path in zip((original, student), paths):
        export_onnx(model, path, (3, 224, 224))
    return paths


def one_run(targets, out: Path, extra) -> dict:
    """One `mixa profile` process; its speed-up, medians and the load average around it."""
    shown = ["mixa", "profile", *map(str, targets), "--clock", "cpu", "--threads", "1", *extra]
    command = [sys.executable, "-m", *shown, "--json", str(out)]
    load_before, start = os.getloadavg()[0], time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if done.returncode != 0:
        raise SystemExit(f"mixa profile failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    from mixa.profile.records import describe_cpu, speedups

    records = json.loads(out.read_text())
    medians = [r["latency_ms"]["median"] for r in records]
    return {"speedup": speedups(records)[1], "median_ms": medians, "load_before": load_before,
            "load_after": os.getloadavg()[0], "seconds": time.perf_counter() - start,
            "cpu": describe_cpu(records[0]["environment"]), "command": " ".join(shown)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("targets", nargs="*", metavar="FILE.onnx",
                   help="the original and the student (default: export DeiT-T/14 and its keep-6 relu)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--tolerance", type=float, default=0.03, help="largest allowed spread (default 0.03 = 3%%)")
    p.add_argument("--profile-args", default="", metavar="'ARGS'",
                   help="more `mixa profile` arguments, e.g. '--repeat 40'")
    p.add_argument("--output", metavar="FILE.json", help="also write the runs there")
    args = p.parse_args()
    if args.targets and len(args.targets) != 2:
        p.error("give two .onnx files (the original, then the student), or none")
    if args.runs < 2:
        p.error("--runs must be at least 2")
    for target in args.targets:
        if not Path(target).is_file():
            p.error(f"{target}: no such file")

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        targets = args.targets or export_pair(work)
        runs = []
        for i in range(args.runs):
            runs.append(one_run(targets, work / f"run{i}.json", args.profile_args.split()))
            r = runs[-1]
            print(f"run {i + 1}: speed-up {r['speedup']:.3f}x  (medians {r['median_ms'][0]:.2f} / "
                  f"{r['median_ms'][1]:.2f} ms, {r['seconds']:.1f} s, load average {r['load_before']:.2f} -> "
                  f"{r['load_after']:.2f})",
                  flush=True)
    speedups = [r["speedup"] for r in runs]
    spread = max(speedups) / min(speedups) - 1
    ok = spread <= args.tolerance
    print(f"CPU: {runs[0]['cpu']}; command: {runs[0]['command']}")
    print(f"speed-ups: {', '.join(f'{s:.3f}x' for s in speedups)}; spread {spread * 100:.1f}% "
          f"({'within' if ok else 'over'} {args.tolerance * 100:.0f}%)")
    if args.output:
        from mixa.io import atomic_path

        with atomic_path(args.output) as tmp:
            Path(tmp).write_text(json.dumps({"runs": runs, "speedups": speedups, "spread": spread,
                                             "tolerance": args.tolerance, "within": ok}, indent=1))
        print(f"wrote the runs to {args.output}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
