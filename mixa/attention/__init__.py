"""Attention kinds: functional cores (``mixa.attention.functional``), their registry, and MixAttention."""
from . import functional
from .modules import MixAttention, regions_from_window_mask
from .registry import AttentionKind, get_attention_kind, list_attention_kinds, list_keep_kinds, register_attention

__all__ = ["functional", "MixAttention", "regions_from_window_mask", "AttentionKind",
           "get_attention_kind", "list_attention_kinds", "list_keep_kinds", "register_attention"]
