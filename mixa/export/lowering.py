"""The form in which each runtime runs softmax attention, linear cores and LayerNorm best, applied to a model
while it is exported. Imports no torch at module level (a model is only walked and switched).

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

LayerNorm (``layer_norm_forms``): executorch 1.5's XNNPACK partitioner takes no LayerNorm (nor a mean over a
3-D tensor's last axis), so every LayerNorm of a ViT ran in ExecuTorch's portable kernel between two delegate
calls: 25 calls, 7.4% of DeiT-T/14's time. For .pte, LayerNorms over the last axis are exported as
``mixa.layers.norm.layer_norm_by_averaging`` (mean and variance as fully connected layers with a constant
1/C row; the same maths to float rounding), which XNNPACK runs inside the one delegate call. ONNX keeps
LayerNormalization, a single fused kernel in ONNX Runtime.

Linear cores likewise (``linear_core_forms``): where a runtime runs another form of a core's maths better,
the replaced layers are exported with it -- relu's normaliser as a column of ones in v for ExecuTorch
(XNNPACK does not take the token sum: one call outside the delegate per layer), the token sum for ONNX
Runtime (about 1% faster there); rala's global query as a mean over the token axis for ONNX Runtime (about
0.5% faster), over a pooled view for XNNPACK (which takes no other mean). Measured in
benchmarks/edge/rala_forms_s3.md.
"""
from __future__ import annotations

import contextlib
import functools
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


# Runtimes whose LayerNorms over the last axis are exported as mixa.layers.norm.layer_norm_by_averaging.
AVERAGED_LAYER_NORM_RUNTIMES = ("executorch",)
_AVERAGING = "_mixa_averaging"  # the non-persistent buffer the swapped forward reads (a graph constant)


def _last_axis_layer_norms(model: Any) -> list:
    """LayerNorms that normalise the last axis with ``nn.LayerNorm``'s own maths: torch's and timm's (which
    only picks a kernel), not subclasses that permute first (timm's ``LayerNorm2d``)."""
    from timm.layers import LayerNorm as TimmLayerNorm
    from torch import nn

    return [m for m in model.modules()
            if type(m) in (nn.LayerNorm, TimmLayerNorm) and len(m.normalized_shape) == 1]


def _averaged_layer_norm(norm: Any, x: Any) -> Any:
    """``norm``'s forward while it is switched."""
    from ..layers.norm import layer_norm_by_averaging

    return layer_norm_by_averaging(x, getattr(norm, _AVERAGING), norm.weight, norm.bias, norm.eps)


@contextlib.contextmanager
def layer_norm_forms(model: Any, runtime: str) -> Iterator[list]:
    """``model`` with every last-axis LayerNorm computed by ``layer_norm_by_averaging`` where ``runtime`` is
    in ``AVERAGED_LAYER_NORM_RUNTIMES`` (the module docstring) for the duration of the block; yields the
    switched modules (their types are kept out of INT8 quantisation, as a native LayerNorm is)."""
    from ..layers.norm import averaging_row  # torch: needed once there is a model

    norms = _last_axis_layer_norms(model) if runtime in AVERAGED_LAYER_NORM_RUNTIMES else []
    for m in norms:
        m.register_buffer(_AVERAGING, averaging_row(m.normalized_shape[0]), persistent=False)
        m.forward = functools.partial(_averaged_layer_norm, m)
    try:
        yield norms
    finally:
        for m in norms:
            del m.forward
            del m._buffers[_AVERAGING]
