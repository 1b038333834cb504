"""ImageFolder datasets (one folder per class) that skip unreadable images instead of failing."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional

import torch
from torch.utils.data import DataLoader, default_collate
from torchvision.datasets import ImageFolder

from ..errors import MixaError


def resolve_split(root: os.PathLike | str, split: str = "val") -> Path:
    """``root/split`` when it exists (ImageNet layout), else ``root`` itself (a plain ImageFolder)."""
    root = Path(root)
    if not root.is_dir():
        raise MixaError(f"data directory not found: {root}")
    return root / split if (root / split).is_dir() else root


class SafeImageFolder(ImageFolder):
    """An ImageFolder whose unreadable samples come back as None (dropped by the collate function).

    The number skipped is ``len(dataset) - images seen``; consumers report it.
    """

    def __init__(self, root: os.PathLike | str, transform: Optional[Callable] = None):
        try:
            super().__init__(str(root), transform=transform)
        except (FileNotFoundError, RuntimeError) as err:
            raise MixaError(f"no usable ImageFolder at {root}: {str(err).splitlines()[0]}") from None
        if len(self) == 0:
            raise MixaError(f"no images found in {root}")

    def __getitem__(self, index):
        try:
            return super().__getitem__(index)
        except (OSError, ValueError, SyntaxError):  # PIL's errors for truncated or non-image files
            return None


def collate_skipping_unreadable(batch):
    """default_collate over the readable samples; None when a whole batch was unreadable."""
    batch = [sample for sample in batch if sample is not None]
    return default_collate(batch) if batch else None


def data_config(model, input_size=None) -> dict:
    """timm's data config for ``model`` (size, crop, interpolation, mean/std). The input size follows the
    model's real one (a ViT built or resized with another img_size), or ``input_size`` when given."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config(model=model)
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if input_size is not None:
        cfg["input_size"] = tuple(input_size)
    elif img_size is not None:
        cfg["input_size"] = (cfg["input_size"][0], *tuple(img_size))
    return cfg


def eval_transform(model, input_size=None) -> Callable:
    """timm's eval transform for ``data_config(model, input_size)``."""
    from timm.data import create_transform

    return create_transform(**data_config(model, input_size), is_training=False)


def eval_loader(root: os.PathLike | str, model, batch_size: int = 32, workers: int = 0,
                split: str = "val", shuffle: bool = False, seed: int = 0) -> DataLoader:
    """A loader of (images, labels) over ``root/split`` (or ``root``) with the model's eval transform."""
    dataset = SafeImageFolder(resolve_split(root, split), transform=eval_transform(model))
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                      collate_fn=collate_skipping_unreadable, generator=generator)
