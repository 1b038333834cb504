"""Export to deployable files, verified against PyTorch: ONNX (ONNX Runtime, INT8 with its quantizers) and
ExecuTorch .pte (XNNPACK, INT8 with PT2E). ``export`` picks the format from the file suffix."""
from .api import FORMATS, INT8_MODES, export, image_batches
from .onnx import DEFAULT_OPSET, EXPORTERS, ExportResult, export_onnx, verify_onnx
from .quantize import KEEP_FP32, QUANT_MODES, WEIGHT_TYPES, agreement, core_nodes, quantize_onnx

__all__ = ["export", "image_batches", "FORMATS", "INT8_MODES", "DEFAULT_OPSET", "EXPORTERS", "ExportResult",
           "export_onnx", "verify_onnx", "QUANT_MODES", "WEIGHT_TYPES", "KEEP_FP32", "quantize_onnx",
           "agreement", "core_nodes"]
