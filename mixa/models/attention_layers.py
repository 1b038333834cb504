"""Finding, naming and swapping the attention layers of supported timm families."""
from __future__ import annotations

from typing import List, Tuple

from timm.models.swin_transformer import SwinTransformer, WindowAttention
from timm.models.vision_transformer import Attention, VisionTransformer
from torch import nn

from ..attention import MixAttention
from ..errors import UsageError

SUPPORTED = "timm VisionTransformer (ViT, DeiT, distilled DeiT) and SwinTransformer (v1)"


def family(model: nn.Module) -> str:
    """'vit' or 'swin'; a UsageError for anything mixa cannot convert."""
    if isinstance(model, VisionTransformer):
        return "vit"
    if isinstance(model, SwinTransformer):
        return "swin"
    raise UsageError(f"cannot convert {type(model).__name__}: mixa convert supports {SUPPORTED}")


def _is_attention(module: nn.Module) -> bool:
    return isinstance(module, (Attention, WindowAttention, MixAttention))


def attention_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """(path, module) of every attention layer, in forward order (timm defines blocks in that order)."""
    family(model)
    return [(name, m) for name, m in model.named_modules() if _is_attention(m)]


def layer_kind(module: nn.Module) -> str:
    return module.kind if isinstance(module, MixAttention) else "softmax"


def attention_kinds(model: nn.Module) -> List[str]:
    """The kind of every attention layer in forward order, e.g. ['softmax', 'rala', ...]."""
    return [layer_kind(m) for _, m in attention_layers(model)]


def num_prefix_tokens(model: nn.Module) -> int:
    """Class / distillation / register tokens before the patch grid (0 in Swin windows)."""
    return int(getattr(model, "num_prefix_tokens", 0)) if family(model) == "vit" else 0


def set_layer(model: nn.Module, path: str, module: nn.Module) -> nn.Module:
    """Put ``module`` at ``path`` and return what was there."""
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    old = getattr(parent, name)
    setattr(parent, name, module)
    return old


def linear_layer_for(model: nn.Module, original: nn.Module, kind: str, options: dict) -> MixAttention:
    """The MixAttention of ``kind`` (a linear kind, or relu-quadratic for a kept layer) that replaces
    ``original`` (a timm attention layer of ``model``)."""
    try:
        return MixAttention.from_timm(original, kind, num_prefix_tokens=num_prefix_tokens(model), **options)
    except ValueError as err:
        raise UsageError(str(err)) from None
