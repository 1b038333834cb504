"""mixa export: ONNX (verified against PyTorch), optional INT8 with ONNX Runtime."""
from __future__ import annotations

import argparse
import sys

from mixa.cli._common import add_model_source_arguments, model_source_kwargs

HELP = "export a mixa model directory or timm model to ONNX (verified), optionally INT8"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="DIR|NAME", help="a saved mixa model directory or a timm model name/alias")
    p.add_argument("--onnx", required=True, metavar="FILE", help="output .onnx file (the INT8 model with --int8)")
    p.add_argument("--input-size", type=int, default=None, metavar="PX",
                   help="square input resolution (default: the model's trained size); another size resamples "
                        "position embeddings (ViT/DeiT) or scales windows (Swin) as timm does")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--dynamic-batch", action="store_true", help="make the batch dimension dynamic")
    p.add_argument("--exporter", choices=("torchscript", "dynamo"), default="torchscript",
                   help="torch exporter (default torchscript: works for every kind and family; dynamo fails on "
                        "Swin with linear layers)")
    add_model_source_arguments(p)
    p.add_argument("--rtol", type=float, default=1e-4,
                   help="verification tolerance: max |ORT - torch| <= RTOL * max(1, max |logits|) (default 1e-4)")
    p.add_argument("--int8", action="store_true",
                   help="also quantize with ONNX Runtime: FILE is then the INT8 model and the fp32 model is kept "
                        "as FILE's stem + .fp32.onnx")
    p.add_argument("--int8-mode", choices=("dynamic", "static"), default=None,
                   help="INT8 scheme (default: static with --calib-data, else dynamic)")
    p.add_argument("--int8-weights", choices=("u8", "s8"), default="u8",
                   help="INT8 weight type: u8 (default) is exact on every CPU; s8 is faster on VNNI x86 and ARM "
                        "but saturates on x86 CPUs without VNNI")
    p.add_argument("--calib-data", metavar="DIR",
                   help="ImageFolder images: calibration for static INT8 and the top-1 agreement check")
    p.add_argument("--calib-images", type=int, default=64, help="images used for calibration (default 64)")
    p.add_argument("--eval-images", type=int, default=500,
                   help="images used for the top-1 agreement check (default 500)")


def _image_batches(root, model, input_size, limit, batch_size=16):
    """numpy float32 batches of at most ``limit`` images from an ImageFolder, with the model's eval
    transform at ``input_size``."""
    from mixa.data import eval_loader

    seen = 0
    for batch in eval_loader(root, model, batch_size=batch_size, input_size=input_size):
        if batch is None:
            continue
        images = batch[0][: limit - seen].numpy()
        seen += len(images)
        yield images
        if seen >= limit:
            break


def run(args) -> int:
    from pathlib import Path

    import numpy as np

    from mixa.errors import UsageError
    from mixa.export import export_onnx, quantize_onnx, agreement
    from mixa.export.targets import at_resolution, load_model, trained_size

    out = Path(args.onnx)
    if out.suffix != ".onnx":
        raise UsageError(f"--onnx must name an .onnx file; got {out}")
    if (args.calib_data or args.int8_mode) and not args.int8:
        raise UsageError("--calib-data / --int8-mode apply only with --int8")
    mode = args.int8_mode or ("static" if args.calib_data else "dynamic")
    if mode == "static" and not args.calib_data:
        raise UsageError("--int8-mode static needs --calib-data DIR")
    if args.calib_data and not Path(args.calib_data).is_dir():
        raise UsageError(f"--calib-data: directory not found: {args.calib_data}")
    label, model = load_model(args.target, **model_source_kwargs(args))
    model = at_resolution(model, args.input_size)
    size = trained_size(model)
    input_size = (3, size, size)
    fp32_path = out.with_name(out.stem + ".fp32.onnx") if args.int8 else out
    result = export_onnx(model, fp32_path, input_size, opset=args.opset, dynamic_batch=args.dynamic_batch,
                         exporter=args.exporter, rtol=args.rtol, metadata={"mixa.source": label})
    ops = result.op_counts
    print(f"wrote {fp32_path} (opset {args.opset}, input 1x{'x'.join(map(str, input_size))}"
          f"{', dynamic batch' if args.dynamic_batch else ''}, {sum(ops.values())} nodes, "
          f"{ops.get('MatMul', 0)} MatMul, {ops.get('Einsum', 0)} Einsum)")
    print(f"verified: onnx checker ok; max |ORT - torch| = {result.max_abs_diff:.3g} "
          f"(tolerance {result.tolerance:.3g})")
    if not args.int8:
        return 0

    calib = list(_image_batches(args.calib_data, model, input_size, args.calib_images)) \
        if mode == "static" else None
    quantize_onnx(fp32_path, out, mode=mode, calib_batches=calib, weights=args.int8_weights)
    if args.calib_data:
        batches, source = _image_batches(args.calib_data, model, input_size, args.eval_images), args.calib_data
    else:
        rng = np.random.default_rng(0)
        batches = [rng.standard_normal((8, *input_size), dtype=np.float32) for _ in range(8)]
        source = "64 random inputs (no --calib-data given: a weak check; pass real images)"
    same, total = agreement(fp32_path, out, batches)
    print(f"wrote {out} (INT8 {mode})")
    print(f"top-1 agreement INT8 vs fp32: {same}/{total} = {100.0 * same / total:.2f}% on {source}")
    sys.stdout.flush()
    return 0
