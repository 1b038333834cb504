"""Image folders (one folder per class, or a flat folder of unlabeled images) and their loaders.

An unreadable file (one PIL cannot open or decode) is passed over: its item is the next readable image,
with ``skipped`` > 0 saying how many files were passed over. Training batches keep their size (Mixup
needs even batches) and the order stays a function of the index alone. Evaluation drops the stand-ins
(``collate_readable``; a stand-in is also seen at its own index). Errors of the transform (augmentation) are bugs, not bad
files: they propagate.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable, Optional, Union

import torch
from torch.utils.data import DataLoader, default_collate
from timm.data import create_transform, resolve_data_config
from torchvision.datasets import ImageFolder

from ..errors import MixaError, UsageError

# What PIL raises for a file that is not an image, truncated or corrupt (UnidentifiedImageError is an
# OSError; some decoders signal a corrupt stream with SyntaxError).
UNREADABLE = (OSError, SyntaxError)


def resolve_split(root: os.PathLike | str, split: str = "val") -> Path:
    """``root/split`` when it exists (ImageNet layout), else ``root`` itself (a plain ImageFolder)."""
    root = Path(root)
    if not root.is_dir():
        raise MixaError(f"data directory not found: {root}")
    return root / split if (root / split).is_dir() else root


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, which torch's DataLoader checks too)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def resolve_workers(workers: Union[int, str, None]) -> int:
    """Data-loader processes: an explicit count, or ``"auto"``/None = min(4, available cores) (so torch's
    "exceeds the suggested number of workers" warning never fires for the default)."""
    if workers is None or workers == "auto":
        return min(4, available_cores())
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise UsageError(f"workers must be 'auto' or an integer >= 0, got {workers!r}")
    return workers


class SafeImageFolder(ImageFolder):
    """torchvision's ImageFolder with items ``(image, label, skipped)`` (see the module docstring).

    ``labeled=False`` also accepts a flat folder of images (``classes`` is then empty, labels are -1).
    """

    def __init__(self, root: os.PathLike | str, transform: Optional[Callable] = None, labeled: bool = True):
        self.labeled = labeled
        self.flat = False
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                super().__init__(str(root), transform=transform)
        except (FileNotFoundError, RuntimeError) as err:
            if self.flat:
                raise MixaError(f"no images found in {root}") from None
            raise MixaError(f"no usable ImageFolder at {root}: {str(err).splitlines()[0]}") from None
        if self.flat:
            self.classes, self.class_to_idx = [], {}
        if len(self) == 0:
            raise MixaError(f"no images found in {root}")

    def find_classes(self, directory):
        if not self.labeled and not any(entry.is_dir() for entry in os.scandir(directory)):
            self.flat = True
            return [""], {"": -1}  # make_dataset then lists the images of the directory itself
        return super().find_classes(directory)

    def __getitem__(self, index: int):
        n = len(self.samples)
        for skipped in range(n):
            path, target = self.samples[(index + skipped) % n]
            try:
                image = self.loader(path)
            except UNREADABLE:
                continue
            if self.transform is not None:
                image = self.transform(image)
            return image, target, skipped
        raise MixaError(f"no readable image in {self.root}")


def collate_readable(samples):
    """For evaluation: default_collate of the readable samples (stand-ins dropped) as (images, labels,
    number of unreadable files); None when the whole batch was unreadable."""
    readable = [(image, label) for image, label, skipped in samples if skipped == 0]
    if not readable:
        return None
    images, labels = default_collate(readable)
    return images, labels, len(samples) - len(readable)


def data_config(model, input_size=None) -> dict:
    """timm's data config for ``model`` (size, crop, interpolation, mean/std). The input size follows the
    model's real one (a ViT built or resized with another img_size), or ``input_size`` when given."""
    cfg = resolve_data_config(model=model)
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if input_size is not None:
        cfg["input_size"] = tuple(input_size)
    elif img_size is not None:
        cfg["input_size"] = (cfg["input_size"][0], *tuple(img_size))
    return cfg


def eval_transform(model, input_size=None) -> Callable:
    """timm's eval transform for ``data_config(model, input_size)``."""
    return create_transform(**data_config(model, input_size), is_training=False)


def eval_loader(root: os.PathLike | str, model, batch_size: int = 32, workers: Union[int, str, None] = 0,
                split: str = "val", shuffle: bool = False, seed: int = 0, input_size=None,
                labeled: bool = True) -> DataLoader:
    """Batches (images, labels, unreadable count), or None for a batch of unreadable files only, over
    ``root/split`` (or ``root``) with the model's eval transform (at ``input_size`` when given)."""
    dataset = SafeImageFolder(resolve_split(root, split), transform=eval_transform(model, input_size),
                              labeled=labeled)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=resolve_workers(workers),
                      generator=generator, collate_fn=collate_readable)

