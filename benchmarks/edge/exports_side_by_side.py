"""Round-by-round ratios from one `mixa profile --json` run that timed several exports of the same models
side by side (issue 20: today's .pte against earlier mixa's).

    mixa profile NEW/original.pte OLD/original.pte ... NEW/keep6_relu.pte OLD/keep6_relu.pte ... \
        --clock cpu --repeat 150 --threads 1 --json run.json
    python benchmarks/edge/exports_side_by_side.py run.json --exports today,s7,168113c \
        --models original,keep6_relu,keep6_stella,keep6_rala

The targets must be in the order of the command above: for each model, one program per export. Prints, per
model, each earlier export's time over today's (median over rounds of the per-round ratio: both calls of a
round met the same load) and, per export, original / student.
"""
import argparse
import json
import statistics

from mixa.profile.timing import paired_speedup


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="mixa profile --json files")
    p.add_argument("--exports", required=True, help="comma-separated labels, today's first")
    p.add_argument("--models", required=True, help="comma-separated labels, the original first")
    args = p.parse_args()
    exports, models = args.exports.split(","), args.models.split(",")
    for path in args.runs:
        records = json.load(open(path))
        if len(records) != len(exports) * len(models):
            raise SystemExit(f"{path}: {len(records)} targets, expected {len(models)} models x {len(exports)} exports")
        rounds = {(m, e): records[i * len(exports) + j]["round_ms"]
                  for i, m in enumerate(models) for j, e in enumerate(exports)}
        print(f"{path}")
        for m in models:
            today = rounds[(m, exports[0])]
            cells = [f"{e}/{exports[0]} {paired_speedup(rounds[(m, e)], today):.3f}x" for e in exports[1:]]
            print(f"  {m:16s} {exports[0]} median {statistics.median(today):6.2f} ms   " + "   ".join(cells))
        for e in exports:
            cells = [f"{m} {paired_speedup(rounds[(models[0], e)], rounds[(m, e)]):.4f}" for m in models[1:]]
            print(f"  {e:10s} {models[0]} / student: " + "   ".join(cells))


if __name__ == "__main__":
    main()
