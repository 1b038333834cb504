"""ImageFolder loaders for distillation: timm transforms from the student's pretrained_cfg.

Unreadable images are replaced by the next readable one and counted (``skipped``), so batches keep
their size (Mixup needs even batches) and the order stays deterministic.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from torch.utils.data.distributed import DistributedSampler
from torch.utils.data import DataLoader, Sampler

from ..data import data_config, eval_transform
from ..errors import MixaError



def split_dir(data_dir, split: str) -> Path:
    """``data_dir/train`` must exist for training; for ``val`` a directory of class folders works too."""
    from ..data import resolve_split

    path = resolve_split(data_dir, split)
    if split == "train" and path.name != "train":
        raise MixaError(f"{data_dir} has no train/ folder (expected {data_dir}/train/<class>/<image>)")
    if split == "val" and path.name != "val" and (Path(data_dir) / "train").is_dir():
        raise MixaError(f"{data_dir} has no val/ folder (expected {data_dir}/val/<class>/<image>)")
    return path


class SafeImageFolder:
    """mixa.data's SafeImageFolder with items (image, label, skipped): an unreadable file is replaced by
    the next readable sample and counted, so batches keep their size and order stays deterministic."""

    def __init__(self, root, transform=None):
        from ..data import SafeImageFolder as Folder

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.folder = Folder(root, transform=transform)
        self.classes = self.folder.classes

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int):
        n = len(self)
        for skipped in range(n):
            sample = self.folder[(index + skipped) % n]
            if sample is not None:
                return sample[0], sample[1], skipped
        raise MixaError(f"no readable image in {self.folder.root}")


def train_transform(model, settings: Dict[str, Any]):
    from timm.data import create_transform

    cfg = data_config(model)
    return create_transform(cfg["input_size"], is_training=True, interpolation=cfg["interpolation"],
                            mean=cfg["mean"], std=cfg["std"], auto_augment=settings.get("auto_augment"),
                            color_jitter=settings.get("color_jitter", 0.4), re_prob=settings.get("reprob", 0.0),
                            re_mode=settings.get("remode", "pixel"), hflip=settings.get("hflip", 0.5),
                            scale=tuple(settings.get("scale", (0.08, 1.0))))


class ShardSampler(Sampler):
    """Every world-th index from ``rank``, in order, without padding (evaluation counts each image once)."""

    def __init__(self, length: int, rank: int = 0, world: int = 1):
        self.indices = list(range(rank, length, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class ResumableSampler(DistributedSampler):
    """DistributedSampler whose next epoch can start part-way (after a mid-epoch checkpoint): the order
    is the epoch's usual permutation, minus its first ``skip`` indices."""

    skip = 0

    def __iter__(self):
        start, self.skip = self.skip, 0
        return iter(list(super().__iter__())[start:])

    def __len__(self) -> int:
        return super().__len__() - self.skip


def train_loader(data_dir, model, settings: Dict[str, Any], batch_size: int, rank: int = 0,
                 world: int = 1) -> Tuple[DataLoader, SafeImageFolder]:
    """Shuffled, sharded, drop-last loader. Call ``set_train_epoch(loader, epoch)`` before each epoch:
    the order and the workers' augmentation seeds are functions of (seed, epoch, rank) only."""
    dataset = SafeImageFolder(split_dir(data_dir, "train"), train_transform(model, settings))
    sampler = ResumableSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                                 seed=int(settings["seed"]), drop_last=True)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=settings["workers"],
                        drop_last=True, pin_memory=torch.cuda.is_available(), generator=torch.Generator())
    loader.mixa_seed = (int(settings["seed"]), rank)
    return loader, dataset


def set_train_epoch(loader: DataLoader, epoch: int, skip_batches: int = 0) -> None:
    """Prepare ``epoch``; ``skip_batches`` resumes it after that many batches (checkpoint inside an epoch)."""
    seed, rank = loader.mixa_seed
    loader.sampler.set_epoch(epoch)
    loader.sampler.skip = skip_batches * loader.batch_size
    loader.generator.manual_seed((seed * 1_000_003 + epoch * 1_009 + rank) % (2 ** 63))


def val_loader(data_dir, model, batch_size: int = 64, workers: int = 4, max_batches: Optional[int] = None,
                rank: int = 0, world: int = 1, split: str = "val") -> DataLoader:
    """Loader over ``data_dir/val`` (or a directory of class folders) with the model's eval transform.
    Items are (image, label, skipped). ``max_batches`` keeps only the first batches (quick checks)."""
    dataset = SafeImageFolder(split_dir(data_dir, split), eval_transform(model))
    sampler = ShardSampler(len(dataset), rank, world)
    if max_batches is not None:
        sampler.indices = sampler.indices[:max_batches * batch_size]
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=torch.cuda.is_available())


def mixup_fn(settings: Dict[str, Any], num_classes: int):
    """timm's Mixup/CutMix (it also applies the label smoothing), or None when both are off."""
    if not (settings["mixup"] > 0 or settings["cutmix"] > 0):
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=settings["mixup"], cutmix_alpha=settings["cutmix"], prob=settings["mixup_prob"],
                 switch_prob=settings["mixup_switch_prob"], label_smoothing=settings["smoothing"],
                 num_classes=num_classes)
