"""Conversion of pretrained timm DeiT / Swin models to mixed softmax / linear attention."""
from ..models.attention_layers import attention_kinds, attention_layers, family
from .core import calibration_batches, convert
from .select import STRATEGIES, parse_select

__all__ = ["convert", "attention_kinds", "attention_layers", "family", "calibration_batches", "STRATEGIES",
           "parse_select"]
