"""``mixa.export.export``: one call from a model to a verified deployable file, the format from the suffix
(``.onnx``: ONNX Runtime, optionally INT8 with ORT's quantizers; ``.pte``: ExecuTorch with XNNPACK,
optionally INT8 with the PT2E XNNPACK quantizer). ``mixa export`` is a thin layer over it."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Union

import numpy as np
from torch import nn

from ..attention import MixAttention
from ..conversion import calibration_batches
from ..data import eval_loader
from ..errors import UsageError
from .executorch import agreement_pte, export_pte
from .lowering import runtime_softmax_form
from .onnx import export_onnx, op_counts
from .quantize import agreement, quantize_onnx
from .targets import at_resolution, trained_size

FORMATS = (".onnx", ".pte")
INT8_MODES = ("dynamic", "static")
CalibSource = Union[None, str, os.PathLike, List[np.ndarray]]


def image_batches(root: os.PathLike | str, model: nn.Module, input_size, limit: int,
                  batch_size: int = 16) -> Iterator[np.ndarray]:
    """numpy float32 batches of at most ``limit`` images from an ImageFolder (or DIR/val), with the model's
    eval transform at ``input_size`` (unreadable files skipped)."""
    seen = 0
    for batch in eval_loader(root, model, batch_size=batch_size, input_size=input_size):
        if batch is None:
            continue
        images = batch[0][: limit - seen].numpy()
        seen += len(images)
        yield images
        if seen >= limit:
            break


def _batches(source: CalibSource, model, input_size, limit: int) -> Optional[List[np.ndarray]]:
    if source is None:
        return None
    if isinstance(source, (str, os.PathLike)):
        if not Path(source).is_dir():
            raise UsageError(f"--calib-data: directory not found: {source}")
        return list(image_batches(source, model, input_size, limit))
    return [np.asarray(batch, dtype=np.float32) for batch in calibration_batches(source, model, limit)]


def _delegation(delegation, model: nn.Module) -> Dict[str, Any]:
    """The delegation report as a dict, with what the replaced attention layers put outside the delegate."""
    replaced = [name for name, m in model.named_modules() if isinstance(m, MixAttention)]
    return {**delegation.as_dict(), "replaced_layers": len(replaced),
            "outside_in_replaced_layers": delegation.in_modules(replaced)}


def export(model: nn.Module, output: os.PathLike | str, *, img_size: Optional[int] = None,
           int8: Optional[str] = None, calib: CalibSource = None, calib_images: int = 64,
           check_images: int = 500, int8_weights: str = "auto", keep_fp32: str = "cores",
           dynamic_batch: bool = False, opset: Optional[int] = None, exporter: str = "torchscript",
           rtol: float = 1e-4, label: Optional[str] = None, softmax_form: Optional[str] = None) -> Dict[str, Any]:
    """Export ``model`` to ``output`` (.onnx or .pte), verified against PyTorch; returns a report dict.

    img_size: square input resolution (default the model's; another one resizes it as timm does).
    int8: None (fp32), 'dynamic' (.onnx only, no data) or 'static' (calibrated on ``calib``). With INT8 the
        fp32 file is kept beside ``output`` as ``<stem>.fp32<suffix>``, and the top-1 agreement of INT8 with
        fp32 is measured on ``check_images`` images of ``calib`` (or on 64 random inputs when there are no
        images: a weak check, said so in the report).
    calib: an ImageFolder directory or a list of (B, 3, H, W) float32 arrays, ``calib_images`` of them
        used for calibration.
    int8_weights / keep_fp32: ONNX INT8 policy, see ``mixa.export.quantize``.
    softmax_form: how softmax layers are written ('plain', 'fused', 'ort' for .onnx only; default the form
        the runtime runs fastest in the precision asked for), see ``mixa.export.lowering``.
    """
    output = Path(output)
    fmt = output.suffix
    if fmt not in FORMATS:
        raise UsageError(f"--output must end in {' or '.join(FORMATS)} (the format); got {output.name}")
    if int8 is not None and int8 not in INT8_MODES:
        raise UsageError(f"INT8 mode must be one of {', '.join(INT8_MODES)}; got {int8!r}")
    if int8 is None and calib is not None:
        raise UsageError("calibration data applies only with INT8")
    if fmt == ".pte":
        if int8 == "dynamic":
            raise UsageError("ExecuTorch INT8 is static (PT2E, calibrated): use --int8 static with --calib-data")
        if dynamic_batch or exporter != "torchscript" or opset is not None:
            raise UsageError("--dynamic-batch / --exporter / --opset apply to .onnx outputs only")
    if int8 == "static" and calib is None:
        raise UsageError("static INT8 needs calibration images (--calib-data DIR)")
    softmax_form = runtime_softmax_form("onnx" if fmt == ".onnx" else "executorch", softmax_form, int8, exporter)

    model = at_resolution(model, img_size)
    size = trained_size(model)
    input_size = (3, size, size)
    report: Dict[str, Any] = {"format": fmt.lstrip("."), "input_size": list(input_size), "int8": int8}
    fp32_path = output.with_name(output.stem + ".fp32" + fmt) if int8 else output
    calib_batches = _batches(calib, model, input_size, calib_images) if int8 == "static" else None

    if fmt == ".onnx":
        result = export_onnx(model, fp32_path, input_size, opset=opset,
                             dynamic_batch=dynamic_batch, exporter=exporter, rtol=rtol, softmax=softmax_form, int8=int8,
                             metadata={"mixa.source": label or type(model).__name__})
        report.update(fp32_path=str(fp32_path), opset=result.opset, nodes=sum(result.op_counts.values()),
                      op_counts=result.op_counts, max_abs_diff=result.max_abs_diff, tolerance=result.tolerance)
        if int8:
            q = quantize_onnx(fp32_path, output, mode=int8, calib_batches=calib_batches, weights=int8_weights,
                              keep_fp32=keep_fp32)
            report.update(int8_path=str(output), int8_weights=q.weights, keep_fp32=q.keep_fp32,
                          fp32_nodes=len(q.excluded), qattention_layers=op_counts(output).get("QAttention", 0))
    else:
        result = export_pte(model, fp32_path, input_size, softmax=softmax_form)
        report.update(fp32_path=str(fp32_path), max_abs_diff=result.max_abs_diff, tolerance=result.tolerance,
                      delegation=_delegation(result.delegation, model))
        if int8:
            quantized = export_pte(model, output, input_size, int8=True, calib_batches=calib_batches,
                                   softmax=softmax_form)
            report.update(int8_path=str(output), int8_delegation=_delegation(quantized.delegation, model))

    if int8:
        if calib is not None:
            check = _batches(calib, model, input_size, check_images)
            report["agreement_on"] = f"{sum(len(b) for b in check)} images of {calib if isinstance(calib, (str, os.PathLike)) else 'the given batches'}"
        else:
            rng = np.random.default_rng(0)
            check = [rng.standard_normal((8, *input_size), dtype=np.float32) for _ in range(8)]
            report["agreement_on"] = "64 random inputs (no calibration images given: a weak check)"
        same, total = agreement(fp32_path, output, check) if fmt == ".onnx" else agreement_pte(model, output, check)
        report.update(agreement_same=same, agreement_total=total, top1_agreement=100.0 * same / total)
    return report
