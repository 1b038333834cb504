"""mixa convert: keep softmax in the k most important layers, linear attention elsewhere."""
from __future__ import annotations

import argparse

from mixa.cli._common import add_model_source_arguments, model_source_kwargs

HELP = "convert a pretrained timm DeiT/Swin to mixed softmax/linear attention"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="timm name or alias: deit_t/s/b, swin_t/s/b, any timm ViT/DeiT/Swin")
    add_model_source_arguments(p)
    p.add_argument("--keep", type=int, help="attention layers that keep softmax (default 6, or the count of --select indices)")
    p.add_argument("--attn", default="rala", help="linear kind for the other layers: relu, stella, rala (default rala)")
    p.add_argument("--select", default=None,
                   help="first | last | uniform | sensitivity | transfer | indices like 0,3,5 "
                        "(default: sensitivity with --calib-data, else uniform)")
    p.add_argument("--calib-data", metavar="DIR", help="ImageFolder (or DIR/val of the ImageNet layout) for "
                                                        "sensitivity scores and the agreement report")
    p.add_argument("--calib-batches", type=int, default=8, metavar="N", help="calibration batches of 32 (default 8)")
    p.add_argument("--patch-size", type=int, metavar="P", help="ViT/DeiT: resample the patch embedding to P (MixA uses 14)")
    p.add_argument("--window-size", type=int, metavar="W", help="Swin: resize windows to W (MixA uses 14)")
    p.add_argument("--no-lepe", dest="lepe", action="store_false", default=None,
                   help="rala: no LePE depth-wise conv on v")
    p.add_argument("--no-gate", dest="gate", action="store_false", default=None, help="rala: no output gate phi(x)")
    p.add_argument("--output", required=True, metavar="DIR", help="where to save the converted model")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")


def run(args: argparse.Namespace) -> int:
    import mixa
    from mixa.conversion import calibration_batches, parse_select
    from mixa.conversion.report import conversion_report
    from mixa.errors import UsageError
    from mixa.io import write_json
    from mixa.models import create_model
    from mixa.report import human, table

    if args.calib_batches < 1:
        raise UsageError("--calib-batches must be >= 1")
    select = parse_select(args.select) if args.select else None
    options = {k: v for k, v in (("gate", args.gate), ("lepe", args.lepe)) if v is not None}
    original = create_model(args.model, **model_source_kwargs(args))
    batches = calibration_batches(args.calib_data, original, args.calib_batches) if args.calib_data else None
    converted = mixa.convert(original, keep=args.keep, attn=args.attn, select=select, calib=batches,
                             patch_size=args.patch_size, window_size=args.window_size, attn_options=options)
    if args.calib_data:
        converted.mixa_config["selection"]["calib"]["source"] = str(args.calib_data)
    mixa.save(converted, args.output)

    report = conversion_report(original, converted, batches)
    rows = [(l["index"], l["path"], l["kind"], "keep" if l["kept"] else "replace",
             None if l["score"] is None else f"{l['score']:.4g}") for l in report["layers"]]
    score = "transfer (rel. error)" if report["selection"] == "transfer" else "sensitivity (KL)"
    print(table(rows, ["layer", "module", "kind", "", score]))
    print()
    cost = [("params", human(report["params_before"]), human(report["params_after"]),
             f"{report['params_after'] / report['params_before']:.3f}"),
            ("MACs", human(report["macs_before"]), human(report["macs_after"]),
             f"{report['macs_after'] / report['macs_before']:.3f}")]
    print(table(cost, ["", "original", "converted", "ratio"]))
    if "agreement" in report:
        a = report["agreement"]
        print(f"\nagreement with the original on {a['images']} calibration images: "
              f"top-1 {a['top1_agreement']:.1f}%, mean KL {a['mean_kl']:.4f}")
    print(f"\nselection: {report['selection']}; saved to {args.output}")
    if args.json:
        write_json(args.json, report)
    return 0
