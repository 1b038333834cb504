"""mixa plan: agreement (converted, and after the transfer probe), cost and latency of every (kind, k); the
Pareto front; the best configuration under a budget and the `mixa convert` + `mixa distill` commands that
build and recover it."""
from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path
from typing import List
from mixa.cli._common import (add_model_argument, add_progress_argument, add_report_arguments, int_list,
                              model_source_kwargs, non_negative_int, positive_int)
from mixa.plan.settings import DEFAULT_KEEP, DEFAULT_KINDS, DEFAULT_TRANSFER_STEPS, SELECTIONS

HELP = "choose k and the linear kind: agreement after transfer, MACs and latency of every (kind, k)"


def _names(text: str) -> List[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def default_work_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mixa" / "plan"


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def add_plan_arguments(p: argparse.ArgumentParser) -> None:
    """How the plan measures (shared with ``mixa convert --attn auto``)."""
    p.add_argument("--transfer-steps", type=non_negative_int, default=DEFAULT_TRANSFER_STEPS, metavar="N",
                   help=f"score every row after N steps of layer-wise transfer on the calibration images, as "
                        f"mixa distill's first stage recovers it (default {DEFAULT_TRANSFER_STEPS}); 0: score the "
                        f"converted models as they are")
    p.add_argument("--threads", type=positive_int, default=1, metavar="N",
                   help="CPU threads for torch and ORT (default 1)")
    p.add_argument("--rounds", type=positive_int, default=5, metavar="N",
                   help="round-robin latency rounds per configuration against the original (default 5)")
    p.add_argument("--repeat", type=positive_int, default=20, metavar="N",
                   help="timed calls per model per round (default 20)")
    p.add_argument("--work-dir", metavar="DIR", default=None,
                   help=f"cache of finished rows, so a killed run reruns cheaply (default {default_work_dir()})")


def add_budget_arguments(p: argparse.ArgumentParser, min_agreement: bool = True) -> None:
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--max-latency-ms", type=positive_float, metavar="X",
                        help="the most faithful configuration no slower than X ms")
    budget.add_argument("--min-speedup", type=positive_float, metavar="S",
                        help="the most faithful configuration at least S times as fast as the original")
    if min_agreement:
        budget.add_argument("--min-agreement", type=float, metavar="Y",
                            help="the fastest configuration with at least Y%% top-1 agreement")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_argument(p, help="the original model: a timm name / alias (deit_s, swin_t, ...) or a saved mixa "
                               "model directory (e.g. a trained teacher)")
    p.add_argument("--calib-data", required=True, metavar="DIR",
                   help="calibration images: an ImageFolder (or DIR/val of the ImageNet layout)")
    p.add_argument("--attn", type=_names, default=list(DEFAULT_KINDS), metavar="KIND,...",
                   help=f"linear kinds to compare (default {','.join(DEFAULT_KINDS)})")
    p.add_argument("--keep", type=int_list, default=None, metavar="K,...",
                   help=f"softmax layers kept, one row per value and kind (default "
                        f"{','.join(map(str, DEFAULT_KEEP))} up to the depth)")
    p.add_argument("--select", default="sensitivity", metavar="STRATEGY",
                   help=f"{' | '.join(SELECTIONS)} (default sensitivity: scores computed once per kind)")
    p.add_argument("--img-size", type=positive_int, metavar="PX", help="input resolution (default: the model's)")
    p.add_argument("--calib-images", type=positive_int, default=256, metavar="N",
                   help="calibration images for the scores, the transfer probe, agreement and KL (default 256)")
    add_plan_arguments(p)
    add_budget_arguments(p)
    add_report_arguments(p, csv=True, plot=True)
    add_progress_argument(p)


def model_words(args: argparse.Namespace) -> List[str]:
    """--model and the weight-source flags as given."""
    words = ["--model", args.model]
    if args.checkpoint:
        words += ["--checkpoint", args.checkpoint]
    if not args.pretrained:
        words.append("--no-pretrained")
    if args.num_classes is not None:
        words += ["--num-classes", str(args.num_classes)]
    for item in args.model_arg:
        words += ["--model-arg", item]
    return words


def data_root(calib_data: str):
    """The ImageNet-layout root (train/ and val/) the calibration images belong to, or None."""
    calib = Path(calib_data)
    for root in (calib, calib.parent):
        if (root / "train").is_dir() and (root / "val").is_dir():
            return root
    return None


def student_dir(args: argparse.Namespace, row) -> str:
    return f"{Path(args.model.rstrip('/')).name}_{row.kind}_k{row.keep}"


def convert_command(args: argparse.Namespace, row) -> str:
    """The `mixa convert` line that builds ``row``'s model (its layers named explicitly)."""
    words = ["mixa", "convert", *model_words(args), "--keep", str(row.keep), "--attn", row.kind]
    if row.kept and len(row.kept) < args.depth:
        words += ["--select", ",".join(map(str, row.kept))]
    words += ["--output", student_dir(args, row)]
    return " ".join(shlex.quote(w) for w in words)


def distill_command(args: argparse.Namespace, row) -> str:
    """The `mixa distill` line that recovers it: the same transfer steps first, then distillation."""
    root = data_root(args.calib_data)
    student = student_dir(args, row)
    words = ["mixa", "distill", "--model", student, "--data-dir", str(root) if root else "DATA_DIR",
             "--output", f"{student}_run", "--transfer-steps", str(args.transfer_steps)]
    return " ".join(shlex.quote(w) if w != "DATA_DIR" else w for w in words)


def budget_of(args: argparse.Namespace):
    """(flag, value, keyword of mixa.plan.best_under) of the budget given, or None."""
    for flag, key in (("--max-latency-ms", "max_latency_ms"), ("--min-speedup", "min_speedup"),
                      ("--min-agreement", "min_agreement")):
        value = getattr(args, key, None)
        if value is not None:
            return flag, value, key
    return None


def run_plan(args: argparse.Namespace, attn=None, keep=None, select: str = "sensitivity", img_size=None):
    """mixa.plan.plan with the command line's settings."""
    from mixa.errors import UsageError
    from mixa.plan import plan

    if not Path(args.calib_data).is_dir():
        raise UsageError(f"--calib-data {args.calib_data}: no such directory")
    work_dir = Path(args.work_dir) if args.work_dir else default_work_dir()
    kinds = {} if attn is None else {"attn": attn}
    return plan(args.model, args.calib_data, keep=keep, select=select, resolution=img_size, threads=args.threads,
                calib_images=args.calib_images, work_dir=work_dir, rounds=args.rounds, repeat=args.repeat,
                transfer_steps=args.transfer_steps, progress=args.progress, **kinds, **model_source_kwargs(args))


def no_row_message(result, flag: str, value: float) -> str:
    fastest = result.rows[0]
    closest = max(result.rows, key=lambda r: r.agreement)
    nearest = (f"the most faithful is {closest.kind} k={closest.keep} at {closest.agreement:.1f}%"
               if flag == "--min-agreement" else
               f"the fastest is {fastest.kind} k={fastest.keep} at {fastest.latency_ms:.3f} ms "
               f"({fastest.speedup:.2f}x)")
    return f"no configuration meets {flag} {value:g}: {nearest}"


def describe(row, steps: int) -> str:
    when = f"after {steps} transfer steps" if steps else "before fine-tuning"
    before = (f" (converted: {row.agreement_before:.1f}%)"
              if steps and row.agreement_before is not None else "")
    return (f"{row.kind} k={row.keep} (softmax in layers {','.join(map(str, row.kept)) or 'none'}): agreement "
            f"{row.agreement:.1f}%{before}, KL {row.kl:.4f}, {row.latency_ms:.3f} ms ({row.speedup:.2f}x the "
            f"original) {when}")


def run(args: argparse.Namespace) -> int:
    from mixa.errors import MixaError, UsageError
    from mixa.plan import best_under, format_table, plot, write_csv, write_json

    if args.min_agreement is not None and not 0 <= args.min_agreement <= 100:
        raise UsageError(f"--min-agreement is a percentage (0..100); got {args.min_agreement}")
    result = run_plan(args, attn=args.attn, keep=args.keep, select=args.select, img_size=args.img_size)
    args.depth = result.depth
    budget = budget_of(args)
    best = best_under(result.rows, **{budget[2]: budget[1]}) if budget else None

    env = result.environment
    steps = args.transfer_steps
    print(f"{result.model}: {result.depth} attention layers, {result.settings['img_size']} px, "
          f"{result.settings['calib_images']} calibration images, selection {result.settings['select']}"
          + (f", agreement after {steps} steps of layer-wise transfer on them" if steps else
             ", agreement of the converted models as they are") +
          f"; ONNX Runtime, batch 1, {args.threads} thread(s) on {env['cpu']}")
    print(format_table(result))
    print(f"* = Pareto-optimal (no other row is both at least as fast and at least as faithful). "
          f"Rows cached in {result.settings['work_dir']}")
    written = []
    if args.json:
        write_json(args.json, result)
        written.append(f"JSON {args.json}")
    if args.csv:
        write_csv(args.csv, result.rows)
        written.append(f"CSV {args.csv}")
    if args.plot:
        plot(args.plot, result, best)
        written.append(f"plot {args.plot}")
    if written:
        print(f"wrote {', '.join(written)}")
    if budget is None:
        return 0
    flag, value, _ = budget
    if best is None:
        raise MixaError(no_row_message(result, flag, value))
    print(f"\nbest under {flag} {value:g}: {describe(best, steps)}")
    if best.keep == result.depth:
        print("that is the original model itself: no conversion needed")
    else:
        print(f"build and recover it:\n  {convert_command(args, best)}\n  {distill_command(args, best)}")
        if not data_root(args.calib_data):
            print("(DATA_DIR: your training data, train/ and val/ with a folder per class)")
        if args.img_size:
            print(f"(measured at {args.img_size} px: export and profile it with --img-size {args.img_size})")
    return 0
