"""Edge latency benchmark: a converted model (softmax kept in --keep layers, each linear kind) vs the
original, ONNX Runtime on CPU, side by side in one process, per resolution; and INT8 on top.

    python benchmarks/bench_edge.py                                   # deit_s, keep 6, 224/384/512/1024
    python benchmarks/bench_edge.py --res 224 --int8 --repeat 30      # + INT8 of each kind (--int8-mode)

Variants at one resolution are timed round-robin (one call each per round) so that load from other
processes hits them alike. ``MAC ratio`` = MACs(original) / MACs(variant): the speed-up the MAC count
promises; ``speed-up`` = median latency(original) / median latency(variant), measured.
Random-init weights are used unless --pretrained (latency does not depend on the values); the INT8
top-1 agreement printed here is on random inputs and random weights -- a smoke check, not the accuracy
measurement, which needs real weights and images (mixa export --int8 --calib-data DIR).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mixa  # noqa: E402
from mixa.attention import list_attention_kinds  # noqa: E402
from mixa.export import agreement, export_onnx, quantize_onnx  # noqa: E402
from mixa.export.targets import at_resolution  # noqa: E402
from mixa.macs import count_macs  # noqa: E402
from mixa.models import create_model  # noqa: E402
from mixa.profile.ort import input_for, session  # noqa: E402


def round_robin(sessions, feeds, rounds: int, budget: float):
    """Median seconds per call of each session, timed one call each per round."""
    for s, f in zip(sessions, feeds):
        s.run(None, f)
    times = [[] for _ in sessions]
    start = time.perf_counter()
    for r in range(rounds):
        for i, (s, f) in enumerate(zip(sessions, feeds)):
            t0 = time.perf_counter()
            s.run(None, f)
            times[i].append(time.perf_counter() - t0)
        if r >= 2 and time.perf_counter() - start > budget:
            break
    return [statistics.median(t) for t in times], len(times[0])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="deit_s")
    p.add_argument("--keep", type=int, default=6)
    p.add_argument("--attn", default=",".join(list_attention_kinds(linear_only=True)))
    p.add_argument("--res", default="224,384,512,1024")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=20, help="rounds per resolution (default 20)")
    p.add_argument("--budget", type=float, default=60.0, help="seconds per resolution before stopping early")
    p.add_argument("--int8", action="store_true", help="add INT8 variants at the first resolution")
    p.add_argument("--int8-mode", choices=("dynamic", "static"), default="dynamic",
                   help="static calibrates on 8 random inputs here: fine for speed, not for accuracy")
    p.add_argument("--int8-weights", choices=("u8", "s8"), default="u8",
                   help="u8: exact everywhere; s8: faster with VNNI, saturates on x86 without VNNI")
    p.add_argument("--pretrained", action="store_true")
    args = p.parse_args()

    kinds = args.attn.split(",")
    original = create_model(args.model, pretrained=args.pretrained)
    variants = [("original", original)] + [
        (f"keep={args.keep} {k}", mixa.convert(original, keep=args.keep, attn=k, progress=False)) for k in kinds]
    resolutions = [int(r) for r in args.res.split(",")]
    print(f"{args.model}, ONNX Runtime CPU, {args.threads} thread(s), batch 1")
    header = f"{'res':>5} {'variant':<22} {'GMACs':>8} {'median ms':>10} {'MAC ratio':>10} {'speed-up':>9} {'>= MAC':>7}"
    with tempfile.TemporaryDirectory() as work:
        for ri, res in enumerate(resolutions):
            rows, sessions, feeds = [], [], []
            files = {}
            for vi, (label, model) in enumerate(variants):
                sized = at_resolution(model, res)
                path = Path(work) / f"{vi}_{res}.onnx"
                export_onnx(sized, path, (3, res, res))
                files[label] = path
                rows.append([label, count_macs(sized, (3, res, res))])
            if args.int8 and ri == 0:
                macs = {row[0]: row[1] for row in rows}
                for label in [v[0] for v in variants]:
                    int8 = Path(work) / f"{label.replace(' ', '_').replace('=', '')}_{res}.int8.onnx"
                    rng = np.random.default_rng(0)
                    calib = [rng.standard_normal((1, 3, res, res), dtype=np.float32) for _ in range(8)]
                    quantize_onnx(files[label], int8, mode=args.int8_mode, calib_batches=calib,
                                  weights=args.int8_weights)
                    same, total = agreement(files[label], int8,
                                            [rng.standard_normal((1, 3, res, res), dtype=np.float32)
                                             for _ in range(32)])
                    files[f"{label} int8"] = int8
                    rows.append([f"{label} int8", macs[label], f"{same}/{total}"])
            for label in [r[0] for r in rows]:
                sess = session(files[label], args.threads)
                sessions.append(sess)
                feeds.append(input_for(sess, 1, res)[0])
            medians, rounds = round_robin(sessions, feeds, args.repeat, args.budget)
            print(f"\n{header}  ({rounds} rounds)")
            base_ms, base_macs = medians[0], rows[0][1]
            for row, ms in zip(rows, medians):
                mac_ratio = base_macs / row[1]
                speed = base_ms / ms
                extra = f"  top-1 agreement vs fp32 (random inputs): {row[2]}" if len(row) > 2 else ""
                print(f"{res:>5} {row[0]:<22} {row[1] / 1e9:>8.3f} {ms * 1e3:>10.2f} {mac_ratio:>9.3f}x "
                      f"{speed:>8.3f}x {'yes' if speed >= mac_ratio else 'no':>7}{extra}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
