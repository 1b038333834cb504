"""The agreement `mixa distill`'s probe reads, for bench_transfer.py's proxy students.

transfer_steps "auto" probes the long transfer of a student between 15% and 50% disagreement
(mixa.distill.recipes.TRANSFER_AUTO): after a quarter of its steps the partly transferred student is compared
with the teacher on 256 training images. This runs `mixa distill` as far_k2_long plans its runs (the packaged
extremes teacher, mixa.quickstart.RECIPE for 12 epochs, transfer_steps "auto", one thread) on the students and
data of a bench_transfer --work directory, and records what the probe measured. It stops at the verdict
(``probe_keeps`` is replaced by a recorder): a kept transfer would otherwise run its remaining steps, which
benchmarks/transfer/transfer_pace already has.

    PYTHONPATH=. python benchmarks/transfer/probe_agreement.py --work /work/tr_k2long --seeds 1,2,3 \\
        --students rala_k0,rala_k2,stella_k2,hedgehog_k2 --output benchmarks/transfer/transfer_pace/probe.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


class _Verdict(Exception):
    pass


def probe(work: Path, seed: int, student: str, teacher: Path) -> dict:
    """run.json's ``transfer_steps_auto`` with ``probe`` = what the probe measured (no verdict)."""
    import mixa.distill.train as train
    from mixa.distill.recipes import probe_keeps
    from mixa.quickstart import RECIPE

    seen = {}

    def recorder(agreement):
        seen["agreement_top1"] = agreement
        raise _Verdict

    recipe = {**RECIPE, "seed": seed, "save_every_steps": 0, "transfer_steps": "auto", "epochs": 12}
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        train.probe_keeps = recorder
        try:
            train.distill(work / f"s{seed}" / "students" / student, work / f"s{seed}" / "data", run, teacher=teacher,
                          recipe=recipe, stop_after=0, device="cpu", progress=False)
        except _Verdict:
            pass
        finally:
            train.probe_keeps = probe_keeps
        auto = json.loads((run / "run.json").read_text())["transfer_steps_auto"]
    if "agreement_top1" in seen:
        auto["probe"] = {**seen, "steps": auto["probe_steps"], "kept": probe_keeps(seen["agreement_top1"])}
    return auto


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True, help="a bench_transfer.py --work directory (its students and data)")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--students", default="rala_k0,rala_k2,stella_k2,hedgehog_k2")
    p.add_argument("--teacher", default=str(REPO / "mixa" / "assets" / "extremes_teacher"))
    p.add_argument("--output", required=True, help="a JSON file; rows already in it are kept (resumable)")
    args = p.parse_args()
    import torch

    from mixa.io import write_json

    torch.set_num_threads(1)
    out = Path(args.output)
    rows = json.loads(out.read_text()) if out.is_file() else {}
    for seed in map(int, args.seeds.split(",")):
        for student in args.students.split(","):
            name = f"{student}_s{seed}"
            if name in rows:
                continue
            rows[name] = probe(Path(args.work), seed, student, Path(args.teacher))
            write_json(out, rows)
            got = rows[name].get("probe")
            print(f"{name}: converted {rows[name]['agreement_top1']:.2f}%, "
                  + (f"after {got['steps']} steps {got['agreement_top1']:.2f}% (kept: {got['kept']})" if got
                     else f"not probed (tier {rows[name]['tier']})"), flush=True)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
