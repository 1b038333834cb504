"""ONNX Runtime's Attention operator against plain matmul + softmax, for the original and its keep-6 students.

Issue 20 asks for every softmax layer in the form the runtime runs best, measured against the best original.
ONNX Runtime has an operator of its own for a ViT softmax layer (``com.microsoft.Attention``: qkv projection,
heads and softmax attention in one kernel; mixa's ``ort`` form, ``mixa.export.ort_attention``). The plain form
has two layouts at a static batch of 1: the one-image form ``mixa export`` writes since the twentieth session
(``mixa.export.lowering.one_image_forms``: three projections, head permutes folded into the products, one
Transpose a layer) and the batched one before it (``plain-batched``: a Split and four Transposes a layer). This
times DeiT-T/14 @224 -- the original and keep-6 relu, stella, rala (gate identity) -- with their softmax layers
in each form, fp32 and INT8 (dynamic, static; ``mixa.export.quantize_onnx`` as ``mixa export`` makes them), all
round-robin in one process: 1 thread, batch 1, thread CPU time. Replaced layers are as ``mixa export`` writes
them in every form.

Ratios are medians over rounds of per-round ratios: "A / B" = B's time over A's (> 1: A is faster); "vs
original" = the original's time over the student's, both in the same form and precision.

    python benchmarks/edge/ort_softmax_forms.py --work /tmp/ort_forms --runs 3 --output benchmarks/edge
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import warnings
from pathlib import Path
from unittest import mock

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FORMS = ("plain-batched", "plain", "ort")
PRECISIONS = ("fp32", "dynamic", "static")
STUDENTS = ("keep6 relu", "keep6 stella", "keep6 rala gate=identity")


def main() -> int:
    from side_by_side import add_run_arguments, fresh_runners, ort_header, write_results

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(p, "ort_softmax_forms")
    args = p.parse_args()
    warnings.simplefilter("ignore")
    import torch

    from bench_edge import variants
    from mixa.export import export_onnx, lowering, quantize_onnx
    from mixa.macs import count_macs
    from mixa.models import create_model
    from mixa.profile.records import environment
    from mixa.profile.timing import paired_speedup, round_robin

    torch.manual_seed(0)
    original = create_model("deit_tiny_patch16_224", pretrained=False, patch_size=14).eval()
    models = [(label, m) for label, m in variants(original, 6, False, "identity")
              if label == "original" or label in STUDENTS]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    calib = [rng.standard_normal((1, 3, 224, 224), dtype=np.float32) for _ in range(4)]
    programs, macs = [], {}
    for label, model in models:
        macs[label] = count_macs(model, (3, 224, 224))
        for form in FORMS:
            stem = f"{label.replace(' ', '_')}.{form}"
            fp32 = work / f"{stem}.fp32.onnx"
            if not fp32.is_file():
                # plain-batched: one_image_forms finds no softmax layer to switch (replaced ones still switch)
                with mock.patch.object(lowering, "_plain_vit_attention", lambda m: []) if form == "plain-batched" \
                        else contextlib.nullcontext():
                    export_onnx(model, fp32, (3, 224, 224), softmax=form.split("-")[0])
            for precision in PRECISIONS:
                path = fp32 if precision == "fp32" else work / f"{stem}.{precision}.onnx"
                if not path.is_file():
                    quantize_onnx(fp32, path, mode=precision, calib_batches=calib)
                programs.append((label, form, precision, path))
            print(f"  {label} ({form}): {fp32}", file=sys.stderr, flush=True)
    env = environment()
    header = ort_header(env, args.rounds)
    print(header, flush=True)
    if len({path for *_, path in programs}) != len(programs):
        raise SystemExit("two programs share a file")
    index = {(label, form, precision): i for i, (label, form, precision, _) in enumerate(programs)}
    records = []
    for run in range(1, args.runs + 1):
        runners = fresh_runners([path for *_, path in programs], 224, run)
        times = round_robin(runners, warmup=3, rounds=args.rounds, clock="cpu")
        load = os.getloadavg()[0]
        for label, _ in models:
            for precision in PRECISIONS:
                t = {form: times[index[(label, form, precision)]] for form in FORMS}
                base = {form: times[index[("original", form, precision)]] for form in FORMS}
                records.append({
                    "run": run, "model": label, "precision": precision, "mac_ratio": macs["original"] / macs[label],
                    "median_ms": {form: statistics.median(t[form]) * 1e3 for form in FORMS},
                    "plain_over_plain_batched": paired_speedup(t["plain-batched"], t["plain"]),
                    "ort_over_plain": paired_speedup(t["plain"], t["ort"]),
                    "vs_original": {form: paired_speedup(base[form], t[form]) for form in FORMS}})
        print(f"run {run}: {args.rounds} rounds, 1-minute load average {load:.2f}", file=sys.stderr, flush=True)
    table = markdown(records)
    print(table)
    write_results(args.output, "ort_softmax_forms", args.tag, env, args.rounds, records, header, table)
    return 0


def markdown(records) -> str:
    lines = ["| run | model | precision | MAC ratio | plain-batched ms | plain ms | ort ms | plain / plain-batched | "
             "ort / plain | vs original: plain-batched | plain | ort |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        ms, vs = r["median_ms"], r["vs_original"]
        lines.append(f"| {r['run']} | {r['model']} | {r['precision']} | {r['mac_ratio']:.3f} | "
                     f"{ms['plain-batched']:.2f} | {ms['plain']:.2f} | {ms['ort']:.2f} | "
                     f"{r['plain_over_plain_batched']:.3f} | {r['ort_over_plain']:.3f} | "
                     f"{vs['plain-batched']:.3f} | {vs['plain']:.3f} | {vs['ort']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
