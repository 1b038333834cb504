"""ONNX export (verified against PyTorch with ONNX Runtime) and ONNX Runtime INT8 quantization."""
from .onnx import DEFAULT_OPSET, EXPORTERS, ExportResult, export_onnx, verify_onnx
from .quantize import QUANT_MODES, agreement, quantize_onnx

__all__ = ["DEFAULT_OPSET", "EXPORTERS", "ExportResult", "export_onnx", "verify_onnx", "QUANT_MODES",
           "quantize_onnx", "agreement"]
