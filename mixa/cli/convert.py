"""mixa convert: keep softmax in the k most important layers, linear attention elsewhere."""
from __future__ import annotations

import argparse

from mixa.cli._common import (add_model_argument, add_output_argument, add_report_arguments, check_output_dir,
                              model_source_kwargs, non_negative_int, positive_int)

HELP = "convert a pretrained timm DeiT/Swin to mixed softmax/linear attention"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_argument(p, help="the model to convert: a timm name or alias (deit_t/s/b, swin_t/s/b, any timm "
                               "ViT/DeiT/Swin) or a saved mixa model directory (e.g. a trained teacher)")
    p.add_argument("--keep", type=non_negative_int,
                   help="attention layers that keep softmax (default 6, or the count of --select indices)")
    p.add_argument("--attn", default="rala",
                   help="linear attention kind for the other layers (default rala; an unknown kind lists them)")
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


def run(args: argparse.Namespace) -> int:
    import mixa
    from mixa.conversion import calibration_batches, parse_select
    from mixa.conversion.report import conversion_report, print_conversion_report
    from mixa.io import write_json
    from mixa.saved import load_target

    check_output_dir(args.output, args.overwrite)
    select = parse_select(args.select) if args.select else None
    options = {k: v for k, v in (("gate", args.gate), ("gate_rank", args.gate_rank), ("lepe", args.lepe),
                                 ("lepe_kernel", args.lepe_kernel)) if v is not None}
    original = load_target(args.model, **model_source_kwargs(args))
    batches = (calibration_batches(args.calib_data, original, images=args.calib_images, batch_size=args.batch_size)
               if args.calib_data else None)
    converted = mixa.convert(original, keep=args.keep, attn=args.attn, select=select, calib=batches,
                             patch_size=args.patch_size, window_size=args.window_size, attn_options=options,
                             keep_kind=args.keep_kind)
    if args.calib_data:
        converted.mixa_config["selection"]["calib"]["source"] = str(args.calib_data)
    mixa.save(converted, args.output)

    report = conversion_report(original, converted, batches)
    print_conversion_report(report)
    print(f"\nselection: {report['selection']}; saved to {args.output}")
    if args.json:
        write_json(args.json, report)
    return 0
