"""Pure attention cores on raw projections.

Every core takes q, k, v of shape (B, heads, N, d) -- the outputs of the layer's q/k/v projections after
the head split, *before* any kernel -- applies its own kernel and returns (B, heads, N, d).

The linear cores never form an N x N tensor (cost O(N d^2)) and reduce in fp32 (fp64 stays fp64) whatever the
input dtype, also under autocast; the result is cast back to the input dtype with saturation, so an fp16/bf16
caller never receives inf or NaN (see ``_saturating_cast``).

Traceable and scriptable: the cores take no keyword-only arguments and make no decision on a tensor's
shape or dtype. What must look at run-time values -- widening to fp32, a product with autocast off for the
tensor's device, the saturating cast back -- lives in three small helpers that ``torch.fx`` records as single
calls (``torch.fx.wrap``), so ``symbolic_trace`` / ``create_feature_extractor`` keep the fp32 reductions in the
traced graph, and TorchScript compiles them. (TorchScript ignores autocast regions: a scripted model keeps
fp32 reductions for fp16/bf16 weights, but under ``torch.autocast`` its products follow autocast.)

``key_mask`` (optional, shape broadcastable to (B, heads, N), 1 = token takes part) restricts every
reduction over tokens to the masked tokens. It is how a Swin layer honours its shifted-window regions with
a linear core: each region is an independent self-attention (``masked_by_regions`` below).
"""
from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "softmax_attention",
    "relu_quadratic_attention",
    "relu_linear_attention",
    "relu_linear_attention_ones_column",
    "stella_attention",
    "rala_attention",
    "relu_linear_attention_tokens_last",
    "stella_attention_tokens_last",
    "rala_attention_tokens_last",
    "rala_attention_token_axis_mean",
    "softmax_attention_one_image",
    "relu_linear_attention_one_image",
    "stella_attention_one_image",
    "rala_attention_one_image",
    "feature_linear_attention_one_image",
    "hedgehog_features",
    "feature_linear_attention",
    "hedgehog_attention",
    "elu_plus_one",
    "elu_plus_one_by_difference",
    "apply_rope",
    "masked_by_regions",
]

RELU_EPS = 1e-5  # timm's LiteMLA value; EfficientViT's original 1e-15 gave NaN under AMP.
RALA_EPS = 1e-6  # the RALA paper / official code.
HEDGEHOG_EPS = 1e-6  # positive features: each query's normaliser is a sum of positive terms
MASK_FILL = 1e4  # masked logits: exp(-1e4) underflows to 0 in fp32 and fp64


def _wide(x: Tensor) -> Tensor:
    """At least fp32 (fp64 stays fp64) for the reductions."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _mm(a: Tensor, b: Tensor) -> Tensor:
    """a @ b in the operands' own precision: autocast (which would run a matmul in fp16/bf16) is switched off
    for the operands' device while it runs. The cores call it on ``_wide`` operands."""
    if torch.jit.is_scripting():  # TorchScript cannot key autocast on a run-time device (see above)
        return a @ b
    device = a.device.type
    if not torch.amp.is_autocast_available(device) or not torch.is_autocast_enabled(device):  # e.g. "meta"
        return a @ b
    with torch.autocast(device, enabled=False):
        return a @ b


def _saturating_cast(x: Tensor, dtype: torch.dtype) -> Tensor:
    """Cast an fp32 result back to ``dtype``, clamping to its finite range instead of overflowing.

    relu and rala outputs are convex combinations of v and cannot overflow; SteLLA's fixed normalisation
    can, for extreme inputs, exceed fp16's 65504 -- saturating is the least surprising answer there.
    """
    if dtype == x.dtype:
        return x
    # x is fp32 here (fp64 inputs stay fp64): only the 16-bit floats are narrower. Their torch.finfo(...).max
    # written out, since TorchScript has no finfo.
    if dtype == torch.float16:
        x = x.clamp(-65504.0, 65504.0)
    elif dtype == torch.bfloat16:
        x = x.clamp(-3.3895313892515355e38, 3.3895313892515355e38)
    return x.to(dtype)


# Recorded as single calls by torch.fx: they branch on run-time dtypes and autocast state.
torch.fx.wrap("_wide")
torch.fx.wrap("_mm")
torch.fx.wrap("_saturating_cast")


def _key_weights(key_mask: Optional[Tensor], like: Tensor) -> Optional[Tensor]:
    """key_mask (B?, H?, N) -> (B?, H?, N, 1) weights in ``like``'s dtype, or None (matmul broadcasting
    supplies missing leading dims)."""
    if key_mask is None:
        return None
    return key_mask.to(device=like.device, dtype=like.dtype).unsqueeze(-1)


def _token_count(weights: Tensor) -> Tensor:
    """Participating tokens per (B?, H?) as (B?, H?, 1, 1), at least 1."""
    return weights.sum(dim=-2, keepdim=True).clamp_min(1.0)


def softmax_attention(q: Tensor, k: Tensor, v: Tensor, scale: Optional[float] = None,
                      attn_mask: Optional[Tensor] = None) -> Tensor:
    """softmax(q k^T * scale + attn_mask) v, scale defaulting to d^-1/2. Uses torch's fused SDPA."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)


def relu_quadratic_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
    """MixA's kept-layer form: O = (ReLU(Q) ReLU(K)^T / (N sqrt(d))) V -- quadratic, no softmax.

    ``attn_mask`` (bool, broadcastable to (B, heads, N, N), True = the pair takes part) removes pairs; N is
    then each query's number of participating keys. The 1/(N sqrt d) scale is applied to ReLU(Q) before the
    product so the graph holds a single N x N tensor (softmax's needs at least two: scores, probabilities).
    Computed in fp32 also under autocast, like the linear cores (no normaliser can vanish here, but the
    N x N sum of non-negative terms can overflow fp16).
    """
    dtype = v.dtype
    n, d = k.shape[-2], q.shape[-1]
    q, k, v = _wide(q), _wide(k), _wide(v)
    if attn_mask is None:
        scores = _mm(F.relu(q) * (1.0 / (n * d ** 0.5)), F.relu(k).transpose(-2, -1))
    else:
        keep = attn_mask.to(q.dtype)
        count = keep.sum(dim=-1, keepdim=True).clamp_min(1.0)          # (.., N, 1) keys per query
        scores = _mm(F.relu(q) / d ** 0.5, F.relu(k).transpose(-2, -1)) * (keep / count)
    return _saturating_cast(_mm(scores, v), dtype)


def _relu_features(q: Tensor, k: Tensor, v: Tensor, key_mask: Optional[Tensor]):
    """The ReLU kernel on widened q and k, masked-out keys zeroed; also the key weights (or None)."""
    q, k, v = F.relu(_wide(q)), F.relu(_wide(k)), _wide(v)
    w = _key_weights(key_mask, k)
    return q, (k if w is None else k * w), v, w


def relu_linear_attention(q: Tensor, k: Tensor, v: Tensor, eps: float = RELU_EPS,
                          key_mask: Optional[Tensor] = None) -> Tensor:
    """ReLU linear attention (EfficientViT / timm LiteMLA):
    O_i = ReLU(q_i) (sum_j ReLU(k_j)^T v_j) / (ReLU(q_i) . sum_j ReLU(k_j) + eps).
    """
    dtype = v.dtype
    q, k, v, w = _relu_features(q, k, v, key_mask)
    kv = _mm(k.transpose(-2, -1), v)                        # (B, H, d, dv)
    k_sum = k.sum(dim=-2, keepdim=True).transpose(-2, -1)   # (B, H, d, 1)
    out = _mm(q, kv) / (_mm(q, k_sum) + eps)
    return _saturating_cast(out, dtype)


def relu_linear_attention_ones_column(q: Tensor, k: Tensor, v: Tensor, eps: float = RELU_EPS,
                                      key_mask: Optional[Tensor] = None) -> Tensor:
    """``relu_linear_attention`` with the normaliser riding on the products (timm LiteMLA's form): v gets a
    column of ones, whose column of k^T [v 1] is sum_j ReLU(k_j). The form mixa exports to ExecuTorch: XNNPACK
    does not take the token sum (one call outside the delegate per layer), while ONNX Runtime runs the sum
    form about 1% faster at DeiT-T/14 (benchmarks/edge/README.md, session 3)."""
    dtype = v.dtype
    q, k, v, w = _relu_features(q, k, v, key_mask)
    dv = v.shape[-1]
    out = _mm(q, _mm(k.transpose(-2, -1), F.pad(v, [0, 1], value=1.0)))   # (B, H, N, dv + 1)
    return _saturating_cast(out[..., :dv] / (out[..., dv:] + eps), dtype)


def stella_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Optional[Tensor] = None) -> Tensor:
    """SteLLA (MixA): O_i = ReLU(q_i) (sum_j ReLU(k_j)^T v_j) / (N sqrt(d)).

    Fixed normalisation, no data-dependent denominator. The formula is our derivation from the MixA
    supplementary (Theorems 5.1-5.3: the token sum needs 1/N, the dot product 1/sqrt(d)); the main
    text is not public. With a key_mask, N is the number of participating tokens.
    """
    dtype = v.dtype
    n, d = k.shape[-2], q.shape[-1]
    q, k, v, w = _relu_features(q, k, v, key_mask)
    # Normalising the d x d buffer before the second product keeps fp32 far from its range.
    kv = _mm(k.transpose(-2, -1), v)
    kv = kv / (n * d ** 0.5) if w is None else kv / (_token_count(w) * d ** 0.5)
    return _saturating_cast(_mm(q, kv), dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding with consecutive channel pairs: x*cos + rot(x)*sin, rot(x0, x1) = (-x1, x0).

    cos/sin broadcast against x (..., N, d).
    """
    x_pairs = x.unflatten(-1, (-1, 2))
    rotated = torch.stack((-x_pairs[..., 1], x_pairs[..., 0]), dim=-1).flatten(-2)
    return x * cos + rotated * sin


def _masked_softmax(logits: Tensor, weights: Tensor, fill: float = MASK_FILL) -> Tensor:  # (TorchScript: no globals)
    """softmax over the last dim restricted to entries with weight 1, for logits >= 0 (RALA's
    q_g . kappa(k_j): both factors positive). Non-members are set to -MASK_FILL, which exp takes to exactly 0
    in fp32 and fp64; a finite fill, since a -inf would reach an exported graph, where INT8 calibration turns
    it into an invalid range. One Softmax node: a masked max needs a Reduce that ONNX Runtime's symbolic
    shape inference (quant_pre_process) cannot follow at opset 18 and XNNPACK does not take."""
    return torch.softmax(logits * weights - fill * (1 - weights), dim=-1) * weights


def elu_plus_one(x: Tensor) -> Tensor:
    """ELU(x) + 1 (RALA's kernel) as exp(min(x, 0)) + relu(x): the same function, but ONNX Runtime runs
    this chain 2-3x faster than its Elu node at ViT widths (measured on (1, 2, 257, 32): 8 vs 30 us), and no
    -1 + 1 round trip loses the low bits of exp(x) for negative x. exp never sees a positive argument, so
    fp16 cannot overflow."""
    return torch.exp(x.clamp(max=0.0)) + F.relu(x)


def elu_plus_one_by_difference(x: Tensor) -> Tensor:
    """``elu_plus_one`` as exp(m) + (x - m), m = min(x, 0): the same values bit for bit (x - m is exactly x or
    0), without a relu. The tokens-last rala form uses it: with the relu, executorch 1.5's XNNPACK partitioner
    cut an INT8 rala graph fed by split projections into two delegate calls (tests/test_executorch.py)."""
    m = x.clamp(max=0.0)
    return torch.exp(m) + (x - m)


def _token_mean(x: Tensor) -> Tensor:
    """The mean over tokens of (B, H, N, d) as (B, H, 1, d), written as a mean over the two innermost axes of
    a (B, H d, N, 1) view: XNNPACK delegates that (a global average pool; its mean takes no other axes, and
    a product with a 1/N row needs a ``full`` and a broadcasting ``expand`` it does not take). ONNX Runtime
    runs it about 15 us per layer slower than the row product at DeiT-T width (a Transpose more)."""
    b, h, n, d = x.shape
    return x.transpose(-2, -1).reshape(b, h * d, n, 1).mean(dim=[2, 3], keepdim=True).reshape(b, h, 1, d)


def _rala_weights(q: Tensor, k: Tensor, w: Optional[Tensor], n: int, d: int, pooled_mean: bool) -> Tensor:
    """p = softmax_j(q_g . kappa(k_j) / sqrt(d)) as a (B, H, 1, N) row, over the masked keys only."""
    if w is None:  # q_g (B, H, 1, d): XNNPACK takes only the pooled form, ONNX Runtime the plain mean faster
        q_global = _token_mean(q) if pooled_mean else q.mean(dim=-2, keepdim=True)
        return torch.softmax(_mm(q_global, k.transpose(-2, -1)) * d ** -0.5, dim=-1)
    q_global = _mm(w.transpose(-2, -1), q) / _token_count(w)
    return _masked_softmax(_mm(q_global, k.transpose(-2, -1)) * d ** -0.5, w.transpose(-2, -1))


def rala_attention(q: Tensor, k: Tensor, v: Tensor, rope: Optional[Tuple[Tensor, Tensor]] = None,
                   eps: float = RALA_EPS, key_mask: Optional[Tensor] = None) -> Tensor:
    """Rank-augmented linear attention core (RALA, CVPR 2025), without LePE and output gate.

    kappa = ELU + 1 on q and k; global query q_g = mean_i kappa(q_i);
    alpha_j = N softmax_j(q_g . kappa(k_j) / sqrt(d)); k'_j = alpha_j kappa(k_j);
    Y_i = [kappa(q_i) (1/N) sum_j k'_j^T v_j] / [kappa(q_i) . mean_j k'_j + eps].
    ``rope=(cos, sin)`` rotates kappa(q) and k' in the numerator only, as the official RAVLT code does.

    Computed as the same formula with the N cancelled: with p = softmax_j(...), (1/N) sum_j k'_j^T v_j =
    sum_j p_j kappa(k_j)^T v_j and mean_j k'_j = sum_j p_j kappa(k_j) = p kappa(K) -- a weighted mean, so
    no N-sized factor appears (the official code splits 1/N over both factors to stay in fp16 range; here the
    sums are fp32 and bounded anyway). Written for CPU runtimes, where at ViT widths every extra node costs
    about as much as its arithmetic: the token mean is one over contiguous axes (``_token_mean``); p is
    applied to kappa(K) in place (its column is a free reshape of
    the row) and the transposes ride on the MatMuls, which ONNX Runtime fuses; one division normalises.
    """
    return _rala(q, k, v, rope, eps, key_mask, True)


def rala_attention_token_axis_mean(q: Tensor, k: Tensor, v: Tensor, rope: Optional[Tuple[Tensor, Tensor]] = None,
                                  eps: float = RALA_EPS, key_mask: Optional[Tensor] = None) -> Tensor:
    """``rala_attention`` with the global query as one mean over the token axis instead of the pooled view:
    the form mixa exports to ONNX (``mixa.export.lowering.linear_core_forms``): ONNX Runtime runs it about
    0.5% faster at DeiT-T/14 (a Transpose and two Reshapes fewer per layer), XNNPACK does not take it."""
    return _rala(q, k, v, rope, eps, key_mask, False)


def _rala(q: Tensor, k: Tensor, v: Tensor, rope: Optional[Tuple[Tensor, Tensor]], eps: float,
          key_mask: Optional[Tensor], pooled_mean: bool) -> Tensor:
    dtype = v.dtype
    n, d = k.shape[-2], q.shape[-1]
    q, k, v = elu_plus_one(_wide(q)), elu_plus_one(_wide(k)), _wide(v)
    w = _key_weights(key_mask, k)
    p = _rala_weights(q, k, w, n, d, pooled_mean)                         # (B, H, 1, N); masked keys 0
    p_column = p.reshape(p.shape[0], p.shape[1], n, 1)
    den = _mm(q, _mm(p, k).transpose(-2, -1))                             # (B, H, N, 1), un-rotated features
    if rope is not None:
        q, k = apply_rope(q, rope[0], rope[1]), apply_rope(k, rope[0], rope[1])
    weighted = k * p_column                                               # p_j kappa(k_j), (B, H, N, d)
    out = _mm(q, _mm(weighted.transpose(-2, -1), v)) / (den + eps)
    return _saturating_cast(out, dtype)


# Tokens-last forms: q and v as (B, H, d, N), k as (B, H, N, d), the result as (B, H, dv, N); no key mask.
# The forms mixa exports to ExecuTorch (mixa.export.lowering.projection_forms): the projections emit these
# layouts directly, so no transpose of k, of the global query's pooled view or of LePE's grid remains; and the
# products are v^T k and (v^T k) q^T, whose output widths are d and N. XNNPACK computes 16 output columns at a
# time: relu's normaliser column made the token-major products dv + 1 = 65 wide, which costs as much as 80.
# The same maths as the token-major cores, transposed (tests/test_rala_graph.py).


def relu_linear_attention_tokens_last(q_t: Tensor, k: Tensor, v_t: Tensor, eps: float = RELU_EPS) -> Tensor:
    """``relu_linear_attention``, tokens last (above); the normaliser rides as a row of ones under v^T."""
    dtype = v_t.dtype
    q_t, k, v_t = F.relu(_wide(q_t)), F.relu(_wide(k)), _wide(v_t)
    dv = v_t.shape[-2]
    out = _mm(_mm(F.pad(v_t, [0, 0, 0, 1], value=1.0), k), q_t)            # (B, H, dv + 1, N)
    return _saturating_cast(out[..., :dv, :] / (out[..., dv:, :] + eps), dtype)


def stella_attention_tokens_last(q_t: Tensor, k: Tensor, v_t: Tensor) -> Tensor:
    """``stella_attention``, tokens last (above)."""
    dtype = v_t.dtype
    n, d = k.shape[-2], k.shape[-1]
    q_t, k, v_t = F.relu(_wide(q_t)), F.relu(_wide(k)), _wide(v_t)
    return _saturating_cast(_mm(_mm(v_t, k) / (n * d ** 0.5), q_t), dtype)


def rala_attention_tokens_last(q_t: Tensor, k: Tensor, v_t: Tensor, eps: float = RALA_EPS) -> Tensor:
    """``rala_attention`` without RoPE, tokens last (above): the global query is the pooled mean of q^T's
    rows (no transpose first), p comes from k q_g as a column that is already p's row in memory."""
    dtype = v_t.dtype
    b, h, d, n = q_t.shape
    q_t, k, v_t = elu_plus_one_by_difference(_wide(q_t)), elu_plus_one_by_difference(_wide(k)), _wide(v_t)
    q_global = q_t.reshape(b, h * d, n, 1).mean(dim=[2, 3], keepdim=True).reshape(b, h, d, 1)
    p = torch.softmax((_mm(k, q_global) * d ** -0.5).reshape(b, h, 1, n), dim=-1)  # (B, H, 1, N)
    den = _mm(_mm(p, k), q_t)                                                     # (B, H, 1, N)
    weighted = k * p.reshape(b, h, n, 1)                                          # p_j kappa(k_j)
    return _saturating_cast(_mm(_mm(v_t, weighted), q_t) / (den + eps), dtype)


# One-image forms: q, k, v as one image's projection emits them, (N, H, d) -- tokens first, no batch axis --,
# the result as (H, dv, N), which is the (C, N) transpose of the layer's output: the projection after it
# reads it transposed. Every head transpose is written as a permute straight into a product, and ONNX
# Runtime folds each into the product's flags (FusedMatMul's transA/transBatch, Gemm's transA), so a relu or
# stella layer runs no Transpose node at all; the batched (B, H, N, d) layout runs up to four per layer, about
# 9% of a k = 0 relu student at 257 tokens and width 64 (benchmarks/edge/ort_one_image.py). The kernel is
# applied before the permutes: an elementwise op between a Transpose and its product stops the fold. The
# forms mixa exports to ONNX at a static batch of 1 (mixa.export.lowering.one_image_forms); the same maths as
# the batched cores.


def softmax_attention_one_image(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """timm's plain softmax chain, softmax(q k^T * scale) v, one image: q, k, v as (N, H, d), the result as
    (N, H, dv), the (N, C) input of the output projection. Unlike the linear forms (above) it ends tokens
    first, with one Transpose of the (H, N, dv) product: the (H, dv, N) form would fold that transpose into the
    product only by reading the N x N probabilities transposed, and ONNX Runtime ran DeiT-T/14 4% slower so
    (static INT8; benchmarks/edge/README.md, twentieth session)."""
    attn = torch.softmax(q.permute(1, 0, 2) @ k.permute(1, 2, 0) * scale, dim=-1)   # (H, N, N)
    return (attn @ v.permute(1, 0, 2)).permute(1, 0, 2)


def relu_linear_attention_one_image(q: Tensor, k: Tensor, v: Tensor, eps: float = RELU_EPS) -> Tensor:
    """``relu_linear_attention``, one image (above): O^T = (V^T K) Q^T / (k_sum Q^T + eps) per head."""
    dtype = v.dtype
    _, h, d = q.shape
    q, k, v = F.relu(_wide(q)), F.relu(_wide(k)), _wide(v)
    q_t = q.permute(1, 2, 0)                                               # (H, d, N)
    vk = _mm(v.permute(1, 2, 0), k.permute(1, 0, 2))                      # (H, dv, d) = (K^T V)^T
    k_sum = k.sum(dim=0).reshape(h, 1, d)                                   # (H, 1, d)
    return _saturating_cast(_mm(vk, q_t) / (_mm(k_sum, q_t) + eps), dtype)


def stella_attention_one_image(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``stella_attention``, one image (above)."""
    dtype = v.dtype
    n, d = q.shape[0], q.shape[-1]
    q, k, v = F.relu(_wide(q)), F.relu(_wide(k)), _wide(v)
    vk = _mm(v.permute(1, 2, 0), k.permute(1, 0, 2)) / (n * d ** 0.5)     # (H, dv, d)
    return _saturating_cast(_mm(vk, q.permute(1, 2, 0)), dtype)


def rala_attention_one_image(q: Tensor, k: Tensor, v: Tensor, eps: float = RALA_EPS) -> Tensor:
    """``rala_attention`` without RoPE, one image (above). The token weights p (an (H, 1, N) row) scale v's
    tokens in the (H, dv, N) layout, the one LePE reads v in: ONNX Runtime merges the two permutes of v into one
    Transpose, where weighting k in its (N, H, d) layout took a Transpose of p and two Reshapes more (about 45
    us a layer with the Concat of ``MixAttention._lepe_one_image``, at DeiT-T/14 width). The global query is
    a kept-dimension mean permuted into its product (which folds the permute), not a mean and an Unsqueeze:
    one node fewer a layer."""
    dtype = v.dtype
    d = q.shape[-1]
    q, k, v = elu_plus_one(_wide(q)), elu_plus_one(_wide(k)), _wide(v)
    q_t = q.permute(1, 2, 0)                                               # (H, d, N)
    q_global = q.mean(dim=0, keepdim=True).permute(1, 0, 2)                # (H, 1, d)
    p = torch.softmax(_mm(q_global, k.permute(1, 2, 0)) * d ** -0.5, dim=-1)  # (H, 1, N)
    den = _mm(_mm(p, k.permute(1, 0, 2)), q_t)                             # (H, 1, N)
    vk = _mm(v.permute(1, 2, 0) * p, k.permute(1, 0, 2))                   # sum_j p_j v_j kappa(k_j)^T, (H, dv, d)
    return _saturating_cast(_mm(vk, q_t) / (den + eps), dtype)


def feature_linear_attention_one_image(q: Tensor, k: Tensor, v: Tensor, eps: float = HEDGEHOG_EPS) -> Tensor:
    """``feature_linear_attention``, one image (above), on features already computed as (H, N, features) --
    a learnable map's products take q, k in the (N, H, d) layout as a permute, which ONNX Runtime folds --
    and v as (N, H, dv): O^T = (V^T phi(K)) phi(Q)^T / (k_sum phi(Q)^T + eps) per head, as (H, dv, N)."""
    dtype = v.dtype
    q, k, v = _wide(q), _wide(k), _wide(v)
    q_t = q.transpose(-2, -1)                                              # (H, features, N)
    vk = _mm(v.permute(1, 2, 0), k)                                        # (H, dv, features)
    k_sum = k.sum(dim=1, keepdim=True)                                     # (H, 1, features)
    return _saturating_cast(_mm(vk, q_t) / (_mm(k_sum, q_t) + eps), dtype)


def hedgehog_features(x: Tensor, weight: Tensor) -> Tensor:
    """Hedgehog's feature map (ICLR 2024), per head: phi(x) = [softmax(x W), softmax(-x W)] over the feature
    axis, in at least fp32. x (B, H, N, d) or one image's (H, N, d), weight (H, d, m) -> (B, H, N, 2m) or
    (H, N, 2m). Every feature is positive and each half sums to 1: phi keeps softmax's spiky, monotonic shape
    (a large q.k stays large)."""
    z = _mm(_wide(x), _wide(weight))
    return torch.cat([torch.softmax(z, dim=-1), torch.softmax(-z, dim=-1)], dim=-1)


def feature_linear_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Optional[Tensor] = None,
                             eps: float = HEDGEHOG_EPS) -> Tensor:
    """Normalised linear attention on features already computed (non-negative, e.g. ``hedgehog_features``):
    O_i = q_i (sum_j k_j^T v_j) / (q_i . sum_j k_j + eps) -- a weighted mean of v, so it cannot overflow.
    The core of a kind whose feature map is a learnable module (MixAttention applies the map first)."""
    dtype = v.dtype
    q, k, v = _wide(q), _wide(k), _wide(v)
    w = _key_weights(key_mask, k)
    if w is not None:
        k = k * w
    kv = _mm(k.transpose(-2, -1), v)                        # (B, H, features, dv)
    k_sum = k.sum(dim=-2, keepdim=True).transpose(-2, -1)   # (B, H, features, 1)
    return _saturating_cast(_mm(q, kv) / (_mm(q, k_sum) + eps), dtype)


def hedgehog_attention(q: Tensor, k: Tensor, v: Tensor, weight_q: Tensor, weight_k: Tensor,
                       key_mask: Optional[Tensor] = None) -> Tensor:
    """Linear attention with Hedgehog's learnable feature maps (one (d, m) map per head for q, one for k):
    O_i = phi_q(q_i) (sum_j phi_k(k_j)^T v_j) / (phi_q(q_i) . sum_j phi_k(k_j) + eps)."""
    features_q, features_k = hedgehog_features(q, weight_q), hedgehog_features(k, weight_k)
    return feature_linear_attention(features_q, features_k, v, key_mask)


def _tracing() -> bool:
    """True while torch.jit / torch.compile / torch.export trace the code (no data-dependent checks then)."""
    compiler = getattr(torch, "compiler", None)
    return torch.jit.is_tracing() or bool(compiler and (compiler.is_compiling() or
                                                          getattr(compiler, "is_exporting", lambda: False)()))


def masked_by_regions(core: Callable[..., Tensor], q: Tensor, k: Tensor, v: Tensor,
                      regions: Tensor, count: int, **kwargs) -> Tensor:
    """Run a linear core once per region and keep each token's own region's result.

    regions: (W, N) region numbers 0 .. count - 1 (W divides B, e.g. Swin's windows per image); tokens
    attend only to tokens of the same number -- the semantics of Swin's shifted-window mask. ``count`` is a
    Python int, so the loop is static: exporters (torch.export, ONNX, ExecuTorch) see a fixed graph, where a
    loop over the labels present would be data dependent. A region absent from a window gives no keys and
    contributes nothing there (every core stays finite on an empty key set).
    """
    if not _tracing() and regions.numel() and int(regions.max()) >= count:
        raise ValueError(f"regions numbered up to {int(regions.max())}, but count is {count}")
    out = None
    for member in region_members(regions, count, q.shape[0], q.dtype):
        region_out = core(q, k, v, key_mask=member, **kwargs) * member.unsqueeze(-1)
        out = region_out if out is None else out + region_out
    return out


def region_members(regions: Tensor, count: int, batch: int, dtype: torch.dtype) -> List[Tensor]:
    """(batch, 1, N) 0/1 key masks of region numbers 0 .. count - 1, from (W, N) ``regions`` (W divides batch:
    the windows of each image). MixAttention's scriptable region loop uses it too."""
    w, n = regions.shape[0], regions.shape[1]
    return [(regions == number).to(dtype).view(1, w, 1, n).expand(batch // w, w, 1, n).reshape(batch, 1, n)
            for number in range(count)]
