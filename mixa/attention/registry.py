"""The one registry of attention kinds: name -> functional core, cost model and module defaults."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List

from . import functional as AF


@dataclass(frozen=True)
class AttentionKind:
    """A registered attention kind.

    core: functional core on (B, heads, N, d) raw projections.
    linear: True when the core is O(N d^2) (never forms N x N).
    core_macs: multiply-accumulates of the core for one sample, ``f(num_heads, n, head_dim)``; the
        projections, gate and LePE around it are ordinary layers and are counted as such.
    module_defaults: options ``MixAttention`` uses unless told otherwise (e.g. RALA's gate and LePE).
    """
    name: str
    core: Callable
    linear: bool
    core_macs: Callable[[int, int, int], int]
    description: str
    module_defaults: Dict[str, object] = field(default_factory=dict)


_KINDS: Dict[str, AttentionKind] = {}


def register_attention(kind: AttentionKind) -> AttentionKind:
    if kind.name in _KINDS:
        raise ValueError(f"attention kind {kind.name!r} is already registered")
    _KINDS[kind.name] = kind
    return kind


def get_attention_kind(name: str) -> AttentionKind:
    try:
        return _KINDS[name]
    except KeyError:
        raise ValueError(f"unknown attention kind {name!r}; choose from {', '.join(_KINDS)}") from None


def list_attention_kinds(linear_only: bool = False) -> List[str]:
    return [name for name, kind in _KINDS.items() if kind.linear or not linear_only]


def list_keep_kinds() -> List[str]:
    """The quadratic kinds a kept layer may use (softmax, the original, first)."""
    return [name for name, kind in _KINDS.items() if not kind.linear]


register_attention(AttentionKind(
    name="softmax",
    core=AF.softmax_attention,
    linear=False,
    # q k^T and attn @ v
    core_macs=lambda h, n, d: 2 * h * n * n * d,
    description="quadratic softmax attention (the pretrained original)",
))
register_attention(AttentionKind(
    name="relu-quadratic",
    core=AF.relu_quadratic_attention,
    linear=False,
    # ReLU(Q) ReLU(K)^T and scores @ V
    core_macs=lambda h, n, d: 2 * h * n * n * d,
    description="ReLU-based quadratic attention with fixed 1/(N sqrt d) normalisation (MixA's kept layers)",
))
register_attention(AttentionKind(
    name="relu",
    core=AF.relu_linear_attention,
    linear=True,
    # k^T v and q (k^T v): 2 N d^2; denominator q . sum_j k_j: N d
    core_macs=lambda h, n, d: h * (2 * n * d * d + n * d),
    description="ReLU linear attention (EfficientViT style, data-dependent denominator)",
))
register_attention(AttentionKind(
    name="stella",
    core=AF.stella_attention,
    linear=True,
    core_macs=lambda h, n, d: h * 2 * n * d * d,
    description="SteLLA: ReLU linear attention with fixed 1/(N sqrt d) normalisation (MixA)",
))
register_attention(AttentionKind(
    name="rala",
    core=AF.rala_attention,
    linear=True,
    # logits q_g . k_j (N d), k'^T v and q KV (2 N d^2), mean_j k'_j = p K (N d), denominator q . mean k'
    # (N d); q_g = mean_i q_i is a reduction (N d additions, no products: not counted, as for the softmax
    # kinds' normalisers)
    core_macs=lambda h, n, d: h * (2 * n * d * d + 3 * n * d),
    description="rank-augmented linear attention (RALA, CVPR 2025) with output gate and LePE",
    module_defaults={"gate": "identity", "lepe": True},
))
register_attention(AttentionKind(
    name="hedgehog",
    core=AF.feature_linear_attention,  # on the features MixAttention.feature_map computes
    linear=True,
    # feature maps q W, k W (2 N d^2), phi(k)^T v and phi(q) KV with 2d features (4 N d^2), denominator (2 N d)
    core_macs=lambda h, n, d: h * (6 * n * d * d + 2 * n * d),
    description="linear attention with learnable Hedgehog feature maps (ICLR 2024), built to be transferred",
    module_defaults={"feature_map": "hedgehog"},
))
