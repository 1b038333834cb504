"""The one-image form of replaced layers against the batched form, in ONNX Runtime.

At a static batch of 1, ``mixa export`` writes each relu / stella / rala / hedgehog layer in its one-image form
(``mixa.export.lowering.one_image_forms``): q, k, v stay in the (N, H, d) layout the projection emits, every
head transpose is a permute straight into a product, and ONNX Runtime folds them all into its FusedMatMul /
Gemm flags. The batched form (B, H, N, d) -- what mixa wrote before, and still writes for a dynamic batch --
leaves four Transpose nodes per layer. This times both forms of every student, against the original at its
best (softmax layers as ONNX Runtime's Attention operator; under static INT8 the plain form, whose layers take
a one-image form of their own since the twentieth session; kept layers likewise in both forms), fp32 and INT8
(dynamic, static; ``mixa.export.quantize_onnx`` as ``mixa export`` makes them), all round-robin in one
process: 1 thread, batch 1, thread CPU time.

Two tasks: ``deit`` (random-init DeiT-T/14 @224, 257 tokens, width 192, 3 heads) and ``proxy`` (the packaged
extremes teacher: 257 tokens, width 64, 2 heads). Students: k = 0 and keep-k of each kind, ``--select
uniform``, their new parameters (gate, LePE) given small random values as a trained student's would have.

Ratios are medians over rounds of per-round ratios: "one-image / batched" = the batched program's time over
the one-image one's (> 1: the new form is faster); "vs original" = the original's time over the student's, in
the same precision; "vs best original" = against the faster original of the precision's family (fp32; INT8:
whichever of the dynamic and static originals ran faster in that round-robin).

Which programs share a round-robin (``--rotation``): ``all`` (the default, as the fifteenth to seventeenth
sessions timed) puts every program in one (27 at DeiT-T/14 keep-6); ``per-student`` times each student's two
forms in one precision with the originals of that precision's family only (fp32: one; INT8: both), 3-4
programs, closer to a model called again and again. On the nineteenth session's AMD EPYC (AVX-512) the two
gave overlapping ranges for keep-6 rala's one-image form against the fp32 original (all: 0.976-0.977 in one
call of three runs, 0.963-0.983 in a second; per-student: 0.972-0.985), so no effect of the rotation showed
beyond the spread between calls (benchmarks/edge/README.md, nineteenth session).

Each run opens new sessions in an order shuffled by the run (``side_by_side.fresh_runners``): sessions opened
once in a fixed order moved byte-identical programs up to 2% apart, the same way in every run
(``ort_session_order.py``). So the runs are independent samples, and the table ends with each student's mean
over them, its standard error and range.

    PYTHONPATH=. python benchmarks/edge/ort_one_image.py --task proxy --work /tmp/one_image_proxy --runs 3 \\
        --output benchmarks/edge
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import warnings
from pathlib import Path
from unittest import mock

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "benchmarks" / "proxy"))

FORMS = ("batched", "one-image")
PRECISIONS = ("fp32", "dynamic", "static")
FAMILY = {"fp32": ("fp32",), "dynamic": ("dynamic", "static"), "static": ("dynamic", "static")}  # originals to beat
ROTATIONS = ("all", "per-student")
KINDS = ("relu", "stella", "rala", "hedgehog")


def student(original, keep: int, kind: str, attn_options=None):
    """keep-k of ``kind`` (``--select uniform``), its new parameters (gate, LePE) small and random."""
    import mixa
    from bench_latency import perturb_new_parameters

    model = mixa.convert(original, keep=keep, attn=kind, select="uniform", progress=False,
                         attn_options=attn_options).eval()
    perturb_new_parameters(model, 0)
    return model


def build(task: str, keeps, kinds=KINDS):
    """(input size, [(label, model)]): the original first, then every kind of ``kinds`` at every keep."""
    import torch

    import mixa
    from mixa.models import create_model

    torch.manual_seed(0)
    if task == "deit":
        original = create_model("deit_tiny_patch16_224", pretrained=False, patch_size=14).eval()
    else:
        original = mixa.load(REPO / "mixa" / "assets" / "extremes_teacher").eval()
    size = tuple(original.pretrained_cfg["input_size"])
    models = [("original", original)]
    models += [(f"k={keep} {kind}", student(original, keep, kind)) for keep in keeps for kind in kinds]
    return size, models


def calibration(size, batches: int = 4) -> list:
    """The random one-image batches (seed 0) the edge benchmarks' static INT8 programs are calibrated on."""
    rng = np.random.default_rng(0)
    return [rng.standard_normal((1, *size), dtype=np.float32) for _ in range(batches)]


def export(model, work: Path, stem: str, size, form: str, precision: str, calib) -> Path:
    """``model`` as ``mixa export`` writes it at batch 1 for ``precision`` (``form`` 'one-image'), or with the
    replaced layers batched (everything else as mixa writes it for that precision). Returns the file."""
    from mixa.export import export_onnx, lowering, quantize_onnx

    int8 = None if precision == "fp32" else precision
    fp32 = work / f"{stem}.{form}.for-{precision}.onnx"
    if not fp32.is_file():
        cores = lowering.ONE_IMAGE_CORES if form == "one-image" else {}  # softmax layers: as mixa writes them
        with mock.patch.object(lowering, "ONE_IMAGE_CORES", cores):
            export_onnx(model, fp32, size, int8=int8)
    if int8 is None:
        return fp32
    path = work / f"{stem}.{form}.{precision}.onnx"
    if not path.is_file():
        quantize_onnx(fp32, path, mode=int8, calib_batches=calib)
    return path


def main() -> int:
    from side_by_side import add_run_arguments, fresh_runners, ort_header, write_results

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=("deit", "proxy"), default="proxy")
    p.add_argument("--keeps", default="0,6", help="comma-separated keep values")
    add_run_arguments(p, "ort_one_image_TASK")
    p.add_argument("--rotation", choices=ROTATIONS, default="all",
                   help="all: every program in one round-robin; per-student: each student's forms with the "
                        "originals of its precision (the module docstring)")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}")
    args = p.parse_args()
    kinds = args.kinds.split(",")
    if not set(kinds) <= set(KINDS):
        p.error(f"--kinds: choose from {', '.join(KINDS)}")
    warnings.simplefilter("ignore")

    from mixa.macs import count_macs
    from mixa.profile.records import environment
    from mixa.profile.timing import round_robin

    size, models = build(args.task, [int(k) for k in args.keeps.split(",")], kinds)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    calib = calibration(size)
    programs, macs = [], {}
    for label, model in models:
        macs[label] = count_macs(model, size)
        for form in FORMS[:1] if label == "original" else FORMS:
            for precision in PRECISIONS:
                path = export(model, work, label.replace(" ", "_").replace("=", ""), size, form, precision, calib)
                programs.append((label, form, precision, path))
        print(f"  exported {label}", file=sys.stderr, flush=True)
    env = environment()
    header = ort_header(env, args.rounds, f"task {args.task}, rotation {args.rotation}")
    print(header, flush=True)
    keys = [(label, form, precision) for label, form, precision, _ in programs]
    rotations = [keys] if args.rotation == "all" else [
        [("original", "batched", o) for o in FAMILY[precision]] + [(label, form, precision) for form in FORMS]
        for label, _ in models[1:] for precision in PRECISIONS]
    records = []
    for run in range(1, args.runs + 1):
        runners = dict(zip(keys, fresh_runners([path for *_, path in programs], size[-1], run)))
        for rotation in rotations:  # each ratio pairs calls of one round-robin
            times = dict(zip(rotation, round_robin([runners[k] for k in rotation], warmup=3, rounds=args.rounds,
                                                   clock="cpu")))
            records += [record(run, label, precision, macs["original"] / macs[label], times)
                        for label, _ in models[1:] for precision in PRECISIONS
                        if (label, "batched", precision) in times]
        print(f"run {run}: {args.rounds} rounds, 1-minute load average {os.getloadavg()[0]:.2f}", file=sys.stderr,
              flush=True)
    table = markdown(records)
    print(table)
    write_results(args.output, f"ort_one_image_{args.task}", args.tag, env, args.rounds, records, header, table)
    return 0


def record(run: int, label: str, precision: str, mac_ratio: float, times: dict) -> dict:
    """One student in one precision: its forms against the original of that precision and the best of its
    family, from per-call times keyed (label, form, precision) that shared a round-robin."""
    from mixa.profile.timing import paired_speedup

    t = {form: times[(label, form, precision)] for form in FORMS}
    base = times[("original", "batched", precision)]
    best = min(FAMILY[precision], key=lambda o: statistics.median(times[("original", "batched", o)]))
    best_times = times[("original", "batched", best)]
    return {"run": run, "model": label, "precision": precision, "mac_ratio": mac_ratio,
            "original_ms": statistics.median(base) * 1e3,
            "median_ms": {form: statistics.median(t[form]) * 1e3 for form in FORMS},
            "one_image_over_batched": paired_speedup(t["batched"], t["one-image"]),
            "vs_original": {form: paired_speedup(base, t[form]) for form in FORMS},
            "best_original": best, "vs_best_original": {form: paired_speedup(best_times, t[form]) for form in FORMS}}


def markdown(records) -> str:
    from side_by_side import mean_table

    lines = ["| run | model | precision | MAC ratio | original ms | batched ms | one-image ms | one-image / batched "
             "| vs original, batched | vs original, one-image | vs best original, one-image |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in records:
        lines.append(f"| {r['run']} | {r['model']} | {r['precision']} | {r['mac_ratio']:.3f} | "
                     f"{r['original_ms']:.2f} | {r['median_ms']['batched']:.2f} | {r['median_ms']['one-image']:.2f} | "
                     f"{r['one_image_over_batched']:.3f} | {r['vs_original']['batched']:.3f} | "
                     f"{r['vs_original']['one-image']:.3f} | "
                     f"{r['vs_best_original']['one-image']:.3f} ({r['best_original']}) |")
    lines += mean_table(records, lambda r: r["vs_best_original"]["one-image"], "vs best original, one-image")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
