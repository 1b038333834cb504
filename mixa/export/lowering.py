"""The form in which each runtime runs softmax attention best, applied to a model while it is exported.
Imports no torch (a model is only walked and switched).

timm's attention layers (ViT ``Attention``, Swin ``WindowAttention``, and every other timm layer with a
``fused_attn`` switch) compute softmax attention either with torch's fused
``scaled_dot_product_attention`` (``fused_attn = True``, timm's default on torch 2) or as the plain
``q @ k^T -> softmax -> @ v`` chain. Both are the same maths; the exported graphs differ:

- ExecuTorch / XNNPACK: the SDPA op is decomposed on the way to the edge dialect into a chain with a
  boolean-mask branch (``mul``, ``logical_not``, ``eq``, ``any``, ``where``...) that XNNPACK does not take, so
  part of every softmax layer runs in ExecuTorch's portable kernels; the plain chain is one delegated
  subgraph. Measured on DeiT-T/14 @224 (benchmarks/edge/softmax_forms.md): plain is much faster.
- ONNX Runtime: both export to MatMul / Softmax / MatMul; see ``BEST_SOFTMAX_FORM`` for the measured pick.

The original and the kept softmax layers of every student get the same treatment, so a student is always
compared with an original lowered as well as it can be.

Linear cores likewise (``linear_core_forms``): where a runtime runs another form of a core's maths better,
the replaced layers are exported with it -- relu's normaliser as a column of ones in v for ExecuTorch
(XNNPACK does not take the token sum: one call outside the delegate per layer), the token sum for ONNX
Runtime (about 1% faster there); rala's global query as a mean over the token axis for ONNX Runtime (about
0.5% faster), over a pooled view for XNNPACK (which takes no other mean). Measured in
benchmarks/edge/rala_forms_s3.md.
"""
from __future__ import annotations

import contextlib
import importlib
from typing import Any, Iterator

from ..errors import UsageError

SOFTMAX_FORMS = ("plain", "fused")
# Measured per runtime, fp32, DeiT-T/14 @224, 1 thread (benchmarks/bench_edge_softmax.py ->
# benchmarks/edge/softmax_forms.md).
BEST_SOFTMAX_FORM = {"executorch": "plain", "onnx": "plain"}


def _switchable(model: Any):
    return [m for m in model.modules() if isinstance(getattr(m, "fused_attn", None), bool)]


@contextlib.contextmanager
def softmax_form(model: Any, form: str) -> Iterator[Any]:
    """``model`` with every timm softmax attention layer in ``form`` ('plain' or 'fused') for the duration
    of the block (restored afterwards)."""
    if form not in SOFTMAX_FORMS:
        raise UsageError(f"softmax form must be one of {', '.join(SOFTMAX_FORMS)}; got {form!r}")
    layers = _switchable(model)
    before = [m.fused_attn for m in layers]
    for m in layers:
        m.fused_attn = form == "fused"
    try:
        yield model
    finally:
        for m, fused in zip(layers, before):
            m.fused_attn = fused


def best_softmax_form(runtime: str) -> str:
    """The measured best form for 'executorch' or 'onnx'."""
    return BEST_SOFTMAX_FORM[runtime]


# Per runtime: core (by name, in its own module, mixa.attention.functional) -> the form exported instead.
LINEAR_CORE_FORMS = {"executorch": {"relu_linear_attention": "relu_linear_attention_ones_column"},
                     "onnx": {"rala_attention": "rala_attention_token_axis_mean"}}


@contextlib.contextmanager
def linear_core_forms(model: Any, runtime: str) -> Iterator[Any]:
    """``model`` with every replaced layer's core in the form ``runtime`` runs best (``LINEAR_CORE_FORMS``:
    the same maths) for the duration of the block (restored afterwards)."""
    forms = LINEAR_CORE_FORMS[runtime]
    swapped = []
    for m in model.modules():
        core = getattr(m, "_linear_core", None)
        if getattr(core, "__name__", None) in forms:
            swapped.append((m, core))
            m._linear_core = getattr(importlib.import_module(core.__module__), forms[core.__name__])
    try:
        yield model
    finally:
        for m, core in swapped:
            m._linear_core = core
