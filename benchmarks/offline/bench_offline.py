"""Offline benchmark of conversion + distillation on the embedded teacher and synthetic task.

For each linear kind (relu, stella, rala) and k (softmax layers kept) in {0, 2, 4, 6, 8}: top-1 before
and after KD fine-tuning, agreement with the teacher, ONNX Runtime CPU latency; and at k = 6 the
sensitivity selection against first / last / uniform. Writes OUTPUT/results.json (one record per
configuration, appended as each finishes: a killed run resumes), OUTPUT/RESULTS.md and OUTPUT/offline.png.

    PYTHONPATH=. python tools/bench_offline.py --output benchmarks/offline

Every student gets the same data and the same KD recipe (mixa.quickstart.RECIPE, --epochs epochs over
--train-images images), so rows differ only in kind, k and selection.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KINDS = ("relu", "stella", "rala")
KS = (0, 2, 4, 6, 8)
STRATEGIES = ("sensitivity", "first", "last", "uniform")


def configurations(kinds, ks, strategies_at):
    """The most telling runs first (k = strategies_at, every selection), so a cut-short run still answers
    the targets; then the k sweep."""
    order = []
    for strategy in STRATEGIES:
        order += [(kind, strategies_at, strategy) for kind in kinds if strategies_at in ks]
    for k in ks:
        if k != strategies_at:
            order += [(kind, k, "sensitivity") for kind in kinds]
    return order


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="benchmarks/offline")
    p.add_argument("--work", default=None, help="scratch dir for data and runs (default OUTPUT/work, removed at the end)")
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--ks", default=",".join(map(str, KS)))
    p.add_argument("--strategies-at", type=int, default=6, help="k at which first/last/uniform are compared")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-images", type=int, default=3000)
    p.add_argument("--val-images", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--profile-repeat", type=int, default=100)
    p.add_argument("--seed", type=int, default=1, help="data seed (the teacher was trained and selected on seed 0)")
    p.add_argument("--keep-work", action="store_true")
    p.add_argument("--report-only", action="store_true",
                   help="skip the runs: redo the latency pass on --work and rewrite the report")
    p.add_argument("--latency-rounds", type=int, default=5,
                   help="final latency pass: every model's ONNX file timed in turn, this many rounds; "
                        "the reported latency is the median over rounds (the CPU may be shared)")
    args = p.parse_args(argv)

    import torch

    import mixa
    from mixa.io import write_json
    from mixa.saved import save
    from mixa.data import synthetic
    from mixa.distill import distill, evaluate
    from mixa.export import export_onnx
    from mixa.profile.ort import profile_file
    from mixa.quickstart import RECIPE, load_teacher

    torch.set_num_threads(args.threads)
    out = Path(args.output)
    work = Path(args.work) if args.work else out / "work"
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {"records": []}
    done = {(r["kind"], r["keep"], r["select"]) for r in results["records"]}

    if args.report_only:
        remeasure_latency(results, work, args.threads, args.latency_rounds, args.profile_repeat)
        write_json(results_path, results)
        write_report(out, results)
        return

    data = work / "data"
    synthetic.write_image_folder(data, seed=args.seed, sizes={"train": args.train_images, "val": args.val_images})
    teacher = load_teacher()
    input_size = tuple(teacher.pretrained_cfg["input_size"])
    calib_x, _ = synthetic.SyntheticShapes("calib", 256, seed=args.seed).tensors()
    calib = list(calib_x.split(64))
    ev = {"batch_size": 250, "workers": 0, "device": "cpu", "progress": False}
    recipe = {**RECIPE, "epochs": args.epochs, "seed": args.seed}

    def latency(model, name):
        path = work / f"{name}.onnx"
        export_onnx(model, path, input_size)
        record = profile_file(path, threads=args.threads, batch=1, resolution=None, warmup=20,
                              repeat=args.profile_repeat, label=name)
        return record["latency_ms"]["median"]

    if "teacher" not in results:
        t = evaluate(teacher, data, **ev)
        results["teacher"] = {"top1": t["top1"], "latency_ms": latency(teacher, "teacher")}
        write_json(results_path, results)
    print(f"teacher top-1 {results['teacher']['top1']:.2f}%  latency {results['teacher']['latency_ms']:.3f} ms",
          flush=True)

    latencies = {(r["kind"], r["keep"]): r["latency_ms"] for r in results["records"]}
    kinds = args.kinds.split(",")
    ks = [int(k) for k in args.ks.split(",")]
    for kind, keep, strategy in configurations(kinds, ks, args.strategies_at):
        if (kind, keep, strategy) in done:
            continue
        t0 = time.perf_counter()
        name = f"{kind}_k{keep}_{strategy}"
        model = mixa.convert(teacher, keep=keep, attn=kind, select=strategy,
                             calib=calib if strategy == "sensitivity" else None, calib_images=None,
                             progress=False)
        kept = model.mixa_config["selection"]["kept"]
        twin = next((r for r in results["records"] if r["kind"] == kind and sorted(r["kept"]) == sorted(kept)), None)
        if twin is not None:  # the same layers kept: the same student, the same (deterministic) run
            record = {**twin, "select": strategy, "same_as": twin["select"], "seconds": 0.0}
            results["records"].append(record)
            write_json(results_path, results)
            print(json.dumps(record), flush=True)
            continue
        student = work / name / "student"
        save(model, student)
        before = evaluate(model, data, teacher=teacher, **ev)
        run = work / name / "run"
        if run.exists():
            shutil.rmtree(run)
        distill(student, data, run, teacher=teacher, recipe=recipe, device="cpu", progress=False)
        after = evaluate(run / "best", data, teacher=teacher, **ev)
        if (kind, keep) not in latencies:
            latencies[(kind, keep)] = latency(model, name)
        record = {"kind": kind, "keep": keep, "select": strategy,
                  "kept": kept,
                  "top1_before": before["top1"], "agreement_before": before["agreement_top1"],
                  "top1_after": after["top1"], "agreement_after": after["agreement_top1"],
                  "latency_ms": latencies[(kind, keep)], "seconds": round(time.perf_counter() - t0, 1)}
        results["records"].append(record)
        write_json(results_path, results)
        print(json.dumps(record), flush=True)

    remeasure_latency(results, work, args.threads, args.latency_rounds, args.profile_repeat)
    write_json(results_path, results)
    results["settings"] = {"epochs": args.epochs, "train_images": args.train_images, "val_images": args.val_images,
                           "threads": args.threads, "seed": args.seed, "recipe": recipe,
                           "command": "PYTHONPATH=. python tools/bench_offline.py " + " ".join(sys.argv[1:])}
    write_json(results_path, results)
    write_report(out, results)
    if not args.keep_work and args.work is None:
        shutil.rmtree(work, ignore_errors=True)


def remeasure_latency(results, work: Path, threads: int, rounds: int, repeat: int) -> None:
    """Time every (kind, k) ONNX file and the teacher's side by side: round-robin over the files,
    ``rounds`` times, median per round, median over rounds. Latencies taken one after another during
    the runs drift with the load of a shared machine; interleaving exposes every file to the same load."""
    from statistics import median

    from mixa.profile.ort import profile_file

    files = {("teacher", None): work / "teacher.onnx"}
    for r in results["records"]:
        if r.get("same_as"):
            continue
        path = work / f"{r['kind']}_k{r['keep']}_{r['select']}.onnx"
        if path.is_file():
            files.setdefault((r["kind"], r["keep"]), path)
    per_file = {key: [] for key in files}
    for _ in range(rounds):
        for key, path in files.items():
            record = profile_file(path, threads=threads, batch=1, resolution=None, warmup=10, repeat=repeat)
            per_file[key].append(record["latency_ms"]["median"])
    latency = {key: median(values) for key, values in per_file.items()}
    results["teacher"]["latency_ms"] = latency[("teacher", None)]
    for r in results["records"]:
        if (r["kind"], r["keep"]) in latency:
            r["latency_ms"] = latency[(r["kind"], r["keep"])]
    results["latency_method"] = (f"ONNX Runtime, {threads} thread(s), batch 1; {rounds} interleaved rounds of "
                                 f"{repeat} runs per model, median of the per-round medians")


def write_report(out: Path, results) -> None:
    t = results["teacher"]
    recs = results["records"]
    lines = [f"# Offline benchmark: conversion + KD on the embedded teacher",
             "",
             f"Teacher (12 softmax layers): top-1 **{t['top1']:.2f}%**, latency {t['latency_ms']:.3f} ms. "
             f"Latency: {results.get('latency_method', 'ONNX Runtime CPU, batch 1')}.",
             "",
             f"Command: `{results.get('settings', {}).get('command', '')}`",
             "",
             "## Kinds x k (sensitivity selection)",
             "",
             "| kind | k | kept layers | top-1 before KD | top-1 after KD | gap to teacher | agreement after KD "
             "| latency (ms) |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in sorted((r for r in recs if r["select"] == "sensitivity"), key=lambda r: (r["kind"], r["keep"])):
        lines.append(f"| {r['kind']} | {r['keep']} | {r['kept']} | {r['top1_before']:.2f} | {r['top1_after']:.2f} "
                     f"| {r['top1_after'] - t['top1']:+.2f} | {r['agreement_after']:.2f} | {r['latency_ms']:.3f} |")
    lines += ["", "## Selection strategies at fixed k", "",
              "| kind | k | selection | kept layers | top-1 before KD | top-1 after KD | agreement after KD |",
              "|---|---:|---|---|---:|---:|---:|"]
    ks_compared = {r["keep"] for r in recs if r["select"] != "sensitivity"}
    for r in sorted((r for r in recs if r["keep"] in ks_compared),
                    key=lambda r: (r["kind"], r["keep"], STRATEGIES.index(r["select"]))):
        same = f" (= {r['same_as']})" if r.get("same_as") else ""
        lines.append(f"| {r['kind']} | {r['keep']} | {r['select']}{same} | {r['kept']} | {r['top1_before']:.2f} "
                     f"| {r['top1_after']:.2f} | {r['agreement_after']:.2f} |")
    s = results.get("settings", {})
    lines += ["", f"Settings: {s.get('epochs')} KD epochs over {s.get('train_images')} synthetic training images, "
                  f"{s.get('val_images')} val images, {s.get('threads')} thread(s). Plot: offline.png.", ""]
    (out / "RESULTS.md").write_text("\n".join(lines))
    try:
        plot(out / "offline.png", results)
    except ImportError:
        print("matplotlib is not installed (pip install 'mixa[plot]'): no plot", file=sys.stderr)


def plot(path: Path, results) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = results["teacher"]
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for kind, colour in zip(KINDS, ("tab:blue", "tab:orange", "tab:green")):
        rs = sorted((r for r in results["records"] if r["kind"] == kind and r["select"] == "sensitivity"),
                    key=lambda r: r["keep"])
        if not rs:
            continue
        ks = [r["keep"] for r in rs]
        ax[0].plot(ks, [r["top1_after"] for r in rs], "o-", color=colour, label=f"{kind} after KD")
        ax[0].plot(ks, [r["top1_before"] for r in rs], "x--", color=colour, alpha=0.6, label=f"{kind} before KD")
        ax[1].plot([r["latency_ms"] for r in rs], [r["top1_after"] for r in rs], "o-", color=colour, label=kind)
        for r in rs:
            ax[1].annotate(f"k={r['keep']}", (r["latency_ms"], r["top1_after"]), fontsize=7)
    ax[0].axhline(t["top1"], color="black", lw=1, label="teacher")
    ax[0].set_xlabel("softmax layers kept (k of 12)")
    ax[0].set_ylabel("val top-1 (%)")
    ax[0].legend(fontsize=7)
    ax[1].axhline(t["top1"], color="black", lw=1)
    ax[1].axvline(t["latency_ms"], color="black", lw=1, ls=":")
    ax[1].set_xlabel("ORT CPU latency, batch 1 (ms)")
    ax[1].set_ylabel("val top-1 after KD (%)")
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
