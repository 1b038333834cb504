"""mixa.convert: keep softmax in k layers of a pretrained timm DeiT/Swin, linear attention elsewhere."""
from __future__ import annotations

import copy
import importlib
import os
from typing import Any, Dict, Iterable, List, Optional, Union

import torch
from torch import nn

from ..attention import MixAttention, get_attention_kind, list_attention_kinds, list_keep_kinds
from ..data import eval_loader
from ..errors import UsageError
from ..models import create_model
from ..models.attention_layers import attention_layers, family, layer_kind, linear_layer_for, set_layer
from ..models.record import rebuild_record
from ..saved import LAYER_OPTIONS, original_of
from . import select as S

ModelOrName = Union[str, nn.Module]
CalibData = Union[None, str, os.PathLike, torch.Tensor, Iterable]

def _resized(model: nn.Module, patch_size: Optional[int], window_size: Optional[int]) -> nn.Module:
    """The same model rebuilt with another patch size (ViT) or window size (Swin), weights resampled
    with timm's own checkpoint adapter (patch-embedding kernel + absolute position embedding, or
    relative-position-bias tables; windows and masks are rebuilt by the model itself)."""
    fam = family(model)
    if patch_size is not None and fam != "vit":
        raise UsageError("--patch-size applies to ViT/DeiT models; use --window-size for Swin")
    if window_size is not None and fam != "swin":
        raise UsageError("--window-size applies to Swin models; use --patch-size for ViT/DeiT")
    arch, kwargs = rebuild_record(model)
    resize = {"patch_size": patch_size} if patch_size is not None else {"window_size": window_size}
    target = create_model(arch, pretrained=False, **{**kwargs, **resize})
    adapt = importlib.import_module(type(model).__module__).checkpoint_filter_fn
    try:
        target.load_state_dict(adapt(model.state_dict(), target), strict=True)
    except (RuntimeError, AssertionError) as err:
        raise UsageError(f"cannot resize {arch} to {resize}: {str(err).splitlines()[0]}") from None
    return target.eval()


def calibration_batches(calib: CalibData, model: nn.Module, images: Optional[int] = None,
                        batch_size: int = 32) -> List[torch.Tensor]:
    """At most ``images`` calibration images as a list of batches: from an ImageFolder dir (the model's eval
    transform, a fixed shuffled order), a tensor (one batch), or any iterable of tensors / (images, labels)."""
    if isinstance(calib, (str, os.PathLike)):
        calib = eval_loader(calib, model, batch_size=batch_size, shuffle=True)
    elif isinstance(calib, torch.Tensor):
        calib = [calib]
    batches, seen = [], 0
    for batch in calib:
        if batch is None:  # a batch of unreadable images
            continue
        batch = batch[0] if isinstance(batch, (tuple, list)) else batch
        if images is not None:
            batch = batch[:images - seen]
        batches.append(batch)
        seen += len(batch)
        if images is not None and seen >= images:
            break
    if not batches:
        raise UsageError("calibration data yielded no images")
    return batches


def convert(model_or_name: ModelOrName, keep: Optional[int] = None, attn: str = "rala",
            select: S.Select = None, calib: CalibData = None, calib_images: Optional[int] = 256,
            patch_size: Optional[int] = None, window_size: Optional[int] = None,
            checkpoint: Optional[str] = None, pretrained: bool = True, num_classes: Optional[int] = None,
            attn_options: Optional[Dict[str, Any]] = None, keep_kind: str = "softmax", progress: bool = True,
            **timm_kwargs) -> nn.Module:
    """Keep softmax attention in ``keep`` layers and replace every other one with ``attn``.

    model_or_name: a timm name or alias (deit_s, swin_t, ...) built with pretrained weights, a local
        ``checkpoint`` or random init (``pretrained=False``); or a timm model (left untouched: the result
        is a converted copy; its weights' origin is recorded when mixa built or loaded it, else unknown).
    keep: layers that keep softmax, 0..depth (default 6, or len(select) when select is a list).
    select: 'first' | 'last' | 'uniform' | 'sensitivity' | 'transfer' | list of indices. Default: 'sensitivity' when
        ``calib`` is given, else 'uniform'.
    calib: calibration images (ImageFolder dir, tensor, or iterable of batches), at most ``calib_images``.
    attn_options: options of the linear layers: gate ('linear' | 'lowrank' | 'identity' | 'none', see
        mixa.layers.gates), gate_rank, lepe (bool), lepe_kernel (odd int).
    keep_kind: what the kept layers compute: 'softmax' (the pretrained layers as they are) or
        'relu-quadratic' (MixA's ReLU-based quadratic form, same q/k/v/proj weights; needs fine-tuning).
    The result is the same timm model class (forward, pretrained_cfg unchanged) with MixAttention layers
    whose q/k/v/proj weights are the pretrained ones; ``model.mixa_config`` records the selection.
    """
    spec = get_attention_kind(attn) if attn in list_attention_kinds() else None
    if spec is None or not spec.linear:
        raise UsageError(f"--attn must be a linear kind: {', '.join(list_attention_kinds(linear_only=True))}; "
                         f"got {attn!r}")
    options = dict(attn_options or {})
    unknown = set(options) - set(LAYER_OPTIONS)
    if unknown:
        raise UsageError(f"unknown attention option(s) {sorted(unknown)}; known: {', '.join(LAYER_OPTIONS)}")
    if keep_kind not in list_keep_kinds():
        raise UsageError(f"--keep-kind must be one of {', '.join(list_keep_kinds())}; got {keep_kind!r}")

    if isinstance(model_or_name, nn.Module):
        if checkpoint is not None or num_classes is not None or timm_kwargs:
            raise UsageError("checkpoint / num_classes / timm kwargs apply only when converting by name")
        model = copy.deepcopy(model_or_name).eval()
    else:
        model = create_model(model_or_name, pretrained=pretrained, checkpoint=checkpoint,
                             num_classes=num_classes, **timm_kwargs)
    family(model)
    converted_from = original_of(model)
    if patch_size is not None or window_size is not None:
        model = _resized(model, patch_size, window_size)

    layers = attention_layers(model)
    depth = len(layers)
    already = [i for i, (_, m) in enumerate(layers) if layer_kind(m) != "softmax"]
    if already:
        raise UsageError(f"the model is already converted (layers {already} are linear); convert the original")

    if isinstance(select, (list, tuple)):
        kept = S.validate_indices(select, depth)
        if keep is not None and keep != len(kept):
            raise UsageError(f"--keep {keep} does not match the {len(kept)} layers given in --select")
        keep, strategy = len(kept), "indices"
    else:
        keep = 6 if keep is None else keep
        if not 0 <= keep <= depth:
            raise UsageError(f"--keep must be in [0, {depth}] for this model ({depth} attention layers); got {keep}")
        strategy = select or ("sensitivity" if calib is not None else "uniform")
    if strategy in S.SCORED and calib is None:
        raise UsageError(f"--select {strategy} needs calibration data (--calib-data DIR); "
                         "or choose first, last, uniform or explicit indices")

    def replacement(original: nn.Module) -> MixAttention:
        return linear_layer_for(model, original, attn, options)

    scores = None
    batches = calibration_batches(calib, model, calib_images) if calib is not None else None
    if strategy in S.SCORED:
        if 0 < keep < depth:
            scores = S.SCORED[strategy](model, layers, batches, replacement, set_layer, progress=progress)
            kept = S.top_k(scores, keep)
        else:
            kept = list(range(keep))
    elif strategy != "indices":
        kept = S.fixed_selection(strategy, keep, depth)

    for index, (path, original) in enumerate(layers):
        if index not in kept:
            set_layer(model, path, replacement(original))
        elif keep_kind != "softmax":
            set_layer(model, path, linear_layer_for(model, original, keep_kind, {}))

    model.mixa_original = converted_from
    model.mixa_config = {
        "keep": keep, "attn": attn, "attn_options": options, "keep_kind": keep_kind, "patch_size": patch_size,
        "window_size": window_size,
        "selection": {"strategy": strategy, "kept": kept, "scores": scores,
                      "calib": None if calib is None else {
                          "source": str(calib) if isinstance(calib, (str, os.PathLike)) else type(calib).__name__,
                          "batches": len(batches), "images": sum(len(b) for b in batches)}},
    }
    return model.eval()
