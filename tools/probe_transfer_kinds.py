"""Probe (issue 17 item 3): why do some kinds transfer poorly on the extremes proxy?

One row = convert the packaged extremes teacher at keep k to KIND, run ``mixa.transfer.transfer`` with the
given settings on the proxy data (800 train / 1000 val scenes of --data-seed 1, written once), then measure
top-1 on the 1000 val scenes and two per-layer errors on 256 val scenes:
  forced: the layer on the *teacher's* input vs the softmax layer (what transfer trains),
  own:    the layer on the *student's own* input vs the softmax layer on that same input.
Rows are appended to --results (JSON, keyed by tag); a tag already there is skipped (resumable).

    PYTHONPATH=. python tools/probe_transfer_kinds.py --kind rala --tag rala_base --set steps=100
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", required=True)
    p.add_argument("--keep", type=int, default=0)
    p.add_argument("--tag", required=True)
    p.add_argument("--seed", type=int, default=0, help="transfer seed")
    p.add_argument("--data-seed", type=int, default=1)
    p.add_argument("--work", default="/work/probe17a")
    p.add_argument("--results", default="/work/probe17a/results.json")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="a transfer setting")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def top1(model, x, y, batch=100):
    import torch

    model.eval()
    with torch.no_grad():
        hits = sum(int((model(x[i:i + batch]).argmax(-1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    return 100.0 * hits / len(x)


def own_input_errors(student, teacher, layers, x):
    """Per layer: ||layer(h_s) - softmax_layer(h_s)||^2 / ||softmax_layer(h_s)||^2 on the student's own
    inputs h_s; and the residual stream's relative distance to the teacher's after each block."""
    import torch

    inputs = {}
    handles = [student.get_submodule(p).register_forward_pre_hook(
        lambda m, a, p=p: inputs.__setitem__(p, a[0].detach())) for p in layers]
    with torch.no_grad():
        student(x)
        for h in handles:
            h.remove()
        out = {}
        for p in layers:
            t = teacher.get_submodule(p)(inputs[p]).float()
            s = student.get_submodule(p)(inputs[p]).float()
            out[p] = float((s - t).pow(2).sum() / t.pow(2).sum())
    return out


def main(argv=None):
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    import mixa
    from mixa.data import synthetic
    from mixa.io import write_json
    from mixa.transfer import transfer
    from mixa.transfer.run import replaced_layers

    results_path = Path(args.results)
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    if args.tag in results and "top1" in results[args.tag]:
        print(f"{args.tag}: done already: {results[args.tag]['top1']}")
        return 0
    work = Path(args.work)
    data = work / f"data_s{args.data_seed}"
    if not (data / "val").is_dir():
        synthetic.write_image_folder(data, seed=args.data_seed, sizes={"train": 800, "val": 1000}, task="extremes")
    teacher = mixa.load(REPO / "mixa/assets/extremes_teacher").eval()
    val_x, val_y = synthetic.SyntheticShapes("val", 1000, seed=args.data_seed, task="extremes").tensors()
    torch.manual_seed(0)
    student_dir = work / f"student_{args.kind}_k{args.keep}"
    if not student_dir.is_dir():
        mixa.save(mixa.convert(teacher, keep=args.keep, attn=args.kind, select="uniform", progress=False), student_dir)
    settings = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    settings.setdefault("steps", 100)
    t0 = time.process_time()
    result = transfer(student_dir, data, work / "runs" / args.tag, seed=args.seed, workers=0, progress=False,
                      resume=(work / "runs" / args.tag / "last").is_dir(), **settings)
    cpu = time.process_time() - t0
    student = mixa.load(work / "runs" / args.tag).eval()
    converted = mixa.load(student_dir).eval()
    layers = list(replaced_layers(student))
    row = {"kind": args.kind, "keep": args.keep, "seed": args.seed, "data_seed": args.data_seed, "settings": settings,
           "command": "PYTHONPATH=. python tools/probe_transfer_kinds.py " + " ".join(sys.argv[1:]),
           "teacher": top1(teacher, val_x, val_y), "converted": top1(converted, val_x, val_y),
           "top1": top1(student, val_x, val_y), "cpu_s": round(cpu, 1),
           "forced": {p: result.get(f"holdout_error/{p}") for p in layers},
           "forced_before": {p: result["first"].get(f"holdout_error/{p}") for p in layers},
           "own": own_input_errors(student, teacher, layers, val_x[:256]),
           "own_before": own_input_errors(converted, teacher, layers, val_x[:256])}
    row["recovered"] = (row["top1"] - row["converted"]) / (row["teacher"] - row["converted"])
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results[args.tag] = row
    write_json(results_path, results)
    fmt = lambda d: " ".join(f"{v:.3f}" for v in d.values())
    print(f"{args.tag}: converted {row['converted']:.1f} -> {row['top1']:.1f} (teacher {row['teacher']:.1f}, "
          f"recovered {100 * row['recovered']:.0f}%), {cpu:.0f} s CPU\n forced {fmt(row['forced'])}\n"
          f" own    {fmt(row['own'])}\n own-before {fmt(row['own_before'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
