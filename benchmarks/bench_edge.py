"""Edge latency benchmark: keep-k converted models (every kind, every RALA gate) vs the original, fp32 and
INT8, ONNX Runtime and ExecuTorch/XNNPACK, CPU, batch 1, side by side in one process.

    python benchmarks/bench_edge.py --runtimes ort --op-breakdown --output benchmarks/edge   # ort.md
    python benchmarks/bench_edge.py --runtimes executorch --output benchmarks/edge          # executorch.md
    python benchmarks/bench_edge.py --suite quick --output /tmp/edge    # DeiT-T/14 @224 only

For each (model, resolution) every file is timed round-robin -- one call of each per round
(``mixa.profile.timing.round_robin``) -- so that load from other processes hits them alike. Reported per
variant: ``MAC ratio`` = MACs(original) / MACs(variant), the speed-up the MAC count promises, and
``speed-up`` = median latency of the original *in the same runtime and precision* / the variant's, measured.
A target line is ``ok`` when speed-up >= MAC ratio. Random-init weights: latency does not depend on values.
INT8 here: ORT dynamic (no data) and static (calibrated on random inputs: right for speed, not for
accuracy -- accuracy is benchmarks/bench_edge_int8.py's), and ExecuTorch PT2E (XNNPACK quantizer).
``--op-breakdown`` adds ONNX Runtime's per-op profile (time share by op type) of the original vs keep-k.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mixa  # noqa: E402
from mixa.export import export_onnx, quantize_onnx  # noqa: E402
from mixa.export.targets import at_resolution  # noqa: E402
from mixa.io import atomic_path  # noqa: E402
from mixa.macs import count_macs  # noqa: E402
from mixa.models import create_model  # noqa: E402
from mixa.profile.ort import input_for, operator_times, session  # noqa: E402
from mixa.profile.records import describe_cpu, environment  # noqa: E402
from mixa.profile.compare import open_shuffled  # noqa: E402
from mixa.profile.timing import CLOCKS, paired_speedup, round_robin  # noqa: E402

# (label, timm name, timm kwargs, resolutions, full variant set at these resolutions, INT8/ExecuTorch there)
SUITES = {
    "full": [("DeiT-T/14", "deit_tiny_patch16_224", {"patch_size": 14}, [224], [224], [224]),
             ("deit_small", "deit_small_patch16_224", {}, [224, 384, 512, 1024], [224], [224])],
    "quick": [("DeiT-T/14", "deit_tiny_patch16_224", {"patch_size": 14}, [224], [224], [224])],
    # deit_small with the reduced variant set (relu, stella, rala default and linear gates)
    "small": [("deit_small", "deit_small_patch16_224", {}, [224, 384, 512, 1024], [], [224])],
}
GATES = ("linear", "lowrank", "identity", "none")


def variants(original, keep: int, full: bool, default_gate: str):
    """(label, model) pairs: the original, then keep-k of every kind (every RALA gate and LePE choice, and
    relu-quadratic kept layers, when ``full``)."""
    out = [("original", original)]
    conv = lambda attn, **kw: mixa.convert(original, keep=keep, attn=attn, select="uniform", progress=False, **kw)
    out += [(f"keep{keep} relu", conv("relu")), (f"keep{keep} stella", conv("stella"))]
    gates = GATES if full else (default_gate, "linear")
    for gate in dict.fromkeys(gates):
        out.append((f"keep{keep} rala gate={gate}", conv("rala", attn_options={"gate": gate})))
    if full:
        out.append((f"keep{keep} rala gate={default_gate} lepe3",
                    conv("rala", attn_options={"gate": default_gate, "lepe_kernel": 3})))
        out.append((f"keep{keep} rala gate={default_gate} no-lepe",
                    conv("rala", attn_options={"gate": default_gate, "lepe": False})))
        out.append((f"keep{keep} stella +relu-quadratic kept", conv("stella", keep_kind="relu-quadratic")))
    return out


class OrtRunner:
    def __init__(self, path, threads, res):
        self.sess = session(path, threads)
        self.feed = input_for(self.sess, 1, res)[0]

    def __call__(self):
        self.sess.run(None, self.feed)


class PteRunner:
    def __init__(self, path, res):
        import torch

        from mixa.export.executorch import load_pte

        self.method = load_pte(path)
        self.x = [torch.randn(1, 3, res, res)]

    def __call__(self):
        self.method.execute(self.x)


def static_int8_before_issue20(fp32, out, calib):
    """Static INT8 as ``quantize_onnx`` made it before issue 20 item 6: the same cores excluded and layers
    quantised, but constants shared between nodes (a quantised bias became a DequantizeLinear output for
    every reader) and the layers' outputs quantised too."""
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quant_pre_process,
                                          quantize_static)

    from mixa.export.quantize import LAYER_OPS, _feeds, attention_scopes, core_nodes

    with tempfile.TemporaryDirectory() as work:
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared))
        quantize_static(str(prepared), str(out), _feeds(prepared, calib), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=LAYER_OPS,
                        nodes_to_exclude=core_nodes(prepared, attention_scopes(fp32)))


def kept(path: Path, export) -> None:
    """``export(path)`` unless ``path`` is there already (a program kept by ``--files``)."""
    if not path.is_file():
        export(path)


def op_breakdown(path, threads, res, runs=10):
    """{op type: share of node time} from ONNX Runtime's profiler over ``runs`` calls, and the node time
    per call in ms."""
    per_op = operator_times(path, threads=threads, runs=runs, resolution=res)
    whole = sum(t["us"] for t in per_op.values())
    return {op: t["us"] / whole for op, t in per_op.items()}, whole / 1e3


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", choices=sorted(SUITES), default="full")
    p.add_argument("--keep", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=30, help="round-robin rounds per (model, resolution)")
    p.add_argument("--budget", type=float, default=420.0, help="seconds per (model, resolution) before stopping")
    p.add_argument("--default-gate", default=None, help="RALA gate used where only one is timed "
                                                        "(default: the registry's)")
    p.add_argument("--no-int8", action="store_true")
    p.add_argument("--runtimes", default="ort,executorch",
                   help="ort, executorch or both; ExecuTorch files are made at the INT8 resolutions only, "
                        "for the reduced variant set (its lowering takes minutes per model)")
    p.add_argument("--op-breakdown", action="store_true")
    p.add_argument("--res", default=None, metavar="PX,...", help="only these resolutions of the suite")
    p.add_argument("--only", default=None, metavar="LABEL,...",
                   help="time only these variants (labels as printed, e.g. 'original,keep6 relu')")
    p.add_argument("--tag", default=None, help="suffix of the result files")
    p.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                   help="cpu: the thread's CPU time (robust to load from other jobs; 1 thread only)")
    p.add_argument("--previous-export", action="store_true",
                   help="also time every variant as mixa exported it before issue 20 (timm's fused SDPA in "
                        "softmax layers, no delegation rewrites, ONNX Runtime static INT8 as quantised before "
                        "issue 20): rows 'VARIANT (previous export)'")
    p.add_argument("--files", default=None, metavar="DIR",
                   help="keep the exported programs in DIR and reuse those already there (repeat a timing "
                        "without lowering again; empty DIR after changing mixa's export)")
    p.add_argument("--open-seed", type=int, default=None, metavar="N",
                   help="programs of one (model, resolution) are loaded in an order shuffled by N (default: a "
                        "new seed each call, printed and recorded), so the first-loaded one is not always the original")
    p.add_argument("--output", required=True, metavar="DIR",
                   help="writes <runtimes>.json and <runtimes>.md there (e.g. ort.json, ort.md)")
    args = p.parse_args()
    warnings.simplefilter("ignore")

    from mixa.attention import get_attention_kind
    from mixa.export.executorch import executorch_available

    default_gate = args.default_gate or get_attention_kind("rala").module_defaults["gate"]
    runtimes = args.runtimes.split(",")
    use_et = "executorch" in runtimes and executorch_available()
    use_ort = "ort" in runtimes
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = environment()
    results = {"command": " ".join(sys.argv), "environment": env, "threads": args.threads, "keep": args.keep,
               "default_gate": default_gate, "suite": args.suite, "tag": args.tag, "clock": args.clock, "runtimes": [r for r in runtimes if r != "executorch" or use_et],
               "rows": [], "op_breakdown": []}
    print(f"CPU: {describe_cpu(env)}; ONNX Runtime {env['versions']['onnxruntime']}, {args.threads} thread(s), batch 1",
          flush=True)
    if use_et:  # before any program is loaded: the XNNPACK delegate takes the pool when it is initialised
        from mixa.export.executorch import set_threads

        set_threads(args.threads)
    rng = np.random.default_rng(0)
    open_seed = args.open_seed if args.open_seed is not None else int.from_bytes(os.urandom(4), "little")
    results["open_seed"] = open_seed
    print(f"programs loaded in an order shuffled by --open-seed {open_seed}", flush=True)
    with contextlib.ExitStack() as stack:
        work = Path(args.files) if args.files else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        for label, name, kwargs, resolutions, full_at, int8_at in SUITES[args.suite]:
            original = create_model(name, pretrained=False, **kwargs).eval()
            for res in resolutions:
                if (not use_ort and res not in int8_at) or (args.res and str(res) not in args.res.split(",")):
                    continue
                full = res in full_at and use_ort
                runners, rows, onnx_files = [], [], {}
                chosen = variants(original, args.keep, full, default_gate)
                if args.previous_export:
                    chosen += [(f"{vl} (previous export)", m) for vl, m in chosen]
                for vlabel, model in chosen:
                    previous = vlabel.endswith(" (previous export)")
                    if args.only and vlabel.replace(" (previous export)", "") not in args.only.split(","):
                        continue
                    sized = at_resolution(model, res)
                    macs = count_macs(sized, (3, res, res))
                    stem = f"{label}_{vlabel}_{res}".replace("/", "-").replace(" ", "_")
                    fp32 = work / f"{stem}.onnx"
                    files = []
                    if use_ort:
                        # the "previous export" in ORT: timm's fused SDPA, as mixa exported it before issue 20
                        form = "fused" if previous else None
                        kept(fp32, lambda path: export_onnx(sized, path, (3, res, res), softmax=form))
                        files.append(("ort", "fp32", fp32))
                        onnx_files[vlabel] = fp32
                    if use_ort and res in int8_at and not args.no_int8:
                        calib = [rng.standard_normal((1, 3, res, res), dtype=np.float32) for _ in range(4)]
                        for mode in ("static",) if previous else ("dynamic", "static"):
                            q = work / f"{stem}.{mode}.onnx"
                            kept(q, lambda path: static_int8_before_issue20(fp32, path, calib) if previous
                                 else quantize_onnx(fp32, path, mode=mode, calib_batches=calib))
                            files.append(("ort", f"int8-{mode}", q))
                    if res in int8_at and use_et:
                        from mixa.export.executorch import export_pte

                        pte = work / f"{stem}.pte"
                        kept(pte, lambda path: export_pte(sized, path, (3, res, res), softmax="fused" if previous
                                                          else None, keep_views=not previous))
                        files.append(("executorch", "fp32", pte))
                        if not args.no_int8 and not previous:
                            qpte = work / f"{stem}.int8.pte"
                            calib = [rng.standard_normal((4, 3, res, res), dtype=np.float32)]
                            kept(qpte, lambda path: export_pte(sized, path, (3, res, res), int8=True,
                                                               calib_batches=calib))
                            files.append(("executorch", "int8", qpte))
                    for runtime, precision, path in files:
                        runners.append((lambda path=path: OrtRunner(path, args.threads, res)) if runtime == "ort"
                                       else (lambda path=path: PteRunner(path, res)))
                        rows.append({"model": label, "res": res, "variant": vlabel, "runtime": runtime,
                                     "precision": precision, "macs": macs})
                    print(f"  exported {label} @{res} {vlabel} ({len(files)} files)", file=sys.stderr, flush=True)
                runners = open_shuffled(runners, f"{open_seed} {label} {res}")
                start, load_before = time.time(), os.getloadavg()[0]
                times = round_robin(runners, warmup=2, rounds=args.rounds, budget=args.budget, clock=args.clock)
                load = [round(load_before, 2), round(os.getloadavg()[0], 2)]  # 1-minute load average around it
                print(f"\n{label} @{res}: {len(times[0])} rounds in {time.time() - start:.0f} s, load average "
                      f"{load[0]} -> {load[1]}", flush=True)
                base = {}
                for row, t in zip(rows, times):
                    row["median_ms"] = statistics.median(t) * 1e3
                    row["min_ms"] = min(t) * 1e3  # the least disturbed call: robust to load from other jobs
                    row["rounds"] = len(t)
                    row["load_average"] = load
                    row["round_ms"] = [seconds * 1e3 for seconds in t]
                    key = (row["runtime"], row["precision"])
                    if row["variant"] == "original":
                        base[key] = row
                for row in rows:
                    ref = base[(row["runtime"], row["precision"])]
                    row["mac_ratio"] = ref["macs"] / row["macs"]
                    row["speedup"] = ref["median_ms"] / row["median_ms"]
                    row["speedup_min"] = ref["min_ms"] / row["min_ms"]
                    # round by round: both calls of a round met the same load (as mixa profile's column)
                    row["speedup_by_round"] = paired_speedup(ref["round_ms"], row["round_ms"])
                    fp32_ref = base[(row["runtime"], "fp32")]
                    row["speedup_vs_fp32_original"] = fp32_ref["median_ms"] / row["median_ms"]
                    row["meets_mac_ratio"] = row["speedup"] >= row["mac_ratio"]
                    print(f"  {row['runtime']:<10} {row['precision']:<12} {row['variant']:<38} "
                          f"{row['macs'] / 1e9:7.3f} GMACs {row['median_ms']:9.2f} ms  MAC ratio "
                          f"{row['mac_ratio']:.3f}x  speed-up {row['speedup']:.3f}x (min {row['speedup_min']:.3f}x, by round "
                          f"{row['speedup_by_round']:.3f}x)  "
                          f"{'ok' if row['meets_mac_ratio'] else 'below'}", flush=True)
                results["rows"].extend(rows)
                write(out_dir, results)
                if args.op_breakdown and res == 224 and use_ort:
                    for variant in ("original", f"keep{args.keep} relu"):  # where the time goes
                        if variant not in onnx_files:
                            continue
                        shares, ms = op_breakdown(onnx_files[variant], args.threads, res)
                        results["op_breakdown"].append({"model": label, "res": res, "variant": variant,
                                                        "node_ms": ms, "shares": shares})
                    write(out_dir, results)
    write(out_dir, results)
    return 0


def write(out_dir: Path, results: dict) -> None:
    stem = "_".join(results["runtimes"]) + ("" if results["suite"] == "full" else f"_{results['suite']}") \
        + (f"_{results['tag']}" if results.get("tag") else "")
    with atomic_path(out_dir / f"{stem}.json") as tmp:
        tmp.write_text(json.dumps(results, indent=1))
    with atomic_path(out_dir / f"{stem}.md") as tmp:
        tmp.write_text(markdown(results))


def markdown(results: dict) -> str:
    env = results["environment"]
    lines = [f"# Edge latency: keep-{results['keep']} vs original", "",
             f"Command: `{results['command']}`", "",
             f"CPU: **{env['cpu']}** ({env['cpu_count']} logical CPUs, shared with other jobs; SIMD: "
             f"{', '.join(env.get('cpu_simd') or ['not recorded'])}), "
             f"{results['threads']} thread(s), batch 1, random-init weights; "
             + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v) + ".", "",
             f"Clock: {results.get('clock', 'wall')} time per call. Speed-up = median latency of the original in the same runtime and precision / the variant's, "
             "all files of one (model, resolution) timed round-robin in one process. MAC ratio = "
             "MACs(original) / MACs(variant). `ok`: speed-up >= MAC ratio. Speed-up by round: the median over "
             "rounds of the per-round ratio (both calls of a round met the same load).", ""]
    groups = {}
    for row in results["rows"]:
        groups.setdefault((row["model"], row["res"]), []).append(row)
    for (model, res), rows in groups.items():
        load = rows[0].get("load_average")
        lines += [f"## {model} @ {res} px ({rows[0]['rounds']} rounds"
                  + (f"; 1-minute load average {load[0]} -> {load[1]} on {env['cpu_count']} CPUs" if load else "")
                  + ")", "",
                  "| runtime | precision | variant | GMACs | median ms | MAC ratio | speed-up | speed-up of min | speed-up by round | vs fp32 original | >= MAC |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in rows:
            by_min = f"{r['speedup_min']:.3f}x" if "speedup_min" in r else "-"
            by_round = f"{r['speedup_by_round']:.3f}x" if "speedup_by_round" in r else "-"
            lines.append(f"| {r['runtime']} | {r['precision']} | {r['variant']} | {r['macs'] / 1e9:.3f} | "
                         f"{r['median_ms']:.2f} | {r['mac_ratio']:.3f}x | {r['speedup']:.3f}x | {by_min} | {by_round} | "
                         f"{r['speedup_vs_fp32_original']:.3f}x | {'ok' if r['meets_mac_ratio'] else 'below'} |")
        lines.append("")
    for b in results["op_breakdown"]:
        top = ", ".join(f"{op} {share * 100:.1f}%" for op, share in list(b["shares"].items())[:8])
        lines.append(f"- ORT per-op time, {b['model']} @{b['res']} {b['variant']} ({b['node_ms']:.1f} ms of "
                     f"node time per call): {top}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
