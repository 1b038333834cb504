"""Latency profiling: ONNX Runtime (``mixa.profile.ort``, numpy + onnxruntime only), PyTorch eager /
compiled on CPU or CUDA (``mixa.profile.torch_runtime``), records, environment and tables/plots
(``mixa.profile.records``, torch-free).

This package imports nothing heavy itself, so an edge board with only numpy and onnxruntime can use
``mixa.profile.ort``.
"""
