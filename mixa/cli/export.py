"""mixa export: a verified .onnx (ONNX Runtime) or .pte (ExecuTorch/XNNPACK) file, optionally INT8.
A thin layer over ``mixa.export.export``."""
from __future__ import annotations

import argparse

from mixa.cli._common import add_model_source_arguments, model_source_kwargs

HELP = "export a mixa model directory or timm model to .onnx or .pte (verified), optionally INT8"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", required=True, metavar="DIR|NAME",
                   help="a saved mixa model directory or a timm model name/alias")
    add_model_source_arguments(p)
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--output", metavar="FILE",
                     help="the file to write; its suffix picks the format: .onnx (ONNX Runtime) or .pte "
                          "(ExecuTorch with XNNPACK, needs the edge extra). With --int8 it is the INT8 file "
                          "and the fp32 one is kept as FILE's stem + .fp32 + suffix")
    out.add_argument("--onnx", metavar="FILE", help="shortcut for --output FILE.onnx")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--img-size", type=int, default=None, metavar="PX",
                   help="square input resolution (default: the model's trained size); another size resamples "
                        "position embeddings (ViT/DeiT) or scales windows (Swin) as timm does")
    p.add_argument("--opset", type=int, default=None, help=".onnx: ONNX opset (default 17; 18 with --exporter dynamo)")
    p.add_argument("--dynamic-batch", action="store_true", help=".onnx: make the batch dimension dynamic")
    p.add_argument("--exporter", choices=("torchscript", "dynamo"), default="torchscript",
                   help=".onnx: torch exporter (default torchscript: fast, every kind and family; dynamo: slower, "
                        "needed for a --dynamic-batch Swin that --int8 can pre-process)")
    p.add_argument("--softmax-form", choices=("auto", "plain", "fused", "ort"), default="auto",
                   help="how softmax attention layers are written: auto (default: the form the runtime runs "
                        "fastest, ort for .onnx, plain under --int8 static and for .pte), plain (matmul + softmax "
                        "in standard ONNX ops, at batch 1 in a one-image layout: for a runtime other than ONNX "
                        "Runtime), fused (torch's SDPA), ort (.onnx only: ONNX Runtime's com.microsoft Attention "
                        "operator, one kernel per ViT layer)")
    p.add_argument("--rtol", type=float, default=1e-4,
                   help="verification tolerance: max |runtime - torch| <= RTOL * max(1, max |logits|)")
    p.add_argument("--int8", nargs="?", const="auto", choices=("auto", "dynamic", "static"), default=None,
                   help="also quantize: dynamic (.onnx, no data) or static (calibrated on --calib-data); "
                        "auto (the default with a bare --int8): static with --calib-data, else dynamic")
    p.add_argument("--int8-weights", choices=("auto", "u8", "s8"), default="auto",
                   help=".onnx INT8 weight type: auto = s8 on VNNI x86 and ARM, u8 on x86 without VNNI "
                        "(where s8 saturates)")
    p.add_argument("--int8-keep-fp32", choices=("cores", "none"), default="cores",
                   help=".onnx INT8: keep every attention core (reductions, normalisers, divisions) in fp32 "
                        "(default) or let ONNX Runtime quantise everything it can")
    p.add_argument("--calib-data", metavar="DIR",
                   help="ImageFolder images: calibration for static INT8 and the top-1 agreement check")
    p.add_argument("--calib-images", type=int, default=64, help="images used for calibration (default 64)")
    p.add_argument("--num-images", type=int, default=500,
                   help="images of --calib-data used for the INT8 top-1 agreement check (default 500)")
    p.add_argument("--json", metavar="FILE", help="write the export report as JSON")


def run(args) -> int:
    from pathlib import Path

    from mixa.errors import UsageError
    from mixa.export import export
    from mixa.export.targets import load_model

    output = Path(args.output or args.onnx)
    if args.onnx and output.suffix != ".onnx":
        raise UsageError(f"--onnx must name an .onnx file; got {output}")
    mode = args.int8
    if mode == "auto":
        mode = "static" if args.calib_data or output.suffix == ".pte" else "dynamic"
    if args.calib_data and not mode:
        raise UsageError("--calib-data applies only with --int8")
    if mode == "static" and not args.calib_data:
        raise UsageError("--int8 static needs --calib-data DIR")
    if output.suffix == ".pte":
        from mixa.export.executorch import require_executorch

        require_executorch()  # before the model is built: one line, nothing written
    targets = [output] + ([output.with_name(output.stem + ".fp32" + output.suffix)] if mode else [])
    existing = [str(t) for t in targets if t.exists()]
    if existing and not args.overwrite:
        raise UsageError(f"{', '.join(existing)} exists; pass --overwrite to replace it")
    label, model = load_model(args.model, **model_source_kwargs(args))
    report = export(model, output, img_size=args.img_size, int8=mode, calib=args.calib_data,
                    calib_images=args.calib_images, check_images=args.num_images, int8_weights=args.int8_weights,
                    keep_fp32=args.int8_keep_fp32, dynamic_batch=args.dynamic_batch, opset=args.opset,
                    exporter=args.exporter, rtol=args.rtol, label=label, softmax_form=args.softmax_form)
    size = "x".join(map(str, report["input_size"]))
    if report["format"] == "onnx":
        ops = report["op_counts"]
        print(f"wrote {report['fp32_path']} (opset {report['opset']}, input 1x{size}"
              f"{', dynamic batch' if args.dynamic_batch else ''}, {report['nodes']} nodes, "
              f"{ops.get('MatMul', 0)} MatMul, {ops.get('Gemm', 0)} Gemm"
              f"{', %d Attention (ONNX Runtime)' % ops['Attention'] if ops.get('Attention') else ''})")
    else:
        print(f"wrote {report['fp32_path']} (ExecuTorch, XNNPACK, input 1x{size})")
        _print_delegation(report["delegation"])
    print(f"verified: max |{report['format']} runtime - torch| = {report['max_abs_diff']:.3g} "
          f"(tolerance {report['tolerance']:.3g})")
    if mode:
        extra = ""
        if report["format"] == "onnx":
            extra = f", {report['int8_weights']} weights, {report['fp32_nodes']} attention-core nodes kept fp32"
            if report["qattention_layers"]:
                extra += (f", {report['qattention_layers']} softmax layers as QAttention (int8 projection, "
                          f"fp32 attention)")
        print(f"wrote {report['int8_path']} (INT8 {mode}{extra})")
        if "int8_delegation" in report:
            _print_delegation(report["int8_delegation"])
        print(f"top-1 agreement INT8 vs fp32: {report['agreement_same']}/{report['agreement_total']} = "
              f"{report['top1_agreement']:.2f}% on {report['agreement_on']}")
    if args.json:
        from mixa.io import write_json

        write_json(args.json, report)
        print(f"wrote the export report to {args.json}")
    return 0


def _print_delegation(delegation: dict) -> None:
    """'  outside the XNNPACK delegate: 0 call site(s) between 1 delegate call(s); none from the 6 replaced
    attention layer(s)'"""
    ops = ", ".join(f"{op.split('.')[0]} {n}" for op, n in delegation["outside"].items())
    replaced = delegation["outside_in_replaced_layers"]
    from_replaced = (f"{sum(replaced.values())} from the replaced layers ("
                     + ", ".join(f"{op.split('.')[0]} {n}" for op, n in replaced.items()) + ")") if replaced \
        else f"none from the {delegation['replaced_layers']} replaced attention layer(s)"
    print(f"  outside the XNNPACK delegate: {delegation['outside_total']} call site(s)"
          f"{' (' + ops + ')' if ops else ''} between {delegation['delegate_calls']} delegate call(s); "
          f"{from_replaced}")
