"""Accuracy side of issue 13 on the offline task (the packaged trained teacher, its synthetic shapes task):
keep-6 students of every kind and every RALA gate, and MixA's relu-quadratic kept layers, distilled with the
same recipe; then INT8 of each *trained* student (ONNX Runtime dynamic / static, s8 / u8 weights, attention
cores fp32 or ORT's defaults; ExecuTorch PT2E when installed), top-1 agreement with its fp32 self on unseen
images.

    PYTHONPATH=. python benchmarks/bench_edge_accuracy.py --output benchmarks/edge

Writes OUTPUT/accuracy.json (one record per student, appended as each finishes: a killed run resumes) and
OUTPUT/ACCURACY.md. Same data and recipe as tools/bench_offline.py (mixa.quickstart.RECIPE, --epochs over
--train-images); the selection is 'first' (identical to 'sensitivity' for this teacher at k = 6, measured
in benchmarks/offline). This is the offline task, not the proxy benchmark of the issue "A proxy benchmark
that can fail" (not available when this ran).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STUDENTS = [  # (name, attn, attn_options, keep_kind), most telling first: a cut-short run still answers
    ("relu", "relu", {}, "softmax"),
    ("stella", "stella", {}, "softmax"),
    ("rala gate=identity", "rala", {"gate": "identity"}, "softmax"),
    ("rala gate=linear", "rala", {"gate": "linear"}, "softmax"),
    ("rala gate=none", "rala", {"gate": "none"}, "softmax"),
    ("stella +relu-quadratic kept", "stella", {}, "relu-quadratic"),
    ("rala gate=lowrank", "rala", {"gate": "lowrank"}, "softmax"),
    ("rala gate=identity lepe3", "rala", {"gate": "identity", "lepe_kernel": 3}, "softmax"),
]
INT8 = [(mode, w, keep) for mode in ("dynamic", "static") for w in ("s8", "u8") for keep in ("cores", "none")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", required=True)
    p.add_argument("--work", default=None, help="scratch dir (default OUTPUT/accuracy_work, removed at the end)")
    p.add_argument("--students", default=None, help="comma-separated names of STUDENTS to run (default all)")
    p.add_argument("--keep", type=int, default=6)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-images", type=int, default=3000)
    p.add_argument("--val-images", type=int, default=1000)
    p.add_argument("--int8-images", type=int, default=500, help="unseen images for INT8 agreement")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-executorch", action="store_true", help="skip the ExecuTorch INT8 column (slow lowering)")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")


    import torch

    import mixa
    from mixa.io import write_json
    from mixa.saved import load, save
    from mixa.data import synthetic
    from mixa.distill import distill, evaluate
    from mixa.export import agreement, export_onnx, quantize_onnx
    from mixa.export.executorch import agreement_pte, executorch_available, export_pte
    from mixa.profile.records import environment
    from mixa.quickstart import RECIPE, load_teacher

    torch.set_num_threads(args.threads)
    out = Path(args.output)
    work = Path(args.work) if args.work else out / "accuracy_work"
    out.mkdir(parents=True, exist_ok=True)
    path = out / "accuracy.json"
    results = json.loads(path.read_text()) if path.exists() else {"records": []}
    results["command"] = "PYTHONPATH=. python benchmarks/bench_edge_accuracy.py " + " ".join(sys.argv[1:])
    results["environment"] = environment()
    done = {r["student"] for r in results["records"]}

    data = work / "data"
    synthetic.write_image_folder(data, seed=args.seed, sizes={"train": args.train_images, "val": args.val_images})
    teacher = load_teacher()
    size = tuple(teacher.pretrained_cfg["input_size"])
    images, _ = synthetic.SyntheticShapes("calib", args.int8_images + 128, seed=args.seed + 100).tensors()
    calib = [images[i:i + 64].numpy() for i in range(0, 128, 64)]
    check = [images[i:i + 100].numpy() for i in range(128, 128 + args.int8_images, 100)]
    ev = {"batch_size": 250, "workers": 0, "device": "cpu", "progress": False}
    recipe = {**RECIPE, "epochs": args.epochs, "seed": args.seed}

    def int8_rows(model, name):
        fp32 = work / f"{name}.onnx"
        export_onnx(model, fp32, size, dynamic_batch=True)
        rows = {}
        for mode, w, keep in INT8:
            q = work / f"{name}.{mode}.{w}.{keep}.onnx"
            quantize_onnx(fp32, q, mode=mode, calib_batches=calib, weights=w, keep_fp32=keep)
            same, total = agreement(fp32, q, check)
            rows[f"ort {mode} {w} {keep}"] = 100.0 * same / total
        if executorch_available() and not args.no_executorch:
            pte = work / f"{name}.int8.pte"
            export_pte(model, pte, size, int8=True, calib_batches=calib)
            same, total = agreement_pte(model, pte, check)
            rows["executorch int8"] = 100.0 * same / total
        return rows

    if "teacher" not in results:
        t = evaluate(teacher, data, **ev)
        results["teacher"] = {"top1": t["top1"], "int8_agreement": int8_rows(teacher, "teacher")}
        write_json(path, results)
    wanted = args.students.split(",") if args.students else [s[0] for s in STUDENTS]
    for name, attn, options, keep_kind in STUDENTS:
        if name not in wanted or name in done:
            continue
        t0 = time.perf_counter()
        slug = name.replace(" ", "_").replace("=", "-").replace("+", "")
        model = mixa.convert(teacher, keep=args.keep, attn=attn, select="first", attn_options=options,
                             keep_kind=keep_kind, progress=False)
        student = work / slug / "student"
        save(model, student)
        before = evaluate(model, data, teacher=teacher, **ev)
        run = work / slug / "run"
        if run.exists():
            shutil.rmtree(run)
        distill(student, data, run, teacher=teacher, recipe=recipe, device="cpu", progress=False)
        trained = load(run / "best")
        after = evaluate(trained, data, teacher=teacher, **ev)
        record = {"student": name, "attn": attn, "attn_options": options, "keep_kind": keep_kind,
                  "top1_before": before["top1"], "top1_after": after["top1"],
                  "agreement_after": after["agreement_top1"], "int8_agreement": int8_rows(trained, slug),
                  "seconds": round(time.perf_counter() - t0, 1)}
        results["records"].append(record)
        write_json(path, results)
        print(json.dumps(record), flush=True)
        write_report(out, results, args)
    write_report(out, results, args)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def write_report(out: Path, results: dict, args) -> None:
    from mixa.io import atomic_path

    cols = [f"ort {m} {w} {k}" for m, w, k in INT8] + ["executorch int8"]
    t = results["teacher"]
    lines = ["# Accuracy after KD and INT8 agreement (offline task, keep-6 students)", "",
             f"Command: `{results['command']}`", "",
             f"CPU: {results['environment']['cpu']}. Teacher top-1 {t['top1']:.2f}%. Students: keep {args.keep}, "
             f"selection 'first', {args.epochs} KD epochs over {args.train_images} synthetic images "
             f"(mixa.quickstart.RECIPE); top-1 on {args.val_images} val images. INT8 agreement: top-1 of the "
             f"INT8 file vs the same student in fp32 on {args.int8_images} unseen images (calibration: 128 "
             f"other images).", "",
             "| student | top-1 before KD | top-1 after KD | agreement with teacher | " + " | ".join(cols) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(cols)]
    rows = [("teacher (softmax)", None, t["top1"], None, t["int8_agreement"])] + [
        (r["student"], r["top1_before"], r["top1_after"], r["agreement_after"], r["int8_agreement"])
        for r in results["records"]]
    fmt = lambda v: "-" if v is None else f"{v:.2f}"
    for name, before, after, agree, int8 in rows:
        lines.append(f"| {name} | {fmt(before)} | {fmt(after)} | {fmt(agree)} | "
                     + " | ".join(fmt(int8.get(c)) for c in cols) + " |")
    with atomic_path(out / "ACCURACY.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
