"""mixa convert: keep softmax in the k most important layers, linear attention elsewhere; ``--attn auto``
runs mixa plan and converts its pick (under --max-latency-ms / --min-speedup, else the Pareto front's knee)."""
from __future__ import annotations

import argparse

from mixa.cli._common import (add_model_argument, add_output_argument, add_progress_argument, add_report_arguments,
                              check_output_dir, model_source_kwargs, non_negative_int, positive_int)
from mixa.cli.plan import add_budget_arguments, add_plan_arguments

HELP = "convert a pretrained timm DeiT/Swin to mixed softmax/linear attention"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_argument(p, help="the model to convert: a timm name or alias (deit_t/s/b, swin_t/s/b, any timm "
                               "ViT/DeiT/Swin) or a saved mixa model directory (e.g. a trained teacher)")
    p.add_argument("--keep", type=non_negative_int,
                   help="attention layers that keep softmax (default 6, or the count of --select indices)")
    p.add_argument("--attn", default="rala",
                   help="linear attention kind for the other layers (default rala; an unknown kind lists them); "
                        "auto: run mixa plan on --calib-data and convert its pick (kind, k and layers) under "
                        "--max-latency-ms / --min-speedup, or the knee of its Pareto front without a budget")
    p.add_argument("--select", default=None,
                   help="first | last | uniform | sensitivity | transfer | indices like 0,3,5 "
                        "(default: sensitivity with --calib-data, else uniform)")
    p.add_argument("--calib-data", metavar="DIR", help="ImageFolder (or DIR/val of the ImageNet layout) for "
                                                        "sensitivity scores and the agreement report")
    p.add_argument("--calib-images", type=positive_int, default=256, metavar="N",
                   help="calibration images (default 256)")
    p.add_argument("-b", "--batch-size", type=positive_int, default=32, help="calibration batch size (default 32)")
    p.add_argument("--patch-size", type=positive_int, metavar="P",
                   help="ViT/DeiT: resample the patch embedding to P (MixA uses 14)")
    p.add_argument("--window-size", type=positive_int, metavar="W", help="Swin: resize windows to W (MixA uses 14)")
    p.add_argument("--keep-kind", default="softmax", metavar="KIND",
                   help="what the kept layers compute: softmax (default, the pretrained layers as they are) or "
                        "relu-quadratic (MixA's ReLU-based quadratic attention; needs fine-tuning)")
    p.add_argument("--gate", metavar="GATE",
                   help="rala's output gate phi(x): linear | lowrank | identity | none (default: the kind's)")
    p.add_argument("--gate-rank", type=positive_int, metavar="R", help="rank of a lowrank gate")
    p.add_argument("--no-lepe", dest="lepe", action="store_false", default=None,
                   help="rala: no LePE depth-wise conv on v")
    p.add_argument("--lepe-kernel", type=positive_int, metavar="K", help="rala: LePE kernel size (odd; default 5)")
    add_output_argument(p, help="directory to save the converted model in (refused if not empty, unless --overwrite)")
    add_report_arguments(p)
    auto = p.add_argument_group("--attn auto (the plan's settings; see mixa plan --help)")
    add_budget_arguments(auto, min_agreement=False)
    add_plan_arguments(auto)
    add_progress_argument(p)


def auto_pick(args: argparse.Namespace):
    """--attn auto: the plan's rows, then its pick under the budget (or the front's knee), said with why."""
    from mixa.cli.plan import budget_of, describe, no_row_message, run_plan
    from mixa.errors import MixaError, UsageError
    from mixa.plan import best_under, format_table, knee

    if not args.calib_data:
        raise UsageError("--attn auto needs --calib-data: the plan measures every (kind, k) on those images")
    if args.keep is not None or args.select is not None:
        raise UsageError("--attn auto chooses k and the softmax layers itself: drop --keep / --select")
    result = run_plan(args)
    print(format_table(result))
    budget = budget_of(args)
    steps = args.transfer_steps
    if budget is not None:
        flag, value, key = budget
        pick = best_under(result.rows, **{key: value})
        if pick is None:
            raise MixaError(no_row_message(result, flag, value))
        why = f"the most faithful row under {flag} {value:g}"
    else:
        pick = knee(result.rows)
        front = sorted((r for r in result.rows if r.pareto), key=lambda r: r.latency_ms)
        why = (f"no budget given: the knee of the Pareto front (the front row farthest above the straight line "
               f"from its fastest row, {front[0].kind} k={front[0].keep}, to its most faithful, "
               f"{front[-1].kind} k={front[-1].keep}: beyond it more agreement costs the most speed); "
               f"--max-latency-ms X or --min-speedup S choose by budget")
    print(f"\n--attn auto picks {describe(pick, steps)}\n  why: {why}")
    if pick.keep == result.depth:
        raise MixaError("the pick is the original model itself (no converted row is as faithful within the "
                        "budget): nothing converted")
    return pick


def run(args: argparse.Namespace) -> int:
    import mixa
    from mixa.conversion import calibration_batches, parse_select
    from mixa.conversion.report import conversion_report, print_conversion_report
    from mixa.errors import UsageError
    from mixa.io import write_json
    from mixa.saved import load_target

    check_output_dir(args.output, args.overwrite)
    if args.attn == "auto":
        pick = auto_pick(args)
        args.attn, args.keep, args.select = pick.kind, pick.keep, ",".join(map(str, pick.kept)) or None
    elif any(getattr(args, k) is not None for k in ("max_latency_ms", "min_speedup")):
        raise UsageError("--max-latency-ms / --min-speedup choose the conversion with --attn auto only")
    select = parse_select(args.select) if args.select else None
    options = {k: v for k, v in (("gate", args.gate), ("gate_rank", args.gate_rank), ("lepe", args.lepe),
                                 ("lepe_kernel", args.lepe_kernel)) if v is not None}
    original = load_target(args.model, **model_source_kwargs(args))
    batches = (calibration_batches(args.calib_data, original, images=args.calib_images, batch_size=args.batch_size)
               if args.calib_data else None)
    converted = mixa.convert(original, keep=args.keep, attn=args.attn, select=select, calib=batches,
                             patch_size=args.patch_size, window_size=args.window_size, attn_options=options,
                             keep_kind=args.keep_kind, progress=args.progress)
    if args.calib_data:
        converted.mixa_config["selection"]["calib"]["source"] = str(args.calib_data)
    mixa.save(converted, args.output)

    report = conversion_report(original, converted, batches)
    print_conversion_report(report)
    print(f"\nselection: {report['selection']}; saved to {args.output}")
    if args.json:
        write_json(args.json, report)
    return 0
