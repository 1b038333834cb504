"""s8 vs u8 INT8 weights in ONNX Runtime on this CPU: latency of DeiT-T/14 @224 (original and keep-6 of each
kind), dynamic and static INT8, every file timed round-robin in one process. Accuracy of both weight types
on trained models is in bench_edge_accuracy.py's table.

    PYTHONPATH=. python benchmarks/bench_edge_int8_weights.py --output benchmarks/edge
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", required=True)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--gate", default="identity")
    args = p.parse_args()
    warnings.simplefilter("ignore")

    import mixa
    from mixa.export import export_onnx, quantize_onnx
    from mixa.export.quantize import cpu_has_vnni
    from mixa.io import atomic_path
    from mixa.models import create_model
    from mixa.profile.ort import input_for, session
    from mixa.profile.records import environment
    from mixa.profile.timing import round_robin

    original = create_model("deit_tiny_patch16_224", pretrained=False, patch_size=14).eval()
    conv = lambda attn, **kw: mixa.convert(original, keep=6, attn=attn, select="uniform", progress=False, **kw)
    models = [("original", original), ("keep6 relu", conv("relu")), ("keep6 stella", conv("stella")),
              (f"keep6 rala gate={args.gate}", conv("rala", attn_options={"gate": args.gate}))]
    rng = np.random.default_rng(0)
    calib = [rng.standard_normal((1, 3, 224, 224), dtype=np.float32) for _ in range(4)]
    rows, calls = [], []
    with tempfile.TemporaryDirectory() as work:
        for i, (label, model) in enumerate(models):
            fp32 = Path(work) / f"{i}.onnx"
            export_onnx(model, fp32, (3, 224, 224))
            for mode in ("dynamic", "static"):
                for weights in ("u8", "s8"):
                    q = Path(work) / f"{i}.{mode}.{weights}.onnx"
                    quantize_onnx(fp32, q, mode=mode, calib_batches=calib, weights=weights)
                    sess = session(q, args.threads)
                    feed = input_for(sess, 1, 224)[0]
                    calls.append(lambda s=sess, f=feed: s.run(None, f))
                    rows.append({"model": label, "mode": mode, "weights": weights})
        times = round_robin(calls, warmup=2, rounds=args.rounds, clock="cpu")  # thread CPU time: 1 thread, shared CPU
    for row, t in zip(rows, times):
        row["median_ms"] = statistics.median(t) * 1e3
    env = environment()
    lines = ["# INT8 weight type on this CPU: s8 (U8S8) vs u8 (U8U8), ONNX Runtime", "",
             f"Command: `PYTHONPATH=. python benchmarks/bench_edge_int8_weights.py {' '.join(sys.argv[1:])}`", "",
             f"CPU: **{env['cpu']}** (VNNI: {cpu_has_vnni()}), {args.threads} thread, batch 1, thread CPU time, DeiT-T/14 @224, "
             f"random-init weights, {len(times[0])} round-robin rounds; onnxruntime "
             f"{env['versions']['onnxruntime']}.", "",
             "| model | mode | u8 ms | s8 ms | s8 speed-up over u8 |", "|---|---|---:|---:|---:|"]
    for i in range(0, len(rows), 2):
        u8, s8 = rows[i], rows[i + 1]
        lines.append(f"| {u8['model']} | {u8['mode']} | {u8['median_ms']:.2f} | {s8['median_ms']:.2f} | "
                     f"{u8['median_ms'] / s8['median_ms']:.3f}x |")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "int8_weights.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    with atomic_path(out / "int8_weights.json") as tmp:
        tmp.write_text(json.dumps({"environment": env, "rows": rows}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
