"""INT8 with ONNX Runtime's quantization tools, and top-1 agreement of the INT8 file with the fp32 one.

- ``dynamic``: weights of MatMul/Gemm (and Conv) to int8 ahead of time, activations quantised at run time
  (``quantize_dynamic``); needs no data.
- ``static``: weights and activations quantised with ranges calibrated on images (``quantize_static``,
  QDQ format, per-channel weights); needs calibration data.

Weights are uint8 by default (``weights="u8"``, ONNX Runtime's U8U8 kernels): exact on every CPU. Signed int8
weights (``"s8"``, U8S8) are faster on CPUs with VNNI (AVX512-VNNI / AVX-VNNI) and on ARM, but on x86 CPUs
without VNNI the U8S8 kernels can saturate (ONNX Runtime documents this): measured here on an AVX2-only CPU
with the quick-start student, top-1 agreement with fp32 fell to 57-73% (dynamic) and 82-90% (static) with s8
weights, against 100% with u8 weights.

Both work on the fp32 file written by ``export_onnx``; the model is first run through ONNX Runtime's
``quant_pre_process`` (shape inference + graph optimisation), which its documentation recommends.
"""
from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

import numpy as np

from ..errors import MixaError, UsageError
from ..io import atomic_path

QUANT_MODES = ("dynamic", "static")
WEIGHT_TYPES = ("u8", "s8")


class _BatchReader:
    """onnxruntime CalibrationDataReader over a list of (B, C, H, W) float32 arrays."""

    def __init__(self, input_name: str, batches: List[np.ndarray]):
        self._items = iter([{input_name: b} for b in batches])

    def get_next(self):
        return next(self._items, None)

    def rewind(self):  # not needed by MinMax calibration; part of the reader protocol
        pass


def _feeds(path: os.PathLike | str, batches: List[np.ndarray]) -> _BatchReader:
    """A reader over ``batches``, re-split into the file's batch size when that is fixed."""
    import onnxruntime as ort

    spec = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0]
    if isinstance(spec.shape[0], int):
        images = np.concatenate(batches)
        size = spec.shape[0]
        batches = [images[i:i + size] for i in range(0, len(images) - size + 1, size)]
    return _BatchReader(spec.name, batches)


def quantize_onnx(fp32_path: os.PathLike | str, int8_path: os.PathLike | str, mode: str = "dynamic",
                  calib_batches: Optional[List[np.ndarray]] = None, weights: str = "u8") -> Path:
    """Write an INT8 version of ``fp32_path`` to ``int8_path`` (atomically); ``weights`` u8 or s8."""
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quant_pre_process,
                                          quantize_dynamic, quantize_static)

    if mode not in QUANT_MODES:
        raise UsageError(f"unknown INT8 mode {mode!r}; choose from {', '.join(QUANT_MODES)}")
    if weights not in WEIGHT_TYPES:
        raise UsageError(f"unknown INT8 weight type {weights!r}; choose from {', '.join(WEIGHT_TYPES)}")
    weight_type = QuantType.QUInt8 if weights == "u8" else QuantType.QInt8
    if mode == "static" and not calib_batches:
        raise UsageError("static INT8 quantization needs calibration data (--calib-data DIR)")
    int8_path = Path(int8_path)
    with tempfile.TemporaryDirectory() as work, atomic_path(int8_path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = Path(work) / "prepared.onnx"
        try:
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        except Exception:  # pre-processing is an optimisation; quantise the plain file if it fails
            prepared = Path(fp32_path)
        try:
            if mode == "dynamic":
                quantize_dynamic(str(prepared), str(tmp), weight_type=weight_type, per_channel=True)
            else:
                reader = _feeds(prepared, calib_batches)
                quantize_static(str(prepared), str(tmp), reader, quant_format=QuantFormat.QDQ,
                                per_channel=True, activation_type=QuantType.QUInt8,
                                weight_type=weight_type, calibrate_method=CalibrationMethod.MinMax)
        except (MixaError, KeyboardInterrupt):
            raise
        except Exception as err:
            raise MixaError(f"INT8 quantization ({mode}) failed: {str(err).splitlines()[0][:300]}") from err
    return int8_path


def agreement(fp32_path: os.PathLike | str, int8_path: os.PathLike | str,
              batches: Iterable[np.ndarray]) -> Tuple[int, int]:
    """(number of images where the two files' top-1 classes agree, number of images)."""
    import onnxruntime as ort

    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (fp32_path, int8_path)]
    names = [s.get_inputs()[0].name for s in sessions]
    fixed_batch = [s.get_inputs()[0].shape[0] for s in sessions]
    same = total = 0
    for batch in batches:
        # A file exported without --dynamic-batch takes one fixed batch size: feed it image by image.
        chunks = [batch] if all(not isinstance(b, int) or b == len(batch) for b in fixed_batch) \
            else [batch[i:i + 1] for i in range(len(batch))]
        for chunk in chunks:
            tops = [s.run(None, {n: chunk})[0].argmax(-1) for s, n in zip(sessions, names)]
            same += int((tops[0] == tops[1]).sum())
            total += len(chunk)
    if total == 0:
        raise MixaError("no images to measure top-1 agreement on")
    return same, total
