"""The form in which each runtime runs softmax attention, linear cores, LayerNorm and q/k/v projections best,
applied to a model while it is exported. Imports no torch at module level (a model is only walked and switched).

timm's attention layers (ViT ``Attention``, Swin ``WindowAttention``, and every other timm layer with a
``fused_attn`` switch) compute softmax attention either with torch's fused
``scaled_dot_product_attention`` (``fused_attn = True``, timm's default on torch 2) or as the plain
``q @ k^T -> softmax -> @ v`` chain. Both are the same maths; the exported graphs differ:

- ExecuTorch / XNNPACK: the SDPA op is decomposed on the way to the edge dialect into a chain with a
  boolean-mask branch (``mul``, ``logical_not``, ``eq``, ``any``, ``where``...) that XNNPACK does not take, so
  part of every softmax layer runs in ExecuTorch's portable kernels; the plain chain is one delegated
  subgraph. Measured on DeiT-T/14 @224: plain is 1.5-2x faster.
- ONNX Runtime: both export to MatMul / Softmax / MatMul. ONNX Runtime also has an operator of its own,
  ``com.microsoft.Attention`` (``mixa.export.ort_attention``), which computes a ViT layer's qkv projection
  and softmax attention in one kernel: the ``ort`` form, which only the TorchScript exporter writes and only
  ONNX Runtime runs.

``BEST_SOFTMAX_FORM`` has the measured pick per runtime (benchmarks/edge/README.md: "the original lowered as
well as the students" for plain against fused, "ONNX Runtime's Attention operator" for ``ort``).

The original and the kept softmax layers of every student get the same treatment, so a student is always
compared with an original lowered as well as it can be.

LayerNorm (``layer_norm_forms``): executorch 1.5's XNNPACK partitioner takes no LayerNorm (nor a mean over a
3-D tensor's last axis), so every LayerNorm of a ViT ran in ExecuTorch's portable kernel between two delegate
calls: 25 calls, 7.4% of DeiT-T/14's time. For .pte, LayerNorms over the last axis are exported as
``mixa.layers.norm.layer_norm_by_averaging`` (mean and variance as fully connected layers with a constant
1/C row; the same maths to float rounding), which XNNPACK runs inside the one delegate call. ONNX keeps
LayerNormalization, a single fused kernel in ONNX Runtime.

Projections (``projection_forms``): timm's attention computes q, k and v in one (B, N, 3C) linear and cuts it
into heads; XNNPACK runs that as a transpose of the whole output, three strided slices and, for q @ k^T, a
transpose of k: about 75 us per layer at DeiT-T/14. For .pte each attention layer's projection is exported
as three linears (``mixa.layers.heads``), each emitted in the layout its product reads (k as k^T), softmax's
d^-1/2 folded into q's weights: the same maths to float rounding, about 1% faster for the original and for
every student (benchmarks/edge/README.md). Replaced layers go further: their q^T, k and v^T feed the core's
tokens-last form (``TOKENS_LAST_CORES``; mixa.attention.functional), so that no transpose of k, of rala's
pooled query or of LePE's grid remains, and relu's products are no longer 65 columns wide. ONNX keeps the
fused projection (ONNX Runtime fuses its MatMul + Add + Transpose chain).

Linear cores likewise (``linear_core_forms``): where a runtime runs another form of a core's maths better,
the replaced layers are exported with it -- relu's normaliser as a column of ones in v for ExecuTorch
(XNNPACK does not take the token sum: one call outside the delegate per layer), the token sum for ONNX
Runtime (about 1% faster there); rala's global query as a mean over the token axis for ONNX Runtime (about
0.5% faster), over a pooled view for XNNPACK (which takes no other mean). Measured in
benchmarks/edge/rala_forms_s3.md.

One image (``one_image_forms``): ONNX graphs traced for a static batch of 1 (``mixa export`` without
``--dynamic-batch``) compute every relu / stella / rala / hedgehog layer in its one-image form
(``mixa.attention.functional.*_one_image``, the same maths). q, k and v come from three projections (the fused
one's thirds: no Split copies its output apart; measured faster in fp32 and both INT8 modes) in the (N, H, d)
layout a projection emits; each head transpose is a permute straight into a product; the result comes out as
the (C, N) transpose of the layer's output, which the output projection reads transposed. ONNX Runtime folds
every one of those permutes into its FusedMatMul / Gemm flags, where the batched (B, H, N, d) layout left a
Split and up to four Transpose nodes a layer. On the proxy task (width 64) k = 0 students ran 5-11% faster,
keep-6 ones 1-5%, in fp32 and INT8; DeiT-T/14's (width 192) keep-6 ones -0.7% to +3.1%
(benchmarks/edge/ort_one_image.py). A dynamic batch keeps the batched form (the fold needs the heads, not the
images, in front), and so do masked calls and Swin's windows wherever an image has several of them.
timm's ViT softmax layers in the plain form (static INT8's, or asked for) take a one-image form too
(``mixa.attention.functional.softmax_attention_one_image``): three projections, the head permutes folded, one
Transpose a layer (its output back to tokens first) where the batched form ran a Split and four. The static
INT8 DeiT-T/14 original ran 4.8-5.4% faster so, fp32 2.5-3.3%; ONNX Runtime's Attention operator stays 0.6-1.8%
faster in fp32 and 0.5-1.8% in dynamic INT8, so it remains their form (benchmarks/edge/ort_softmax_forms.py, two
calls of three runs, AMD EPYC with AVX-512, twentieth session).
"""
from __future__ import annotations

import contextlib
import functools
import importlib
from typing import Any, Iterator, Optional

from ..errors import UsageError

SOFTMAX_FORMS = ("plain", "fused", "ort")
# Measured per runtime, DeiT-T/14 @224, 1 thread (benchmarks/edge/README.md; the module docstring).
BEST_SOFTMAX_FORM = {"executorch": "plain", "onnx": "ort"}
# ONNX Runtime's static (QDQ) INT8 has no quantised form of its Attention operator: the node stays fp32 with
# its qkv projection, and the original ran 0.5-1.2% slower than in the plain form, whose projection is int8
# (benchmarks/edge/ort_softmax_forms.py); at batch 1 it runs 0.85-0.86x as fast as the plain form's one-image
# layout (``one_image_forms``, twentieth session). Dynamic INT8 makes the node a QAttention and keeps the gain.
BEST_STATIC_INT8_ONNX_FORM = "plain"


def _switchable(model: Any):
    return [m for m in model.modules() if isinstance(getattr(m, "fused_attn", None), bool)]


@contextlib.contextmanager
def softmax_form(model: Any, form: str) -> Iterator[Any]:
    """``model`` with every timm softmax attention layer in ``form`` ('plain', 'fused' or 'ort') for the
    duration of the block (restored afterwards). 'ort' switches the ViT layers ``_plain_vit_attention``
    finds to ONNX Runtime's operator; the others (Swin's windows) are plain."""
    if form not in SOFTMAX_FORMS:
        raise UsageError(f"softmax form must be one of {', '.join(SOFTMAX_FORMS)}; got {form!r}")
    layers = _switchable(model)
    before = [m.fused_attn for m in layers]
    for m in layers:
        m.fused_attn = form == "fused"
    switches = []
    if form == "ort":
        from .ort_attention import ort_attention_forward

        switches = [(m, {}, {"forward": ort_attention_forward}) for m in _plain_vit_attention(model)]
    try:
        with _switched(switches):
            yield model
    finally:
        for m, fused in zip(layers, before):
            m.fused_attn = fused


def best_softmax_form(runtime: str, int8: Optional[str] = None) -> str:
    """The measured best form for 'executorch' or 'onnx', for fp32 (``int8`` None) or an INT8 mode."""
    if runtime == "onnx" and int8 == "static":
        return BEST_STATIC_INT8_ONNX_FORM
    return BEST_SOFTMAX_FORM[runtime]


def runtime_softmax_form(runtime: str, form: Optional[str] = None, int8: Optional[str] = None,
                         exporter: str = "torchscript") -> str:
    """``form`` checked against what ``runtime`` runs and ``exporter`` writes ('ort': ONNX Runtime only, by
    the TorchScript exporter); None or 'auto' is ``best_softmax_form(runtime, int8)``, or 'plain' where that
    is 'ort' and the exporter cannot write it."""
    if form in (None, "auto"):
        best = best_softmax_form(runtime, int8)
        return "plain" if best == "ort" and exporter != "torchscript" else best
    allowed = SOFTMAX_FORMS if runtime == "onnx" else tuple(f for f in SOFTMAX_FORMS if f != "ort")
    if form not in allowed:
        raise UsageError(f"softmax form for {'.onnx' if runtime == 'onnx' else '.pte'} must be one of "
                         f"{', '.join(allowed)}; got {form!r}")
    if form == "ort" and exporter != "torchscript":
        raise UsageError("softmax form 'ort' (ONNX Runtime's Attention operator) needs the torchscript exporter")
    return form


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


@contextlib.contextmanager
def _switched(switches: list) -> Iterator[None]:
    """For the duration of the block, each (module, buffers, methods) of ``switches`` holds ``buffers`` as
    non-persistent buffers (graph constants that ``.to()`` moves and nothing saves) and ``methods`` as
    instance-level overrides, each a function of (module, ...); afterwards neither is left behind."""
    for module, buffers, methods in switches:
        for name, tensor in buffers.items():
            module.register_buffer(name, tensor, persistent=False)
        for name, method in methods.items():
            setattr(module, name, functools.partial(method, module))
    try:
        yield
    finally:
        for module, buffers, methods in switches:
            for name in methods:
                del module.__dict__[name]
            for name in buffers:
                del module._buffers[name]


def _qk_unnormed(module: Any) -> bool:
    """q and k go from the projection straight into the product (no q/k norm in between)."""
    from torch import nn

    return (isinstance(getattr(module, "q_norm", None), nn.Identity)
            and isinstance(getattr(module, "k_norm", None), nn.Identity))


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
    with _switched([(m, {_AVERAGING: averaging_row(m.normalized_shape[0])}, {"forward": _averaged_layer_norm})
                    for m in norms]):
        yield norms


# Runtimes whose attention layers export their fused qkv projection as three (mixa.layers.heads).
SPLIT_PROJECTION_RUNTIMES = ("executorch",)
_SPLIT = tuple(f"_mixa_{part}_{kind}" for part in "qkv" for kind in ("weight", "bias"))  # non-persistent buffers


def _plain_vit_attention(model: Any) -> list:
    """timm ViT ``Attention`` layers whose q and k go straight into the product (no q/k norm, no output gate):
    softmax's scale can then ride on q's weights, or the layer be one ONNX Runtime ``Attention`` node."""
    from timm.models.vision_transformer import Attention

    return [m for m in model.modules()
            if type(m) is Attention and _qk_unnormed(m) and getattr(m, "gate", None) is None]


def _split_projection_layers(model: Any) -> list:
    """``_plain_vit_attention``'s layers and every mixa ``MixAttention`` (its own norms and feature maps act on
    the heads it is given)."""
    from ..attention.modules import MixAttention

    vit = {id(m) for m in _plain_vit_attention(model)}
    return [m for m in model.modules() if isinstance(m, MixAttention) or id(m) in vit]


def _split(module: Any) -> list:
    """(weight, bias) of q, k, v as the switched module holds them."""
    parts = [getattr(module, name) for name in _SPLIT]
    return list(zip(parts[0::2], parts[1::2]))


# Each replaced kind's core in the tokens-last form (mixa.attention.functional) that switched layers run.
TOKENS_LAST_CORES = {"relu": "relu_linear_attention_tokens_last", "stella": "stella_attention_tokens_last",
                     "rala": "rala_attention_tokens_last"}


def _tokens_last_ready(module: Any) -> bool:
    """A replaced layer whose q and k go straight into a core that has a tokens-last form."""
    return module.kind in TOKENS_LAST_CORES and module.feature_map is None and _qk_unnormed(module)


def _split_linear_attention(module: Any, x: Any, attn_mask: Any = None, mask: Any = None,
                            is_causal: bool = False) -> Any:
    """``MixAttention.forward`` while it is switched (no mask): q^T, k, v^T straight from the projections into
    the tokens-last core and LePE. Masked calls take the module's own forward (with the split heads)."""
    from ..attention import functional as AF
    from ..layers.heads import project_heads

    if attn_mask is not None or mask is not None or is_causal:
        return type(module).forward(module, x, attn_mask=attn_mask, mask=mask, is_causal=is_causal)
    b, n, c = x.shape
    (wq, bq), (wk, bk), (wv, bv) = _split(module)
    q_t = project_heads(x, wq, bq, module.num_heads, tokens_last=True)
    k = project_heads(x, wk, bk, module.num_heads)
    v_t = project_heads(x, wv, bv, module.num_heads, tokens_last=True)
    y_t = getattr(AF, TOKENS_LAST_CORES[module.kind])(q_t, k, v_t)
    if module.lepe is not None:
        y_t = y_t + module._lepe_tokens_last(v_t)
    return module._finish(y_t.permute(0, 3, 1, 2).reshape(b, n, c), x)


# Runtimes whose single-image graphs run replaced layers in the one-image form (the module docstring), and
# each kind's one-image core (mixa.attention.functional); a kind with a learnable feature map (hedgehog) gets
# the features of q and k, computed from them as permutes.
ONE_IMAGE_RUNTIMES = ("onnx",)
ONE_IMAGE_CORES = {"relu": "relu_linear_attention_one_image", "stella": "stella_attention_one_image",
                   "rala": "rala_attention_one_image", "hedgehog": "feature_linear_attention_one_image"}


def _one_image_ready(module: Any) -> bool:
    """A replaced layer whose q and k go straight into a core (or its feature map) that has a one-image form."""
    return module.kind in ONE_IMAGE_CORES and _qk_unnormed(module)


def _one_image_heads(module: Any, x: Any) -> Any:
    """One image's (1, N, C) tokens -> q, k, v as (N, H, d), from the switched qkv linear's three products."""
    _, n, c = x.shape
    return tuple(part.reshape(n, module.num_heads, module.head_dim) for part in module.qkv(x.reshape(n, c)))


def _one_image_linear_attention(module: Any, x: Any, attn_mask: Any = None, mask: Any = None,
                                is_causal: bool = False) -> Any:
    """``MixAttention.forward`` while it is switched: one image's q, k, v as (N, H, d), from three projections
    (its qkv linear switched too, ``_three_projections``) into the one-image core; its (H, d, N) result is the
    transposed (N, C) input of the output projection. Masked calls and batches of several images (Swin's
    windows) take the module's own forward."""
    from ..attention import functional as AF

    if attn_mask is not None or mask is not None or is_causal or x.shape[0] != 1:
        return type(module).forward(module, x, attn_mask=attn_mask, mask=mask, is_causal=is_causal)
    _, n, c = x.shape
    q, k, v = _one_image_heads(module, x)
    if module.feature_map is not None:  # (H, N, features); each permute rides on the map's product
        q, k = module.feature_map(q.permute(1, 0, 2), k.permute(1, 0, 2))
    y_t = getattr(AF, ONE_IMAGE_CORES[module.kind])(q, k, v)
    if module.lepe is not None:
        y_t = y_t + module._lepe_one_image(v.permute(1, 2, 0))
    return module._finish(y_t.reshape(c, n).t(), x).reshape(1, n, c)


def _one_image_softmax_attention(module: Any, x: Any, attn_mask: Any = None, is_causal: bool = False) -> Any:
    """timm ``Attention.forward`` while it is switched (plain form): one image's q, k, v as (N, H, d), from
    three projections (its qkv linear switched too), into ``softmax_attention_one_image``, whose (N, H, d)
    result is the output projection's (N, C) input. Masks, causal attention, the fused form and batches of
    several images take timm's own forward."""
    from ..attention import functional as AF

    if attn_mask is not None or is_causal or module.fused_attn or x.shape[0] != 1:
        return type(module).forward(module, x, attn_mask=attn_mask, is_causal=is_causal)
    _, n, c = x.shape
    y = AF.softmax_attention_one_image(*_one_image_heads(module, x), module.scale).reshape(n, c)
    y = module.norm(y) if hasattr(module, "norm") else y
    return module.proj_drop(module.proj(y)).reshape(1, n, c)


def _three_projections(linear: Any, x: Any) -> Any:
    """A fused qkv ``nn.Linear``'s forward while it is switched: for one image's (N, C) tokens (the one-image
    form's call) q, k, v by three products; for a batch (B, N, C) -- the layer's own forward, which Swin's
    windows and masked calls take -- the fused product as before. Run as the linear's own call, the three stay
    in its name scope, where INT8 quantisation finds a layer (``mixa.export.quantize``)."""
    from torch.nn import functional as F

    if x.dim() != 2:
        return F.linear(x, linear.weight, linear.bias)
    return tuple(F.linear(x, w, b) for w, b in _split(linear))


@contextlib.contextmanager
def one_image_forms(model: Any, runtime: str, dynamic_batch: bool, softmax: str) -> Iterator[list]:
    """``model`` with every replaced layer that has a one-image core (``ONE_IMAGE_CORES``), and every timm ViT
    softmax layer in the plain form (``softmax``, the form ``softmax_form`` gave them), computing a batch of one
    image in that form, where ``runtime`` is in ``ONE_IMAGE_RUNTIMES`` and the graph is traced for a static
    batch of 1 (``dynamic_batch`` False), for the duration of the block; yields the switched layers.
    Their fused qkv projection is computed as three (``mixa.layers.heads.split_qkv``, weights taken when the
    block starts): no Split copies the (N, 3C) output apart. Measured in every precision, INT8 included
    (benchmarks/edge/README.md, "Sixteenth session"; softmax layers: "Twentieth session")."""
    from ..attention.modules import MixAttention
    from ..layers.heads import split_qkv

    one_image = not dynamic_batch and runtime in ONE_IMAGE_RUNTIMES
    layers = [m for m in model.modules() if one_image and isinstance(m, MixAttention) and _one_image_ready(m)]
    softmax_layers = _plain_vit_attention(model) if one_image and softmax == "plain" else []
    switches = [(m, {}, {"forward": _one_image_linear_attention}) for m in layers]
    switches += [(m, {}, {"forward": _one_image_softmax_attention}) for m in softmax_layers]
    layers += softmax_layers
    for m in layers:
        parts = split_qkv(m.qkv.weight, m.qkv.bias)
        switches.append((m.qkv, dict(zip(_SPLIT, (t for part in parts for t in part))),
                         {"forward": _three_projections}))
    with _switched(switches):
        yield layers


def _split_heads(module: Any, x: Any) -> tuple:
    """``MixAttention._heads`` while it is switched: q, k, v as (B, heads, N, d)."""
    from ..layers.heads import project_heads

    return tuple(project_heads(x, w, b, module.num_heads) for w, b in _split(module))


def _split_softmax_attention(module: Any, x: Any, attn_mask: Any = None, is_causal: bool = False) -> Any:
    """timm ``Attention.forward`` while it is switched (plain form, no mask); q carries the scale, k comes as
    k^T. Masks, causal attention and the fused form take timm's own forward."""
    from ..layers.heads import project_heads

    if attn_mask is not None or is_causal or module.fused_attn:
        return type(module).forward(module, x, attn_mask=attn_mask, is_causal=is_causal)
    b, n, _ = x.shape
    (wq, bq), (wk, bk), (wv, bv) = _split(module)
    q = project_heads(x, wq, bq, module.num_heads)
    k_t = project_heads(x, wk, bk, module.num_heads, tokens_last=True)
    v = project_heads(x, wv, bv, module.num_heads)
    attn = module.attn_drop((q @ k_t).softmax(dim=-1))
    y = (attn @ v).transpose(1, 2).reshape(b, n, module.proj.in_features)
    y = module.norm(y) if hasattr(module, "norm") else y
    return module.proj_drop(module.proj(y))


@contextlib.contextmanager
def projection_forms(model: Any, runtime: str) -> Iterator[list]:
    """``model`` with every attention layer's fused qkv projection computed as three
    (``mixa.layers.heads``) where ``runtime`` is in ``SPLIT_PROJECTION_RUNTIMES`` (the module docstring), for
    the duration of the block; yields the switched layers. The split weights are taken when the block starts."""
    from ..attention.modules import MixAttention
    from ..layers.heads import split_qkv

    layers = _split_projection_layers(model) if runtime in SPLIT_PROJECTION_RUNTIMES else []
    switches = []
    for m in layers:
        softmax = not isinstance(m, MixAttention)
        parts = split_qkv(m.qkv.weight, m.qkv.bias, m.scale if softmax else 1.0)
        if softmax:
            methods = {"forward": _split_softmax_attention}
        else:
            methods = {"_heads": _split_heads}
            if _tokens_last_ready(m):
                methods["forward"] = _split_linear_attention
        switches.append((m, dict(zip(_SPLIT, (t for part in parts for t in part))), methods))
    with _switched(switches):
        yield layers
