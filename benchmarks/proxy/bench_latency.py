"""Latency target of issue 10: the keep-k student of every linear kind must be at least as much faster than
its teacher in ONNX Runtime (1 intra-op thread, batch 1) as its MACs say.

From a saved teacher (default the packaged proxy teacher, mixa/assets/extremes_teacher), every kind is
converted at keep k with a fixed selection, exported to ONNX in a temporary directory, and all files (teacher
included) are timed round-robin in this one process, so that the load of a shared machine hits them alike.
Only ratios measured side by side mean anything; ``--clock cpu`` (the default) counts the calling thread's
CPU time, which is what a 1-thread ORT session spends and is blind to time spent descheduled.

    PYTHONPATH=. python benchmarks/proxy/bench_latency.py
    PYTHONPATH=. python benchmarks/proxy/bench_latency.py --teacher runs/new_teacher --json latency.json --profile

The teacher is timed in every ONNX form of its softmax layers (``mixa.export.lowering.SOFTMAX_FORMS`` that
ONNX Runtime runs: plain matmul + softmax, torch's fused SDPA, ONNX Runtime's own Attention operator), and
every speed-up is against the fastest of them: the original at its best. Students are exported as ``mixa
export`` writes them (their kept layers in the form ONNX Runtime runs best).

A row PASSes when teacher latency / student latency >= teacher MACs / student MACs. The exit status is 1
when any row fails, so that the script can guard the target in a loop or CI.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
TEACHER_DIR = REPO / "mixa" / "assets" / "extremes_teacher"  # the proxy teacher (any saved model works)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default=str(TEACHER_DIR), help="saved teacher directory (mixa.save layout)")
    p.add_argument("--kinds", default=None, help="comma-separated linear kinds (default every one)")
    p.add_argument("--keep", type=int, default=6, help="layers that keep softmax")
    p.add_argument("--select", default="uniform", help="layer selection (a fixed one: no calibration data)")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    p.add_argument("--rounds", type=int, default=300, help="round-robin rounds (one timed run of each file)")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--seed", type=int, default=0, help="seed of the students' new parameters")
    p.add_argument("--neutral", action="store_true",
                   help="keep the new parameters neutral (gate = 1, LePE = 0) instead of random trained-like "
                        "values; ORT never sees the difference in cost, but zeros could in principle be folded")
    p.add_argument("--profile", action="store_true", help="also print ORT's kernel time per operator type")
    p.add_argument("--json", default=None, help="write settings, rows and profile here")
    return p.parse_args(argv)


def perturb_new_parameters(model, seed: int) -> None:
    """Give every gate and LePE small random values, as distillation would: the graph then costs what a
    trained student costs, with no chance that an all-zero weight is folded away."""
    import torch

    from mixa.attention import MixAttention

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, MixAttention):
                continue
            for part in (module.gate, module.lepe):
                for param in ([] if part is None else part.parameters()):
                    param.add_(0.02 * torch.randn(param.shape, generator=generator))


def build_models(args):
    """{name: model}: the teacher first, then one keep-k student per kind."""
    import mixa
    from mixa.attention import list_attention_kinds

    teacher = mixa.load(args.teacher).eval()
    kinds = args.kinds.split(",") if args.kinds else list_attention_kinds(linear_only=True)
    models = {"teacher": teacher}
    for kind in kinds:
        student = mixa.convert(teacher, keep=args.keep, attn=kind, select=args.select, progress=False).eval()
        if not args.neutral:
            perturb_new_parameters(student, args.seed)
        models[kind] = student
    return models


TEACHER_FORMS = ("plain", "fused", "ort")


def export_all(models, directory: Path):
    """{name: .onnx path}, each file verified against PyTorch by mixa's exporter; the teacher once per form
    (``teacher (FORM)``)."""
    from mixa.export import export

    paths = {}
    for name, model in models.items():
        for form in TEACHER_FORMS if name == "teacher" else (None,):
            label = f"{name} ({form})" if form else name
            paths[label] = directory / f"{label.replace(' ', '_')}.onnx"
            export(model, paths[label], label=name, softmax_form=form)
    return paths


def time_all(paths, args):
    """{name: [seconds per run]}, all sessions timed round-robin; one intra-op thread, sequential, every
    graph optimisation (mixa's ORT session): the deployment setting being compared."""
    from mixa.profile.ort import input_for, session
    from mixa.profile.timing import round_robin

    sessions = {name: session(path, threads=1) for name, path in paths.items()}
    feeds = [input_for(s, 1, None)[0] for s in sessions.values()]
    calls = [lambda s=s, f=f: s.run(None, f) for s, f in zip(sessions.values(), feeds)]
    times = round_robin(calls, warmup=args.warmup, rounds=args.rounds, clock=args.clock)
    return dict(zip(sessions, times))


def operator_profile(paths, runs: int = 50):
    """{name: {op type: kernel microseconds per run}} from ORT's own profiler."""
    from mixa.profile.ort import operator_times

    return {name: {op: round(t["us"], 1) for op, t in operator_times(path, threads=1, runs=runs).items()}
            for name, path in paths.items()}


def rows_for(models, times, args):
    from mixa.macs import count_macs

    size = tuple(models["teacher"].pretrained_cfg["input_size"])
    macs = {name: count_macs(model, size) for name, model in models.items()}
    median = {name: statistics.median(t) for name, t in times.items()}
    teacher_forms = {form: median[f"teacher ({form})"] * 1e3 for form in TEACHER_FORMS}
    best = min(teacher_forms, key=teacher_forms.get)
    rows = []
    for name in models:
        if name == "teacher":
            continue
        mac_ratio = macs["teacher"] / macs[name]
        speedup = teacher_forms[best] / (median[name] * 1e3)
        rows.append({"kind": name, "keep": args.keep, "select": args.select, "macs": macs[name],
                     "teacher_macs": macs["teacher"], "mac_ratio": mac_ratio, "speedup": speedup,
                     "median_ms": median[name] * 1e3, "teacher_median_ms": teacher_forms[best],
                     "teacher_form": best, "teacher_forms_ms": teacher_forms, "pass": speedup >= mac_ratio})
    return rows


def print_report(rows, profile, args, cpu: str):
    from mixa.report import table

    print(f"CPU: {cpu}; ONNX Runtime, 1 thread, batch 1, {args.clock} clock, {args.rounds} rounds round-robin")
    if rows:
        forms = rows[0]["teacher_forms_ms"]
        print("teacher by softmax form: " + ", ".join(f"{form} {ms:.3f} ms" for form, ms in forms.items())
              + f"; speed-ups against the fastest ({rows[0]['teacher_form']})")
    body = [[r["kind"], r["keep"], f"{r['macs'] / 1e6:.1f}", f"{r['mac_ratio']:.3f}",
             f"{r['teacher_median_ms']:.3f}", f"{r['median_ms']:.3f}", f"{r['speedup']:.3f}",
             "PASS" if r["pass"] else "FAIL"] for r in rows]
    print(table(body, ["kind", "keep", "MMACs", "MAC ratio", "teacher ms", "student ms", "speed-up", "target"],
                align="lrrrrrrl"))
    for name, per_op in (profile or {}).items():
        total = sum(per_op.values())
        print(f"\n{name}: {total:.0f} us of kernels per run")
        print(table([[op, f"{us:.0f}", f"{100 * us / total:.1f}"] for op, us in per_op.items()],
                    ["op", "us/run", "%"], align="lrr"))


def main(argv=None):
    args = parse_args(argv)
    import torch

    from mixa.io import write_json
    from mixa.profile.records import cpu_model

    torch.manual_seed(args.seed)
    models = build_models(args)
    with tempfile.TemporaryDirectory() as tmp:
        paths = export_all(models, Path(tmp))
        times = time_all(paths, args)
        profile = operator_profile(paths) if args.profile else None
    rows = rows_for(models, times, args)
    cpu = cpu_model()
    print_report(rows, profile, args, cpu)
    if args.json:
        write_json(args.json, {"cpu": cpu, "settings": {k: v for k, v in vars(args).items() if k != "json"},
                               "command": " ".join(sys.argv), "rows": rows, "op_profile_us": profile})
    return 0 if all(r["pass"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
