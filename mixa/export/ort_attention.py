"""ONNX Runtime's own attention operator, ``com.microsoft.Attention``, for timm's softmax attention layers.

The operator takes a layer's input, its qkv weight and bias and computes the projection, the heads and the
softmax attention in one kernel, where the standard-ops graph runs a Gemm, reshapes, transposes, a split,
two MatMuls and a Softmax one node at a time. On DeiT-T/14 @224 (1 thread, AMD EPYC) the original runs
2.4-3.5% faster with it in fp32 and 3.2-4.2% faster in dynamic INT8, which quantises it as one ``QAttention``
(benchmarks/edge/README.md, "ONNX Runtime's Attention operator"). It exists only in ONNX Runtime (the
``com.microsoft`` domain): an .onnx for another runtime is exported with ``softmax_form='plain'``.

torch's TorchScript exporter writes the operator from ``OrtAttention.symbolic``; when PyTorch runs the layer
(verification, MAC counts) ``OrtAttention.forward`` computes the same maths with standard ops.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .quantize import ORT_ATTENTION, ORT_DOMAIN


class OrtAttention(torch.autograd.Function):
    """softmax(q k^T * scale) v over ``num_heads`` heads, q, k, v = (x @ weight + bias) cut in three.

    x: (B, N, C); weight: (C, 3C), the transpose of timm's ``qkv.weight``; bias: (3C,). Returns (B, N, C),
    the heads concatenated as timm concatenates them (before the output projection)."""

    @staticmethod
    def forward(ctx, x, weight, bias, num_heads: int, scale: float):
        q, k, v = (x @ weight + bias).unflatten(-1, (3, num_heads, -1)).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, v, scale=scale).transpose(1, 2).flatten(2)

    @staticmethod
    def symbolic(g, x, weight, bias, num_heads: int, scale: float):
        y = g.op(f"{ORT_DOMAIN}::{ORT_ATTENTION}", x, weight, bias, num_heads_i=num_heads, scale_f=scale)
        y.setType(x.type())  # (B, N, C) like its input: the exporter cannot infer a contrib operator's shape
        return y


def ort_attention_forward(module, x, attn_mask=None, is_causal: bool = False, **kwargs):
    """timm ``Attention.forward`` while the layer is switched to ONNX Runtime's operator
    (``mixa.export.lowering.softmax_form``). Masked and causal calls take timm's own forward."""
    if attn_mask is not None or is_causal:
        return type(module).forward(module, x, attn_mask=attn_mask, is_causal=is_causal, **kwargs)
    qkv = module.qkv
    bias = qkv.bias if qkv.bias is not None else qkv.weight.new_zeros(qkv.out_features)
    y = OrtAttention.apply(x, qkv.weight.t(), bias, module.num_heads, float(module.scale))
    y = module.norm(y) if hasattr(module, "norm") else y
    return module.proj_drop(module.proj(y))
