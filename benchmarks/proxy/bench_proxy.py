"""Proxy benchmark: conversion + KD on a 256-token synthetic task and its converged teacher.

The task is the one the teacher was trained on (its training.json): by default mixa/assets/extremes_teacher
and the ``extremes`` task. Every row is one KD run from the teacher with one recipe (mixa.quickstart.RECIPE with
``--epochs`` epochs over ``--train-images`` images, seed --seed); rows differ only in the student:

- ``control``: the teacher itself, fine-tuned with exactly that recipe and itself as the KD teacher
  (MixA's fair comparison: what the recipe alone does to a model that lost nothing);
- every linear kind at k = 0 and k = 6 (sensitivity selection), rala at k = 2, 4, 8;
- rala at k = 6 with the fixed selections first / last / uniform.

A row records top-1 before KD, after KD (the last checkpoint, no best-of selection on val), the gap to
the control and to the teacher, top-1 agreement with the teacher, MACs, and the curve of val top-1 and
agreement after every epoch (``--train-images`` images seen per point, the first point is before KD).
Latency: every model exported to ONNX and timed by ONNX Runtime (1 thread, batch 1), round-robin over
all files at the end so that each sees the same load of a shared machine.

    PYTHONPATH=. python benchmarks/proxy/bench_proxy.py --work /work/proxy_runs/extremes

writes benchmarks/proxy/<task>/ (benchmarks/proxy/relations/ holds the earlier task's run).

OUTPUT/results.json gets each row as it finishes (a killed run resumes: finished rows are kept, an
interrupted KD run continues from its last checkpoint); OUTPUT/RESULTS.md and OUTPUT/proxy.png are
rewritten after every row. Rows can be shared out between processes, one per core (``--only`` with
disjoint row lists; they add their rows to the same results.json under a file lock); a sharded run
skips the latency pass, which ``--report-only`` then does once, alone on the machine, with the report.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

REPO = Path(__file__).resolve().parents[2]
TEACHER_DIR = REPO / "mixa" / "assets" / "extremes_teacher"
STRATEGIES = ("sensitivity", "first", "last", "uniform")


def rows(kinds, main_kind: str):
    """(name, kind, keep, select) in the order that answers the targets soonest."""
    def row(kind, keep, select="sensitivity"):
        return (f"{kind}_k{keep}" + (f"_{select}" if keep else ""), kind, keep, select)

    others = [kind for kind in kinds if kind != main_kind]
    order = [("control", None, 12, None), row(main_kind, 6), row(main_kind, 0), row(main_kind, 6, "uniform")]
    order += [row(kind, 6) for kind in others]
    order += [row(main_kind, 6, "first"), row(main_kind, 6, "last")]
    order += [row(kind, 0) for kind in others]
    order += [row(main_kind, k) for k in (2, 4, 8)]
    return order


def teacher_task(directory: Path) -> str:
    """The task a packaged teacher was trained on, from its training record."""
    return json.loads((Path(directory) / "training.json").read_text())["task"]


def sensitivity_scores(path: Path, teacher, kind: str, calib) -> list:
    """``kind``'s per-layer sensitivity scores (mixa.convert's, on the ``calib`` batches), computed once and
    kept in results.json at ``path``. Sensitivity keeps the k layers with the largest scores, and the scores
    do not depend on k: every k of a kind reuses them (the same kept layers)."""
    import mixa

    made = update_results(path, lambda r: None).get("sensitivity_scores", {})
    if kind not in made:
        model = mixa.convert(teacher, keep=1, attn=kind, select="sensitivity", calib=calib, calib_images=None,
                             progress=False)
        score = model.mixa_config["selection"]["scores"]
        made = update_results(path, lambda r: r.setdefault("sensitivity_scores", {})
                              .setdefault(kind, score)).get("sensitivity_scores", {})
    return made[kind]


def update_results(path: Path, change) -> dict:
    """Read-modify-write of results.json under an exclusive lock, so that several benchmark processes
    (``--only`` shards) can add their rows to one file; returns the file's new contents."""
    import fcntl

    from mixa.io import write_json

    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = json.loads(path.read_text()) if path.exists() else {"records": []}
        change(results)
        write_json(path, results)
    return results


def load_teacher(directory: Path):
    """The packaged teacher; mixa.load records a saved plain model as its own original, so students
    converted from it name it as their distillation teacher."""
    from mixa.saved import load

    return load(directory)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=None, help="default benchmarks/proxy/<the teacher's task>")
    p.add_argument("--teacher", default=str(TEACHER_DIR), help="saved teacher dir (default the packaged one)")
    p.add_argument("--work", default="proxy-work", help="data, students, KD runs and ONNX files (kept: resumable)")
    p.add_argument("--epochs", type=int, default=3, help="KD epochs = points of the curve after the first")
    p.add_argument("--train-images", type=int, default=800, help="training images (seen once per epoch)")
    p.add_argument("--val-images", type=int, default=1000)
    p.add_argument("--calib-images", type=int, default=128)
    p.add_argument("--seed", type=int, default=1, help="data and KD seed (the teacher was trained on seed 0)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", default=None, help="comma-separated row names to run (default all)")
    p.add_argument("--latency-rounds", type=int, default=5)
    p.add_argument("--latency-repeat", type=int, default=50)
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)

    import torch

    import mixa
    from mixa.saved import is_model_dir, load, save
    from mixa.attention import list_attention_kinds
    from mixa.conversion.select import top_k
    from mixa.data import synthetic
    from mixa.distill import distill, evaluate
    from mixa.macs import count_macs
    from mixa.quickstart import RECIPE

    torch.set_num_threads(args.threads)
    teacher_dir = Path(args.teacher).resolve()
    task = teacher_task(teacher_dir)
    out, work = Path(args.output or REPO / "benchmarks" / "proxy" / task), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    recipe = {**RECIPE, "epochs": args.epochs, "seed": args.seed, "save_every_steps": 0}
    settings = {"task": task, "teacher": str(teacher_dir.relative_to(REPO)) if teacher_dir.is_relative_to(REPO) else str(teacher_dir),
                "epochs": args.epochs, "train_images": args.train_images, "val_images": args.val_images,
                "calib_images": args.calib_images, "seed": args.seed, "threads": args.threads, "recipe": recipe,
                "images_seen": args.epochs * args.train_images}
    command = "PYTHONPATH=. python benchmarks/proxy/bench_proxy.py " + " ".join(sys.argv[1:] if argv is None else argv)

    def claim(results):
        """Rows in one file must come from one set of settings; every command that made rows (one per
        shard) is recorded, and a --report-only pass beside them."""
        made = results.get("settings")
        if made and {k: v for k, v in made.items() if k not in ("commands", "report_command")} != settings:
            sys.exit(f"{results_path} holds rows made with other settings; choose another --output")
        commands = list((made or {}).get("commands", []))
        if not args.report_only and command not in commands:
            commands.append(command)
        results["settings"] = {**settings, "commands": commands}
        if args.report_only:
            results["settings"]["report_command"] = command

    results = update_results(results_path, claim)

    if args.report_only:
        remeasure_latency(results, work, args.threads, args.latency_rounds, args.latency_repeat)
        op_breakdown(results, work, args.threads)
        results = update_results(results_path, lambda r: r.update(
            {k: results[k] for k in ("teacher", "records", "latency_method", "op_profile")}))
        write_report(out, results)
        return

    data = work / "data"
    synthetic.write_image_folder(data, seed=args.seed, sizes={"train": args.train_images, "val": args.val_images},
                                 task=task, progress=True)
    teacher = load_teacher(teacher_dir).eval()
    input_size = tuple(teacher.pretrained_cfg["input_size"])
    calib_x, _ = synthetic.SyntheticShapes("calib", args.calib_images, seed=args.seed, task=task).tensors()
    calib = list(calib_x.split(64))
    ev = {"batch_size": 250, "workers": 0, "device": "cpu", "progress": False}

    def export(model, name):
        from mixa.export import export_onnx

        path = work / "onnx" / f"{name}.onnx"
        if not path.is_file():
            export_onnx(model, path, input_size)
        return path

    if "teacher" not in results:
        t = evaluate(teacher, data, **ev)
        export(teacher, "teacher")
        record = {"top1": t["top1"], "macs": count_macs(teacher, input_size),
                  "training": json.loads((teacher_dir / "training.json").read_text())["command"]}
        results = update_results(results_path, lambda r: r.setdefault("teacher", record))
    print(f"teacher top-1 {results['teacher']['top1']:.2f}%", flush=True)

    kinds = list_attention_kinds(linear_only=True)
    wanted = set(args.only.split(",")) if args.only else None
    for name, kind, keep, select in rows(kinds, "rala"):
        if wanted is not None and name not in wanted:
            continue
        results = update_results(results_path, lambda r: None)  # rows and scores other shards added
        if any(r["name"] == name for r in results["records"]):
            continue
        t0 = time.perf_counter()
        if kind is None:
            model = load_teacher(teacher_dir)
            kept = list(range(12))
        else:
            if select == "sensitivity":
                scores = sensitivity_scores(results_path, teacher, kind, calib)
                model = mixa.convert(teacher, keep=keep, attn=kind, select=top_k(scores, keep), progress=False)
            else:
                model = mixa.convert(teacher, keep=keep, attn=kind, select=select, progress=False)
            kept = model.mixa_config["selection"]["kept"]
            twin = next((r for r in results["records"] if r["kind"] == kind and r["kept"] == kept), None)
            if twin is not None:  # the same layers kept: the same student, the same deterministic run
                record = {**twin, "name": name, "select": select, "same_as": twin["name"], "seconds": 0.0}
                results = update_results(results_path, lambda r: r["records"].append(record))
                write_report(out, results)
                print(json.dumps({k: v for k, v in record.items() if k != "curve"}), flush=True)
                continue
        student, run = work / name / "student", work / name / "run"
        if not is_model_dir(student):
            save(model, student)
        before = evaluate(model, data, teacher=teacher, **ev)
        resume = (run / "last").exists()
        final = distill(student, data, run, teacher=teacher, recipe=recipe, resume=resume, device="cpu",
                        progress=True, transfer_steps=0)  # KD only, as measured (distill transfers first by default)
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
        curve = [{"images": 0, "top1": before["top1"], "agreement": before["agreement_top1"]}]
        curve += [{"images": m["epoch"] * args.train_images, "top1": m["val_top1"],
                   "agreement": m["agreement_top1"], "kl": m["mean_kl"]} for m in metrics]
        record = {"name": name, "kind": kind or "softmax", "keep": keep, "select": select, "kept": kept,
                  "top1_before": before["top1"], "agreement_before": before["agreement_top1"],
                  "top1_after": final["val_top1"], "agreement_after": final["agreement_top1"],
                  "mean_kl_after": final["mean_kl"], "macs": count_macs(model, input_size),
                  "onnx": str(export(load(run / "last"), name).relative_to(work)),
                  "curve": curve, "seconds": round(time.perf_counter() - t0, 1)}
        results = update_results(results_path, lambda r: r["records"].append(record))
        write_report(out, results)
        print(json.dumps({k: v for k, v in record.items() if k != "curve"}), flush=True)

    if args.only:
        print("a shard of the rows: when every shard is done, run the latency pass and the report once, "
              "alone on the machine, with --report-only", flush=True)
        return
    remeasure_latency(results, work, args.threads, args.latency_rounds, args.latency_repeat)
    op_breakdown(results, work, args.threads)
    results = update_results(results_path, lambda r: r.update(
        {k: results[k] for k in ("teacher", "records", "latency_method", "op_profile")}))
    write_report(out, results)


def remeasure_latency(results, work: Path, threads: int, rounds: int, repeat: int) -> None:
    """ORT latency (batch 1) of the teacher and every distinct student, round-robin over the files
    ``rounds`` times; the median over rounds of each round's median."""
    from statistics import median

    from mixa.profile.ort import profile_file
    from mixa.profile.records import cpu_model

    files = {"teacher": work / "onnx" / "teacher.onnx"}
    files.update({r["name"]: work / r["onnx"] for r in results["records"] if not r.get("same_as")})
    files = {k: v for k, v in files.items() if v.is_file()}
    per_file = {k: [] for k in files}
    for _ in range(rounds):
        for name, path in files.items():
            rec = profile_file(path, threads=threads, batch=1, resolution=None, warmup=10, repeat=repeat)
            per_file[name].append(rec["latency_ms"]["median"])
    latency = {k: median(v) for k, v in per_file.items() if v}
    cpu = cpu_model()
    results["teacher"]["latency_ms"] = latency.get("teacher")
    for r in results["records"]:
        source = r.get("same_as") or r["name"]
        if source in latency:
            r["latency_ms"] = latency[source]
    results["latency_method"] = (f"ONNX Runtime, {threads} thread(s), batch 1, {cpu}; {rounds} round-robin rounds "
                                 f"of {repeat} runs per model, median of the per-round medians")


def op_breakdown(results, work: Path, threads: int, runs: int = 30) -> None:
    """Where ORT spends its time in the teacher and the keep-6 / k = 0 students: kernel microseconds per
    run summed by operator type (ORT's own profiler), to explain latency that does not follow MACs."""
    from mixa.profile.ort import operator_times

    names = ["teacher"] + [r["name"] for r in results["records"]
                           if not r.get("same_as") and r["select"] in ("sensitivity", None) and r["keep"] in (0, 6)
                           and r["name"] != "control"]
    table = {}
    for name in names:
        path = work / "onnx" / f"{name}.onnx"
        if path.is_file():
            table[name] = {op: {"us": round(t["us"]), "nodes": round(t["nodes"])}
                           for op, t in operator_times(path, threads=threads, runs=runs).items()}
    results["op_profile"] = {"runs": runs, "threads": threads, "ops": table}


# ----------------------------------------------------------------------------------------------------
# report

def targets(results):
    """Each target of issue 10 with its measured number and whether it is met (None: not measured)."""
    recs = {r["name"]: r for r in results["records"]}
    t = results["teacher"]
    control = recs.get("control", {}).get("top1_after")
    out = []

    def add(text, value, met):
        out.append({"target": text, "measured": value, "met": met})

    k0 = [recs[n] for n in recs if recs[n]["keep"] == 0]
    if control is not None and k0:
        gaps = {r["kind"]: control - r["top1_after"] for r in k0}
        add("k = 0 after KD >= 3 points below the control",
            ", ".join(f"{k} {v:.2f}" for k, v in gaps.items()), all(v >= 3 for v in gaps.values()))
    if "rala_k6_uniform" in recs:
        drop = t["top1"] - recs["rala_k6_uniform"]["top1_before"]
        add("uniform keep-6 (rala) before KD >= 10 points below the teacher", f"{drop:.2f}", drop >= 10)
    strat = [recs[f"rala_k6_{s}"] for s in STRATEGIES if f"rala_k6_{s}" in recs]
    if len(strat) == len(STRATEGIES):
        after = {r["select"]: r["top1_after"] for r in strat}
        spread = max(after.values()) - min(after.values())
        add("k = 6 (rala) after KD: best and worst selection differ by >= 1 point",
            f"{spread:.2f} ({', '.join(f'{k} {v:.2f}' for k, v in after.items())})", spread >= 1)
        best_fixed = max(v for k, v in after.items() if k != "sensitivity")
        add("sensitivity >= best fixed strategy (rala, k = 6, after KD)",
            f"{after['sensitivity'] - best_fixed:+.2f}", after["sensitivity"] >= best_fixed)
    k6 = [r for r in recs.values() if r["keep"] == 6 and r["select"] == "sensitivity"]
    if control is not None and k6:
        gaps = {r["kind"]: r["top1_after"] - control for r in k6}
        add("keep-6 students of every kind within 1.0 point of the control after KD",
            ", ".join(f"{k} {v:+.2f}" for k, v in gaps.items()), all(abs(v) <= 1.0 for v in gaps.values()))
    if t.get("latency_ms") and k6 and all(r.get("latency_ms") for r in k6):
        parts, ok = [], True
        for r in k6:
            speedup, mac_ratio = t["latency_ms"] / r["latency_ms"], t["macs"] / r["macs"]
            parts.append(f"{r['kind']} {speedup:.2f}x vs MACs {mac_ratio:.2f}x")
            ok = ok and speedup >= mac_ratio
        add("keep-6 ORT speed-up over the teacher >= MAC ratio, every kind", "; ".join(parts), ok)
    return out


def write_report(out: Path, results) -> None:
    t, s = results["teacher"], results["settings"]
    recs = results["records"]
    control = next((r for r in recs if r["name"] == "control"), None)
    c_top1 = control["top1_after"] if control else None

    def gap(r):
        return f"{r['top1_after'] - c_top1:+.2f}" if c_top1 is not None else "—"

    def ms(v):
        return f"{v:.2f}" if v else "—"

    lines = [f"# Proxy benchmark: conversion + KD on the {s['task']} task (256 tokens)", "",
             f"Teacher: {s['teacher']}, 12 softmax blocks, top-1 **{t['top1']:.2f}%** on "
             f"{s['val_images']} val scenes of seed {s['seed']} (it was trained on seed 0), "
             f"{t['macs'] / 1e6:.1f} M MACs, latency {ms(t.get('latency_ms'))} ms.",
             f"Recipe (every row): {s['epochs']} KD epochs over {s['train_images']} images "
             f"({s['images_seen']} images seen), mixa.quickstart.RECIPE (soft KD, weight 0.5, lr 5e-4, no "
             f"augmentation), seed {s['seed']}; after-KD numbers are the last checkpoint.",
             f"Latency: {results.get('latency_method', 'not measured yet')}.", "",
             "Commands: " + "; ".join(f"`{c}`" for c in s["commands"])
            + (f"; then the latency pass and report: `{s['report_command']}`" if s.get("report_command") else ""), "",
             "| row | kind | k | kept layers | top-1 before KD | top-1 after KD | vs control | vs teacher "
             "| agreement after KD | MACs (M) | latency (ms) | speed-up | MAC ratio |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in recs:
        same = f" (= {r['same_as']})" if r.get("same_as") else ""
        lat = r.get("latency_ms")
        speedup = f"{t['latency_ms'] / lat:.2f}" if lat and t.get("latency_ms") else "—"
        lines.append(
            f"| {r['name']}{same} | {r['kind']} | {r['keep']} | {r['kept']} | {r['top1_before']:.2f} "
            f"| {r['top1_after']:.2f} | {gap(r)} | {r['top1_after'] - t['top1']:+.2f} | {r['agreement_after']:.2f} "
            f"| {r['macs'] / 1e6:.1f} | {ms(lat)} | {speedup} "
            f"| {t['macs'] / r['macs']:.2f} |")
    lines += ["", "## Targets (issue 10)", "", "| target | measured | met |", "|---|---|---|"]
    for row in targets(results):
        lines.append(f"| {row['target']} | {row['measured']} | {'yes' if row['met'] else 'NO'} |")
    prof = results.get("op_profile")
    if prof and prof["ops"]:
        ops = [op for op, _ in sorted(((op, sum(m.get(op, {}).get("us", 0) for m in prof["ops"].values()))
                                        for op in {o for m in prof["ops"].values() for o in m}),
                                       key=lambda item: -item[1])][:10]
        lines += ["", f"## Where ORT spends the time (kernel us per image by operator type, {prof['runs']} runs, "
                      f"{prof['threads']} thread; nodes in brackets)", "",
                  "| model | total | " + " | ".join(ops) + " |", "|---|---:|" + "---:|" * len(ops)]
        for name, m in prof["ops"].items():
            total = sum(v["us"] for v in m.values())
            cells = [f"{m[op]['us']} ({m[op]['nodes']})" if op in m else "—" for op in ops]
            lines.append(f"| {name} | {total} | " + " | ".join(cells) + " |")
    lines += ["", "Curves (val top-1 and agreement after every epoch) are in results.json (`curve`); "
              "plot: proxy.png.", ""]
    analysis = out / "ANALYSIS.md"
    if analysis.is_file():
        lines += [analysis.read_text()]
    from mixa.io import atomic_path

    with atomic_path(out / "RESULTS.md") as tmp:
        tmp.write_text("\n".join(lines))
    try:
        plot(out / "proxy.png", results)
    except ImportError:
        print("matplotlib is not installed (pip install 'mixa[plot]'): no plot", file=sys.stderr)


def plot(path: Path, results) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t, recs = results["teacher"], results["records"]
    control = next((r for r in recs if r["name"] == "control"), None)
    fig, ax = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = plt.get_cmap("tab20").colors  # 13 runs: more than the default cycle's 10 colours
    for i, r in enumerate(rr for rr in recs if not rr.get("same_as")):
        xs = [p["images"] for p in r["curve"]]
        colour = "black" if r["name"] == "control" else colours[i % len(colours)]
        ax[0].plot(xs, [p["top1"] for p in r["curve"]], "-", color=colour, marker="o", ms=3, label=r["name"])
    ax[0].axhline(t["top1"], color="grey", ls=":", label="teacher")
    ax[0].set_xlabel("KD images seen")
    ax[0].set_ylabel("val top-1 (%)")
    ax[0].legend(fontsize=6, ncol=2)
    rala = sorted((r for r in recs if r["kind"] == "rala" and r["select"] == "sensitivity"), key=lambda r: r["keep"])
    if rala:
        ax[1].plot([r["keep"] for r in rala], [r["top1_after"] for r in rala], "o-", label="rala after KD")
        ax[1].plot([r["keep"] for r in rala], [r["top1_before"] for r in rala], "x--", label="rala before KD")
    for kind, marker in (("relu", "s"), ("stella", "^")):
        rs = [r for r in recs if r["kind"] == kind]
        ax[1].plot([r["keep"] for r in rs], [r["top1_after"] for r in rs], marker, label=f"{kind} after KD")
    for r in recs:
        if r["keep"] == 6 and r["select"] not in ("sensitivity", None):
            ax[1].annotate(r["select"], (6, r["top1_after"]), fontsize=7)
            ax[1].plot([6], [r["top1_after"]], "k.", ms=4)
    if control:
        ax[1].axhline(control["top1_after"], color="black", lw=1, label="control (teacher + same KD)")
    ax[1].axhline(t["top1"], color="grey", ls=":", label="teacher")
    ax[1].set_xlabel("softmax layers kept (k of 12)")
    ax[1].set_ylabel("val top-1 (%)")
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
