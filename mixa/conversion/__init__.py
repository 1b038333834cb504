"""Conversion of pretrained timm DeiT / Swin models to mixed softmax / linear attention."""
from .core import build_from_config, calibration_batches, convert, model_config
from .layers import attention_kinds, attention_layers, family
from .select import STRATEGIES, parse_select

__all__ = ["convert", "attention_kinds", "attention_layers", "family", "model_config", "build_from_config",
           "calibration_batches", "STRATEGIES", "parse_select"]
