"""mixa plan: agreement, cost and latency of every (kind, k) before fine-tuning; the Pareto front; the best
configuration under a budget and the `mixa convert` command that builds it."""
from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path
from typing import List
from mixa.cli._common import (add_model_argument, add_progress_argument, add_report_arguments, int_list,
                              model_source_kwargs, positive_int)

HELP = "choose k and the linear kind: agreement, MACs and latency of every (kind, k) before fine-tuning"


def _names(text: str) -> List[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def default_work_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mixa" / "plan"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_argument(p, help="the original model: a timm name / alias (deit_s, swin_t, ...) or a saved mixa "
                               "model directory (e.g. a trained teacher)")
    p.add_argument("--calib-data", required=True, metavar="DIR",
                   help="calibration images: an ImageFolder (or DIR/val of the ImageNet layout)")
    p.add_argument("--calib-images", type=positive_int, default=256, metavar="N",
                   help="calibration images for the scores, agreement and KL (default 256)")
    p.add_argument("--attn", type=_names, default=["relu", "stella", "rala"], metavar="KIND,...",
                   help="linear kinds to compare (default relu,stella,rala)")
    p.add_argument("--keep", type=int_list, default=None, metavar="K,...",
                   help="softmax layers kept, one row per value and kind (default 0,2,4,6,8 up to the depth)")
    p.add_argument("--select", default="sensitivity", metavar="STRATEGY",
                   help="sensitivity (default; scores computed once per kind), first, last or uniform")
    p.add_argument("--img-size", type=positive_int, metavar="PX", help="input resolution (default: the model's)")
    p.add_argument("--threads", type=positive_int, default=1, metavar="N",
                   help="CPU threads for torch and ORT (default 1)")
    p.add_argument("--rounds", type=positive_int, default=5, metavar="N",
                   help="round-robin latency rounds per configuration against the original (default 5)")
    p.add_argument("--repeat", type=positive_int, default=20, metavar="N",
                   help="timed calls per model per round (default 20)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--max-latency-ms", type=float, metavar="X",
                        help="name the most faithful configuration no slower than X ms")
    budget.add_argument("--min-agreement", type=float, metavar="Y",
                        help="name the fastest configuration with at least Y%% top-1 agreement")
    add_report_arguments(p, csv=True, plot=True)
    p.add_argument("--work-dir", metavar="DIR", default=None,
                   help=f"cache of finished rows, so a killed run reruns cheaply (default {default_work_dir()})")
    add_progress_argument(p)


def convert_command(args: argparse.Namespace, row) -> str:
    """The `mixa convert` line that builds ``row``'s model (its layers named explicitly)."""
    words = ["mixa", "convert", "--model", args.model]
    if args.checkpoint:
        words += ["--checkpoint", args.checkpoint]
    if not args.pretrained:
        words.append("--no-pretrained")
    if args.num_classes is not None:
        words += ["--num-classes", str(args.num_classes)]
    for item in args.model_arg:
        words += ["--model-arg", item]
    words += ["--keep", str(row.keep), "--attn", row.kind]
    if row.kept and len(row.kept) < args.depth:
        words += ["--select", ",".join(map(str, row.kept))]
    words += ["--output", f"{Path(args.model.rstrip('/')).name}_{row.kind}_k{row.keep}"]
    return " ".join(shlex.quote(w) for w in words)


def run(args: argparse.Namespace) -> int:
    from mixa.errors import MixaError, UsageError
    from mixa.plan import best_under, format_table, plan, plot, write_csv, write_json

    if not Path(args.calib_data).is_dir():
        raise UsageError(f"--calib-data {args.calib_data}: no such directory")
    if args.min_agreement is not None and not 0 <= args.min_agreement <= 100:
        raise UsageError(f"--min-agreement is a percentage (0..100); got {args.min_agreement}")
    if args.max_latency_ms is not None and args.max_latency_ms <= 0:
        raise UsageError(f"--max-latency-ms must be positive; got {args.max_latency_ms}")
    work_dir = Path(args.work_dir) if args.work_dir else default_work_dir()
    result = plan(args.model, args.calib_data, attn=args.attn, keep=args.keep, select=args.select,
                  resolution=args.img_size, threads=args.threads, calib_images=args.calib_images, work_dir=work_dir,
                  rounds=args.rounds, repeat=args.repeat, progress=args.progress, **model_source_kwargs(args))
    args.depth = result.depth

    budget = None
    if args.max_latency_ms is not None:
        budget = ("--max-latency-ms", args.max_latency_ms, best_under(result.rows, max_latency_ms=args.max_latency_ms))
    elif args.min_agreement is not None:
        budget = ("--min-agreement", args.min_agreement, best_under(result.rows, min_agreement=args.min_agreement))
    best = budget[2] if budget else None

    env = result.environment
    print(f"{result.model}: {result.depth} attention layers, {result.settings['img_size']} px, "
          f"{result.settings['calib_images']} calibration images, selection {result.settings['select']}; "
          f"ONNX Runtime, batch 1, {args.threads} thread(s) on {env['cpu']}")
    print(format_table(result))
    print(f"* = Pareto-optimal (no other row is both at least as fast and at least as faithful). "
          f"Rows cached in {result.settings['work_dir']}")
    if args.json:
        write_json(args.json, result)
    if args.csv:
        write_csv(args.csv, result.rows)
    if args.plot:
        plot(args.plot, result, best)
    if budget is None:
        return 0
    flag, value, best = budget
    if best is None:
        fastest = result.rows[0]
        closest = max(result.rows, key=lambda r: r.agreement)
        nearest = (f"the fastest is {fastest.kind} k={fastest.keep} at {fastest.latency_ms:.3f} ms"
                   if flag == "--max-latency-ms" else
                   f"the most faithful is {closest.kind} k={closest.keep} at {closest.agreement:.1f}%")
        raise MixaError(f"no configuration meets {flag} {value:g}: {nearest}")
    print(f"\nbest under {flag} {value:g}: {best.kind} k={best.keep} (softmax in layers "
          f"{','.join(map(str, best.kept)) or 'none'}): agreement {best.agreement:.1f}%, KL {best.kl:.4f}, "
          f"{best.latency_ms:.3f} ms ({best.speedup:.2f}x the original) before fine-tuning")
    if best.keep == result.depth:
        print("that is the original model itself: no conversion needed")
    else:
        print(f"build it:\n  {convert_command(args, best)}")
        if args.img_size:
            print(f"(measured at {args.img_size} px: export and profile it with --img-size {args.img_size})")
    return 0
