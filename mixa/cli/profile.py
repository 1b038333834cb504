"""mixa profile: latency of mixa models, timm models and .onnx files (ONNX Runtime or PyTorch, CPU or CUDA).

Only targets that are not .onnx files import torch: ``python -m mixa profile model.onnx`` needs numpy and
onnxruntime alone.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import List

from mixa.cli._common import add_model_source_arguments, model_source_kwargs

HELP = "measure latency (ONNX Runtime / PyTorch, CPU / CUDA) of models or .onnx files, vs keep and resolution"
RUNTIMES = ("ort", "torch", "torch-compile")


def _int_list(text: str) -> List[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated non-negative integers, got {text!r}")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("targets", nargs="+", metavar="TARGET",
                   help="a saved mixa model directory, a timm model name/alias, or an .onnx file")
    p.add_argument("--runtime", choices=RUNTIMES, default="ort",
                   help="ort (ONNX Runtime, default; models are exported on the fly), torch (eager) or "
                        "torch-compile")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cuda: synchronised timing, fp32 and AMP, with --runtime torch/torch-compile")
    p.add_argument("--threads", type=_int_list, default=[1], help="CPU threads, e.g. 1,2,4 (default 1)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 1 on CPU, 256 on CUDA)")
    p.add_argument("--res", type=_int_list, default=None,
                   help="input resolutions, e.g. 224,384,512,1024 (default: the trained size / the file's)")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls before timing (default 5)")
    p.add_argument("--repeat", type=int, default=20, help="timed calls per measurement (default 20)")
    p.add_argument("--compare", metavar="NAME",
                   help="also profile this original (a timm name or model dir) first; speed-ups are relative to it")
    p.add_argument("--keep-sweep", type=_int_list, default=None, metavar="K,...",
                   help="convert each model target on the fly keeping softmax in k layers, for each k")
    p.add_argument("--attn", default=None, metavar="KIND",
                   help="linear kind for conversion on the fly (default rala); alone it means --keep-sweep 6")
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


def _onnx_records(args, files, threads, batch, progress) -> list:
    from mixa.profile.ort import profile_file

    records = []
    for path in files:
        for res in args.res or [None]:
            for t in threads:
                records.append(profile_file(path, threads=t, batch=batch, resolution=res, warmup=args.warmup,
                                            repeat=args.repeat, label=Path(path).name, progress=progress))
    return records


def _model_variants(args) -> list:
    """(label, model) pairs: the --compare original first, then every target (converted per k)."""
    from mixa import convert
    from mixa.export.targets import load_model

    source = model_source_kwargs(args)
    variants = []
    if args.compare:
        label, model = load_model(args.compare, **source)
        variants.append((f"{label} (original)", model))
    for target in args.model_targets:
        label, model = load_model(target, **source)
        if args.keep_sweep is None:
            variants.append((label, model))
            continue
        for k in args.keep_sweep:
            converted = convert(model, keep=k, attn=args.attn, progress=False)
            variants.append((f"{label} keep={k} {args.attn}", converted))
    return variants


def _model_records(args, threads, batch, progress) -> list:
    from mixa.export import export_onnx
    from mixa.export.targets import at_resolution, trained_size
    from mixa.macs import count_macs, count_params
    from mixa.profile.ort import profile_file
    from mixa.profile.records import make_record
    from mixa.profile.torch_runtime import check_device, time_model

    if args.runtime != "ort":
        check_device(args.device)
    precisions = [False, True] if args.device == "cuda" else [False]
    records = []
    with tempfile.TemporaryDirectory(prefix="mixa-profile-") as work:
        for index, (label, model) in enumerate(_model_variants(args)):
            for res in args.res or [trained_size(model)]:
                sized = at_resolution(model, res)
                params, macs = count_params(sized), count_macs(sized, (3, res, res))
                if args.runtime == "ort":
                    onnx_path = Path(work) / f"{index}_{res}.onnx"
                    export_onnx(sized, onnx_path, (3, res, res), dynamic_batch=batch != 1)
                    for t in threads:
                        records.append(profile_file(onnx_path, threads=t, batch=batch, resolution=res,
                                                    warmup=args.warmup, repeat=args.repeat, label=label,
                                                    params=params, macs_per_image=macs, progress=progress))
                    continue
                for amp in precisions:
                    for t in threads if args.device == "cpu" else [None]:
                        seconds = time_model(sized, batch=batch, resolution=res, device=args.device, threads=t,
                                             amp=amp, compile=args.runtime == "torch-compile",
                                             warmup=args.warmup, repeat=args.repeat, progress=progress)
                        records.append(make_record(target=label, runtime=args.runtime + ("+amp" if amp else ""),
                                                   device=args.device, threads=t, batch=batch, resolution=res,
                                                   params=params, macs=macs * batch, seconds=seconds))
    return records


def run(args) -> int:
    from mixa.errors import UsageError
    from mixa.profile.records import format_table, plot, write_csv, write_json

    files = [t for t in args.targets if t.endswith(".onnx")]
    args.model_targets = [t for t in args.targets if not t.endswith(".onnx")]
    if files and args.runtime != "ort":
        raise UsageError(f"an .onnx file runs with --runtime ort only (got --runtime {args.runtime})")
    if args.device == "cuda" and args.runtime == "ort":
        raise UsageError("--device cuda needs --runtime torch or torch-compile (ONNX Runtime is profiled on CPU)")
    batch = args.batch if args.batch is not None else (256 if args.device == "cuda" else 1)
    if batch < 1 or args.repeat < 1 or args.warmup < 0 or 0 in args.threads:
        raise UsageError("--batch, --repeat and --threads must be >= 1, --warmup >= 0")
    if args.attn is not None and args.keep_sweep is None:
        args.keep_sweep = [6]
    if args.keep_sweep is not None:
        args.attn = args.attn or "rala"
        if not args.model_targets:
            raise UsageError("--keep-sweep / --attn convert models on the fly: give a model name or directory, "
                             "not an .onnx file")
    if args.compare and args.compare.endswith(".onnx"):
        files.insert(0, args.compare)
        args.compare = None
    for path in files:
        if not Path(path).is_file():
            raise UsageError(f"{path}: no such file")

    threads = args.threads
    measurements = len(files) * len(args.res or [None]) * len(threads)
    progress = _progress(measurements * args.repeat) if measurements else None
    records = _onnx_records(args, files, threads, batch, progress)
    if args.model_targets or args.compare:  # the only path that imports torch
        records += _model_records(args, threads, batch, progress)
    if progress is not None:
        progress.close()

    print(format_table(records))
    env = records[0]["environment"] if records else {}
    if env:
        versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
        print(f"\n{env['cpu']} ({env['cpu_count']} logical CPUs), {env['os']}; {versions}")
    if args.json:
        write_json(args.json, records)
    if args.csv:
        write_csv(args.csv, records)
    if args.plot:
        plot(args.plot, records)
    return 0
