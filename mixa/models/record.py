"""How to rebuild a timm model, read from the model itself.

A timm model remembers its registered architecture (``pretrained_cfg["architecture"]``) but not the
keyword arguments it was built with (``img_size=64, depth=4, ...``). ``rebuild_record(model)`` reads the
constructor settings that shape a model from its modules, keeps those that differ from what the
architecture builds by default, and verifies the result: the model rebuilt from the record (on the meta
device, no memory, no weights) must have exactly the same state-dict names and shapes. So a model from
``timm.create_model(...)``, from ``mixa.models.create_model(...)`` or from a loaded checkpoint records the
same way, and a model that cannot be rebuilt is refused with what differs.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import timm
import torch
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ..errors import UsageError
from .attention_layers import attention_layers, layer_kind
from .ravlt import RAVLT

Settings = Dict[str, Any]


def _plain(value: Any) -> Any:
    """JSON-friendly and comparable: tuples -> lists, a square pair -> its side."""
    if isinstance(value, (tuple, list)):
        items = [_plain(v) for v in value]
        return items[0] if len(items) == 2 and items[0] == items[1] else items
    return value


# The data settings of a pretrained_cfg: how images must be prepared for the model (mixa.data reads them).
# input_size is not among them: mixa.models.create_model derives it from the model's real image size.
DATA_KEYS = ("interpolation", "mean", "std", "crop_pct", "crop_mode")


def _json(value: Any) -> Any:
    return [_json(v) for v in value] if isinstance(value, (tuple, list)) else value


def data_overlay(model: nn.Module, default: nn.Module) -> Dict[str, Any]:
    """The pretrained_cfg data settings in which ``model`` differs from its architecture's default."""
    mine, theirs = dict(model.pretrained_cfg), dict(default.pretrained_cfg)
    return {k: _json(mine[k]) for k in DATA_KEYS if k in mine and _json(mine[k]) != _json(theirs.get(k))}


def _drop_path_rate(blocks) -> float:
    """timm spaces stochastic depth linearly up to drop_path_rate at the last block."""
    last = blocks[-1]
    drop = getattr(last, "drop_path1", None) or getattr(last, "drop_path", None)
    return round(float(getattr(drop, "drop_prob", 0.0) or 0.0), 6)


def _vit_settings(model: nn.Module) -> Settings:
    block = model.blocks[0]
    attn = block.attn
    return {
        "img_size": _plain(model.patch_embed.img_size),
        "patch_size": _plain(model.patch_embed.patch_size),
        "in_chans": model.patch_embed.proj.in_channels,
        "num_classes": model.num_classes,
        "global_pool": model.global_pool,
        "embed_dim": model.embed_dim,
        "depth": len(model.blocks),
        "num_heads": attn.num_heads,
        "mlp_ratio": block.mlp.fc1.out_features / model.embed_dim,
        "qkv_bias": attn.qkv.bias is not None,
        "class_token": bool(model.has_class_token),
        "reg_tokens": int(getattr(model, "num_reg_tokens", 0)),
        "no_embed_class": bool(model.no_embed_class),
        "dynamic_img_size": bool(getattr(model, "dynamic_img_size", False)),
        "drop_path_rate": _drop_path_rate(model.blocks),
    }


def _swin_settings(model: nn.Module) -> Settings:
    blocks = [block for stage in model.layers for block in stage.blocks]
    first = model.layers[0].blocks[0]
    return {
        "img_size": _plain(model.patch_embed.img_size),
        "patch_size": _plain(model.patch_embed.patch_size),
        "in_chans": model.in_chans,
        "num_classes": model.num_classes,
        "global_pool": model.global_pool,
        "embed_dim": model.layers[0].dim,
        "depths": [len(stage.blocks) for stage in model.layers],
        "num_heads": [stage.blocks[0].attn.num_heads for stage in model.layers],
        "window_size": _plain(first.window_size),
        "mlp_ratio": first.mlp.fc1.out_features / model.layers[0].dim,
        "qkv_bias": first.attn.qkv.bias is not None,
        "drop_path_rate": _drop_path_rate(blocks),
    }


def _ravlt_settings(model: nn.Module) -> Settings:
    return {
        "in_chans": model.patch_embed.proj[0].in_channels,
        "num_classes": model.num_classes,
        "global_pool": model.global_pool,
        "embed_dims": list(model.embed_dims),
        "depths": [len(stage.blocks) for stage in model.layers],
        "num_heads": [stage.blocks[0].attn.num_heads for stage in model.layers],
        "head_dim": model.head_hidden_size,
    }


READERS: Dict[type, Callable[[nn.Module], Settings]] = {
    VisionTransformer: _vit_settings, SwinTransformer: _swin_settings, RAVLT: _ravlt_settings}


def _reader_for(model: nn.Module) -> Optional[Callable[[nn.Module], Settings]]:
    for cls, reader in READERS.items():
        if isinstance(model, cls):
            return reader
    return None


def architecture(model: nn.Module) -> str:
    """The timm registry name the model was built from (a UsageError if timm did not build it)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    arch = cfg.get("architecture") if isinstance(cfg, dict) else getattr(cfg, "architecture", None)
    if not arch or not timm.is_model(arch):
        raise UsageError(f"cannot record how to rebuild this {type(model).__name__}: it was not built by "
                         f"timm.create_model (no registered architecture in its pretrained_cfg)")
    return arch


def build_on_meta(arch: str, kwargs: Dict[str, Any]) -> nn.Module:
    """The model's module tree without memory or initialisation cost (shapes only)."""
    with torch.device("meta"):
        return timm.create_model(arch, pretrained=False, **kwargs)


def shapes(model: nn.Module) -> Dict[str, Tuple[int, ...]]:
    """State-dict name -> shape (the comparison that says whether a rebuilt model fits the weights)."""
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def shape_differences(want: Dict[str, Tuple[int, ...]], got: Dict[str, Tuple[int, ...]]) -> List[str]:
    """The names whose shapes differ (or that only one side has), sorted."""
    return sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))


def describe_differences(differ: List[str], want, got) -> str:
    return ", ".join(f"{k} {want.get(k)} vs {got.get(k)}" for k in differ[:3])


def _replaced_prefixes(model: nn.Module) -> Tuple[str, ...]:
    """State-dict prefixes of the attention layers mixa replaced (rebuilt from their own layer records)."""
    try:
        return tuple(path + "." for path, m in attention_layers(model) if layer_kind(m) != "softmax")
    except UsageError:  # a family without replaceable layers (e.g. ravlt_*)
        return ()


def rebuild_record(model: nn.Module) -> Tuple[str, Dict[str, Any]]:
    """(architecture, kwargs) such that ``timm.create_model(architecture, **kwargs)`` rebuilds ``model``'s
    module tree (softmax layers as they were before any mixa conversion) and its data settings."""
    arch = architecture(model)
    reader = _reader_for(model)
    default = build_on_meta(arch, {})
    kwargs: Dict[str, Any] = {}
    if reader is not None:
        if _reader_for(default) is not reader:
            raise UsageError(f"cannot record {type(model).__name__}: architecture {arch} builds "
                             f"{type(default).__name__}")
        mine, theirs = reader(model), reader(default)
        kwargs = {k: v for k, v in mine.items() if v != theirs.get(k)}
    overlay = data_overlay(model, default)
    if overlay:
        kwargs["pretrained_cfg_overlay"] = overlay
    rebuilt = build_on_meta(arch, kwargs) if kwargs else default
    replaced = _replaced_prefixes(model)
    want = {k: v for k, v in shapes(model).items() if not k.startswith(replaced)}
    got = {k: v for k, v in shapes(rebuilt).items() if not k.startswith(replaced)}
    differ = shape_differences(want, got)
    if differ:
        known = "no settings reader for this class" if reader is None else f"settings read: {kwargs}"
        raise UsageError(f"cannot record how to rebuild this {type(model).__name__} ({arch}; {known}): "
                         f"the rebuilt model differs at {len(differ)} weight(s), e.g. "
                         + describe_differences(differ, want, got))
    return arch, kwargs
