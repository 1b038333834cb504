"""The saved-model format: one directory, ``model.safetensors`` + ``config.json``.

This module is the format's only owner: its version, its typed config (``SavedConfig``, the analogue of
timm's ``PretrainedCfg``), writing (``save``), rebuilding (``build``, ``load``), the recorded original
(``build_original``: the teacher of ``mixa distill`` and the reference of ``mixa eval``) and the MODEL
argument of every command (``load_target``: a saved directory or a timm name).

The config rebuilds the exact module tree without network: the timm architecture and the constructor
settings read from the model itself (``mixa.models.record``), the kind and options of every attention
layer, and how the model was converted (kept layers, selection scores, calibration source). It also records
the *original*: what the model was converted from and where its weights came from.

Format 1 (mixa 0.1) is read too: it kept the rebuild recipe only in ``base`` plus patch/window overrides.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from . import __version__
from .errors import MixaError, UsageError
from .io import atomic_path, write_json
from .models import create_model
from .models.attention_layers import attention_layers, layer_kind, linear_layer_for, set_layer
from .models.record import build_on_meta, describe_differences, rebuild_record, shape_differences, shapes

PathLike = Union[str, os.PathLike]
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "mixa-model/2"
READABLE_FORMATS = ("mixa-model/1", FORMAT)
# What mixa.convert records on a model (``model.mixa_config``) and the config keeps, field for field.
CONVERSION_FIELDS = ("keep", "attn", "attn_options", "keep_kind", "patch_size", "window_size", "selection")
# Options of a replaced attention layer that rebuild it (MixAttention.options minus what the timm layer gives).
LAYER_OPTIONS = ("gate", "gate_rank", "lepe", "lepe_kernel")


@dataclass
class Original:
    """The model a saved model was converted from (or the model itself when it was not converted).

    ``pretrained``: timm's pretrained weights; ``checkpoint``: a local weights file; both unset with
    ``pretrained=False``: random initialisation; ``pretrained=None``: unknown (an in-memory module was
    converted, so only the caller knows where its weights came from).
    """
    model: str
    kwargs: Dict[str, Any] = field(default_factory=dict)
    checkpoint: Optional[str] = None
    pretrained: Optional[bool] = None

    def describe(self) -> str:
        if self.checkpoint:
            return f"weights from {self.checkpoint}"
        return {True: "timm pretrained weights", False: "random init", None: "weights of unknown origin"}[self.pretrained]


@dataclass
class SavedConfig:
    architecture: str                       # timm registry name of the saved model's module tree
    kwargs: Dict[str, Any]                  # its constructor settings (timm.create_model kwargs)
    original: Original                      # what it was converted from (the default teacher)
    layers: List[Dict[str, Any]] = field(default_factory=list)  # {"path", "kind"[, "options"]} per attention layer
    num_classes: Optional[int] = None
    keep: Optional[int] = None              # conversion: softmax layers kept (None: not converted)
    attn: Optional[str] = None              # conversion: the linear kind
    attn_options: Dict[str, Any] = field(default_factory=dict)
    keep_kind: str = "softmax"              # conversion: what the kept layers compute (softmax, relu-quadratic)
    patch_size: Optional[int] = None        # conversion: patch size the original was resampled to
    window_size: Optional[int] = None       # conversion: Swin window size the original was resized to
    selection: Optional[Dict[str, Any]] = None  # conversion: strategy, kept, scores, calib
    format: str = FORMAT
    mixa_version: str = __version__

    @property
    def converted(self) -> bool:
        return any(layer["kind"] != "softmax" for layer in self.layers)

    def to_dict(self) -> Dict[str, Any]:
        data = dataclasses.asdict(self)
        data["base"] = data.pop("original")  # the key format 1 used, kept for readers of config.json
        return {"format": data.pop("format"), "mixa_version": data.pop("mixa_version"), **data}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "SavedConfig":
        data = dict(data)
        original = Original(**data.pop("base"))
        if data.get("format") == "mixa-model/1":
            resize = {k: data[k] for k in ("patch_size", "window_size") if data.get(k) is not None}
            data.setdefault("architecture", original.model)
            data.setdefault("kwargs", {**original.kwargs, **resize})
            data["format"] = FORMAT
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(original=original, **{k: v for k, v in data.items() if k in names})


# --- reading -------------------------------------------------------------------------------------------

def is_model_dir(path: PathLike) -> bool:
    path = Path(path)
    return (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file()


def read_config(directory: PathLike) -> SavedConfig:
    """The config of a saved model directory, with clear errors for anything else."""
    directory = Path(directory)
    cfg_path = directory / CONFIG_NAME
    if not directory.is_dir():
        raise MixaError(f"{directory}: no such directory (expected a saved mixa model)")
    if not cfg_path.is_file() or not (directory / WEIGHTS_NAME).is_file():
        raise MixaError(f"{directory} is not a mixa model directory (needs {CONFIG_NAME} and {WEIGHTS_NAME})")
    try:
        data = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as err:
        raise MixaError(f"cannot read {cfg_path}: {err}") from None
    if not isinstance(data, dict) or data.get("format") not in READABLE_FORMATS:
        raise MixaError(f"{cfg_path} is not a mixa model config (format {FORMAT!r} expected)")
    try:
        return SavedConfig.from_dict(data)
    except (TypeError, KeyError) as err:
        raise MixaError(f"{cfg_path} is not a valid mixa model config: {err}") from None


def read_weights(directory: PathLike, device: str = "cpu") -> Dict[str, torch.Tensor]:
    path = Path(directory) / WEIGHTS_NAME
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError) as err:
        raise MixaError(f"cannot read {path}: {err}") from None


def build(cfg: SavedConfig, meta: bool = False) -> nn.Module:
    """The module tree a config describes, with fresh weights (``load`` fills them); on the meta device
    (shapes only: no memory, and no draw from the global RNG, so saving mid-training changes nothing)
    with ``meta=True``."""
    if meta:
        with torch.device("meta"):
            return _build(cfg, build_on_meta(cfg.architecture, dict(cfg.kwargs)))
    return _build(cfg, create_model(cfg.architecture, pretrained=False, **cfg.kwargs))


def _build(cfg: SavedConfig, model: nn.Module) -> nn.Module:
    if cfg.converted:
        layers = dict(attention_layers(model))
        if len(layers) != len(cfg.layers):
            raise MixaError(f"config lists {len(cfg.layers)} attention layers, {cfg.architecture} has {len(layers)}")
        for entry in cfg.layers:
            if entry["kind"] != "softmax":
                set_layer(model, entry["path"],
                          linear_layer_for(model, layers[entry["path"]], entry["kind"], entry.get("options", {})))
    _attach(model, cfg)
    return model.eval()


def _attach(model: nn.Module, cfg: SavedConfig) -> None:
    """What a rebuilt model must carry so that saving it again records the same original and conversion."""
    if cfg.converted:
        model.mixa_original = cfg.original
        model.mixa_config = {name: getattr(cfg, name) for name in CONVERSION_FIELDS}


def load(directory: PathLike, device: str = "cpu") -> nn.Module:
    """Rebuild a saved model exactly (architecture from config.json, weights from model.safetensors)."""
    cfg = read_config(directory)
    model = build(cfg)
    missing, unexpected = model.load_state_dict(read_weights(directory, device), strict=False)
    if missing or unexpected:
        raise MixaError(f"{directory}: weights do not match its config "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    if not cfg.converted:  # an unconverted model is its own original: these weights are the reference
        model.mixa_original = Original(cfg.architecture, cfg.kwargs,
                                       checkpoint=str(Path(directory, WEIGHTS_NAME).resolve()), pretrained=False)
    return model.to(device).eval()


def is_converted(model: nn.Module) -> bool:
    """Whether any attention layer of ``model`` is a replaced (non-softmax) one; families mixa does not
    convert (e.g. ravlt_*) are not converted models."""
    try:
        return any(layer_kind(m) != "softmax" for _, m in attention_layers(model))
    except UsageError:
        return False


def recorded_original(model: nn.Module) -> Union[Original, nn.Module]:
    """THE resolution of "the recorded original" (eval's reference, the default teacher of distill and
    transfer): a converted model's original as recorded (an ``Original``: ``build_original`` builds it);
    an unconverted model is its own original and is returned as is (callers that train it take a frozen
    copy). Whatever config a saved unconverted model carries (e.g. the random-init architecture its
    weights were trained from) is not its reference: its weights are."""
    return original_of(model) if is_converted(model) else model


def build_original(original: Original, checkpoint: Optional[str] = None) -> nn.Module:
    """A recorded original (the default teacher) with its recorded weights, or ``checkpoint``. Errors say
    what to pass when those weights can't be had."""
    if checkpoint is None and original.checkpoint is None and original.pretrained is None:
        raise MixaError(f"the original ({original.model}) has weights of unknown origin (the model was converted "
                        f"from an in-memory module); pass --teacher NAME|DIR or --teacher-checkpoint PATH")
    try:
        return create_model(original.model, pretrained=bool(original.pretrained) and checkpoint is None,
                            checkpoint=checkpoint or original.checkpoint, **original.kwargs)
    except MixaError as err:
        raise MixaError(f"the recorded original {original.model} cannot be built ({err}); "
                        f"pass --teacher NAME|DIR or --teacher-checkpoint PATH") from None


# --- writing -------------------------------------------------------------------------------------------

def original_of(model: nn.Module, record: Optional[Tuple[str, Dict[str, Any]]] = None) -> Original:
    """What ``model`` was converted from; for an unconverted model, the model itself (``record``: its
    rebuild record when the caller already has it)."""
    original = getattr(model, "mixa_original", None)
    if original is not None:
        return original
    arch, kwargs = record if record is not None else rebuild_record(model)
    source = getattr(model, "mixa_source", None) or {}
    return Original(arch, kwargs, checkpoint=source.get("checkpoint"), pretrained=source.get("pretrained"))


def config_of(model: nn.Module) -> SavedConfig:
    """The config that rebuilds ``model`` exactly; a UsageError naming what is missing if nothing can."""
    arch, kwargs = rebuild_record(model)
    try:
        layers = [{"path": path, "kind": layer_kind(m),
                   **({"options": {k: m.options.get(k) for k in LAYER_OPTIONS}} if layer_kind(m) != "softmax" else {})}
                  for path, m in attention_layers(model)]
    except UsageError:  # a family mixa does not convert (e.g. ravlt_*) is saved as it is
        layers = []
    conversion = getattr(model, "mixa_config", None) or {}
    recorded = {name: conversion[name] for name in CONVERSION_FIELDS if conversion.get(name) is not None}
    return SavedConfig(architecture=arch, kwargs=kwargs, original=original_of(model, record=(arch, kwargs)),
                       layers=layers, num_classes=getattr(model, "num_classes", None), **recorded)


def _check_rebuilds(model: nn.Module, cfg: SavedConfig) -> None:
    want, got = shapes(model), shapes(build(cfg, meta=True))
    differ = shape_differences(want, got)
    if differ:
        raise UsageError(f"cannot record how to rebuild this {type(model).__name__}: the rebuilt model differs at "
                         + describe_differences(differ, want, got))


def save(model: nn.Module, directory: PathLike) -> Path:
    """Write ``model`` (a converted or plain timm model) to ``directory``; both files atomically.

    The config is derived and verified before anything is written, so a model that can't be recorded
    leaves no directory behind. The weights are written first and the config last: a directory with a
    config is always complete.
    """
    cfg = config_of(model)
    _check_rebuilds(model, cfg)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT})
    write_json(directory / CONFIG_NAME, cfg.to_dict())
    return directory


# --- the MODEL argument of every command ----------------------------------------------------------------

def load_target(target: str, *, pretrained: bool = True, checkpoint: Optional[str] = None,
                num_classes: Optional[int] = None, **timm_kwargs) -> nn.Module:
    """What a command's MODEL names: a saved mixa model directory (``load``) or a timm name / alias
    (``mixa.models.create_model``), in eval mode. The weight-source options apply to names only."""
    path = Path(target)
    if is_model_dir(path):
        if checkpoint or num_classes or timm_kwargs:
            raise UsageError("--checkpoint/--num-classes/--model-arg apply to model names, not saved directories")
        return load(path)
    if path.exists() or os.sep in target or target.endswith((".onnx", ".pte", ".safetensors", ".pth")):
        raise MixaError(f"{target} is not a saved mixa model directory (needs {CONFIG_NAME} and {WEIGHTS_NAME})"
                        if path.exists() else f"{target}: no such file or directory")
    return create_model(target, pretrained=pretrained, checkpoint=checkpoint, num_classes=num_classes,
                        **timm_kwargs)

