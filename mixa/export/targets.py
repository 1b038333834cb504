"""What `mixa export` and `mixa profile` run: a saved mixa model directory or a timm name, at a resolution."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Optional, Tuple

from torch import nn

from ..errors import UsageError
from ..saved import load_target


def load_model(target: str, **source) -> Tuple[str, nn.Module]:
    """(label, model in eval mode) for a saved mixa model directory or a timm name / alias; ``source`` are
    ``mixa.models.load_target``'s weight-source options."""
    return (Path(target).name or target), load_target(target, **source)


def trained_size(model: nn.Module) -> int:
    """The square input resolution the model was built for."""
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if size is None:
        size = getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224))[1:]
    return int(size[0])


def at_resolution(model: nn.Module, resolution: Optional[int]) -> nn.Module:
    """``model`` for square inputs of ``resolution`` px: the model itself when that is its size, else a copy
    resized the way timm does it (``set_input_size``): ViT/DeiT resample the absolute position embedding
    (timm's ``resample_abs_pos_embed``), Swin scales each stage's window with the patch grid and
    interpolates the relative-position-bias tables of its softmax layers."""
    if resolution is None or resolution == trained_size(model):
        return model
    if resolution <= 0:
        raise UsageError(f"input size must be positive; got {resolution}")
    if not hasattr(model, "set_input_size"):
        raise UsageError(f"{type(model).__name__} cannot change its input size (it has no set_input_size); "
                         f"use its trained size {trained_size(model)}")
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", (1, 1))[0]
    stride = patch * 2 ** max(len(getattr(model, "layers", [])) - 1, 0) if hasattr(model, "layers") else patch
    if resolution % stride:
        raise UsageError(f"input size {resolution} is not a multiple of {stride} ({type(model).__name__}'s "
                         f"total stride); try {resolution - resolution % stride or stride}")
    resized = copy.deepcopy(model)
    try:
        resized.set_input_size(img_size=(resolution, resolution))
    except Exception as err:
        raise UsageError(f"cannot resize {type(model).__name__} to {resolution} px: "
                         f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    return resized.eval()
