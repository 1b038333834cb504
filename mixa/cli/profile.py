"""mixa profile: latency of mixa models, timm models, .onnx files (ONNX Runtime) and .pte files
(ExecuTorch), on CPU or CUDA. A thin layer over mixa.profile (ort, pte, models, records).

Only targets that are not .onnx files import torch: ``python -m mixa profile model.onnx`` needs numpy and
onnxruntime alone.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mixa.cli._common import add_model_source_arguments, int_list, model_source_kwargs
from mixa.profile.timing import CLOCKS  # light: no torch or runtime at import

HELP = "measure latency (ONNX Runtime / PyTorch, CPU / CUDA) of models or .onnx files, vs keep and resolution"
RUNTIMES = ("ort", "torch", "torch-compile")
FILE_SUFFIXES = (".onnx", ".pte")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("targets", nargs="+", metavar="TARGET",
                   help="a saved mixa model directory, a timm model name/alias, an .onnx or a .pte file")
    p.add_argument("--runtime", choices=RUNTIMES, default="ort",
                   help="for models: ort (ONNX Runtime, default; exported on the fly), torch (eager) or "
                        "torch-compile. Files run with their own runtime (.onnx: ONNX Runtime, .pte: ExecuTorch)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cuda: synchronised timing, fp32 and AMP, with --runtime torch/torch-compile")
    p.add_argument("--threads", type=int_list, default=[1], help="CPU threads, e.g. 1,2,4 (default 1)")
    p.add_argument("-b", "--batch-size", type=int, default=None,
                   help="batch size (default 1 on CPU, 256 on CUDA)")
    p.add_argument("--img-size", type=int_list, default=None, metavar="PX[,PX...]",
                   help="input resolutions, e.g. 224,384,512,1024 (default: the trained size / the file's)")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls before timing (default 5)")
    p.add_argument("--repeat", type=int, default=None,
                   help="timed calls (round-robin rounds) per measurement (default: 60, or fewer -- at least "
                        "20 -- when 60 rounds would take over 10 s)")
    p.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                   help="wall time per call (default), or cpu: the calling thread's CPU time -- robust to other "
                        "jobs on a shared machine, for --threads 1 on CPU only. Either way every target is timed "
                        "round-robin in one process")
    p.add_argument("--ops", action="store_true",
                   help="also print where the time goes per operator, from the runtime's own profiler: .pte "
                        "files (ExecuTorch ETDump: XNNPACK's operators and the ops outside the delegate, with "
                        "their share) and .onnx files (ONNX Runtime's profiler)")
    p.add_argument("--compare", metavar="NAME",
                   help="also profile this original (a timm name, model dir or file) first; speed-ups are "
                        "relative to it")
    p.add_argument("--keep-sweep", type=int_list, default=None, metavar="K,...",
                   help="convert each model target on the fly keeping softmax in k layers, for each k")
    p.add_argument("--attn", default=None, metavar="KIND",
                   help="linear kind for conversion on the fly (default rala); alone it means --keep-sweep 6")
    p.add_argument("--keep-kind", default="softmax", metavar="KIND",
                   help="what the kept layers compute in on-the-fly conversions: softmax (default) or "
                        "relu-quadratic")
    p.add_argument("--gate", default=None, metavar="GATE",
                   help="RALA output gate in on-the-fly conversions: linear, lowrank, identity, none")
    add_model_source_arguments(p)
    p.add_argument("--json", metavar="FILE", help="write the records as a JSON list")
    p.add_argument("--csv", metavar="FILE", help="write the records as CSV")
    p.add_argument("--plot", metavar="FILE.png", help="plot latency vs resolution (needs matplotlib)")


def _progress(total: int):
    try:
        from tqdm import tqdm
    except ImportError:  # an edge board without tqdm: no bar
        return None
    return tqdm(total=total, unit="run", file=sys.stderr, leave=False, disable=not sys.stderr.isatty())


def _file_runners(args, path, threads, batch) -> list:
    runners = []
    for res in args.img_size or [None]:
        for t in threads:
            if path.endswith(".pte"):
                from mixa.profile.pte import pte_runner

                runners.append(pte_runner(path, threads=t, batch=batch, resolution=res, label=Path(path).name))
            else:
                from mixa.profile.ort import file_runner

                runners.append(file_runner(path, threads=t, batch=batch, resolution=res, label=Path(path).name))
    return runners


def _model_runners(args, targets, threads, batch, work, original: bool = False) -> list:
    from mixa.export.targets import load_model
    from mixa.profile.models import keep_sweep, model_runners

    source = model_source_kwargs(args)
    variants = []
    if original:
        label, model = load_model(args.compare, **source)
        variants.append((f"{label} (original)", model))
    for target in targets:
        label, model = load_model(target, **source)
        if args.keep_sweep is None:
            variants.append((label, model))
        else:
            options = {"gate": args.gate} if args.gate else None
            variants += keep_sweep(model, args.keep_sweep, args.attn, label=label, keep_kind=args.keep_kind,
                                   attn_options=options)
    runners = []
    for label, model in variants:
        runners += model_runners(model, label=label, work=work, runtime=args.runtime,
                                 resolutions=args.img_size or [None], threads=threads, batch=batch,
                                 device=args.device)
    return runners


def run(args) -> int:
    from mixa.errors import MixaError, UsageError
    from mixa.profile.records import describe_cpu, format_table, plot, write_csv, write_json

    files = [t for t in args.targets if t.endswith(FILE_SUFFIXES)]
    args.model_targets = [t for t in args.targets if not t.endswith(FILE_SUFFIXES)]
    if files and args.runtime != "ort":
        raise UsageError(f"files run with their own runtime (.onnx: ONNX Runtime, .pte: ExecuTorch); "
                         f"--runtime {args.runtime} applies to models only")
    if args.device == "cuda" and args.runtime == "ort":
        raise UsageError("--device cuda needs --runtime torch or torch-compile (ONNX Runtime is profiled on CPU)")
    batch = args.batch_size if args.batch_size is not None else (256 if args.device == "cuda" else 1)
    if batch < 1 or (args.repeat is not None and args.repeat < 1) or args.warmup < 0 or 0 in args.threads:
        raise UsageError("--batch-size, --repeat and --threads must be >= 1, --warmup >= 0")
    if args.attn is not None and args.keep_sweep is None:
        args.keep_sweep = [6]
    if args.keep_sweep is not None:
        args.attn = args.attn or "rala"
        if not args.model_targets:
            raise UsageError("--keep-sweep / --attn convert models on the fly: give a model name or directory, "
                             "not an .onnx file")
    compare_file = bool(args.compare) and args.compare.endswith(FILE_SUFFIXES)
    for path in files + ([args.compare] if compare_file else []):
        if not Path(path).is_file():
            raise MixaError(f"{path}: no such file")

    threads = args.threads
    if args.clock == "cpu" and (threads != [1] or args.device != "cpu"):
        raise UsageError("--clock cpu measures the calling thread's CPU time: use it with --threads 1 on CPU")
    import tempfile

    from mixa.profile.compare import DEFAULT_MIN_ROUNDS, DEFAULT_ROUNDS, measure, open_shuffled

    # the original first, then the targets in the order given; only model targets import torch. Every
    # target is loaded (models exported) first, in a shuffled order (open_shuffled), then all are timed
    # round-robin in this process.
    with tempfile.TemporaryDirectory(prefix="mixa-profile-") as work:
        builders = []
        if compare_file:
            builders.append(lambda: _file_runners(args, args.compare, threads, batch))
        elif args.compare:
            builders.append(lambda: _model_runners(args, [], threads, batch, work, original=True))
        for target in args.targets:
            if target in files:
                builders.append(lambda target=target: _file_runners(args, target, threads, batch))
            else:
                builders.append(lambda target=target: _model_runners(args, [target], threads, batch, work))
        runners = [runner for built in open_shuffled(builders) for runner in built]
        progress = _progress(len(runners) * (args.repeat or DEFAULT_ROUNDS))
        records = measure(runners, warmup=args.warmup, repeat=args.repeat, clock=args.clock, progress=progress)
        if progress is not None:
            progress.close()

    print(format_table(records))
    env = records[0]["environment"] if records else {}
    if env:
        versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
        print(f"\n{describe_cpu(env)}, {env['cpu_count']} logical CPUs, {env['os']}; {versions}")
    if args.ops:
        for path in ([args.compare] if compare_file else []) + files:
            _print_operator_times(path, args.threads[0], args.repeat or DEFAULT_MIN_ROUNDS)
    if len(records) > 1:
        rounds = "/".join(str(n) for n in sorted({len(r["round_ms"]) for r in records}))
        print(f"timed round-robin in one process ({rounds} rounds, {args.clock} clock"
              f"{': thread CPU time' if args.clock == 'cpu' else ''})")
    for flag, write, what in ((args.json, write_json, "records (JSON)"), (args.csv, write_csv, "records (CSV)"),
                              (args.plot, plot, "latency plot")):
        if flag:
            write(flag, records)
            print(f"wrote the {what} to {flag}")
    return 0


def _print_operator_times(path: str, threads: int, runs: int) -> None:
    """Per-operator time of one file, most expensive first (the .pte's split inside / outside XNNPACK)."""
    from mixa.report import table

    if path.endswith(".pte"):
        from mixa.profile.pte import operator_times

        times = operator_times(path, threads=threads, runs=runs)
        total = times["total_ms"] or 1.0
        rows = [[op, "XNNPACK" if t["delegated"] else "outside", f"{t['calls']:.0f}", f"{t['ms']:.3f}",
                 f"{100 * t['ms'] / total:.1f}%"] for op, t in times["ops"].items()]
        print(f"\n{Path(path).name}: per-operator time (ExecuTorch ETDump, {runs} runs, {threads} thread(s))")
        print(table(rows, ["operator", "runs in", "calls", "ms/run", "share"], align="llrrr"))
        print(f"outside the XNNPACK delegate: {times['outside_ms']:.3f} of {times['total_ms']:.3f} ms per run "
              f"({100 * (times['outside_share'] or 0):.1f}%)")
    else:
        from mixa.profile.ort import operator_times

        times = operator_times(path, threads=threads, runs=runs)
        total = sum(t["us"] for t in times.values()) or 1.0
        rows = [[op, f"{t['nodes']:.0f}", f"{t['us'] / 1e3:.3f}", f"{100 * t['us'] / total:.1f}%"]
                for op, t in times.items()]
        print(f"\n{Path(path).name}: per-operator time (ONNX Runtime profiler, {runs} runs, {threads} thread(s))")
        print(table(rows, ["operator", "nodes", "ms/run", "share"], align="lrrr"))
