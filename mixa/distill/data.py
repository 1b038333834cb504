"""Loaders for training runs (distill, transfer): timm transforms from the student's data config,
samplers whose order is a function of (seed, epoch, rank) and that can start part-way into an epoch."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from timm.data import Mixup, create_transform
from torch.utils.data import DataLoader, Sampler
from torch.utils.data.distributed import DistributedSampler

from ..data import SafeImageFolder, data_config, eval_transform, resolve_split, resolve_workers
from ..errors import MixaError
from .augment import repair_posterize


def split_dir(data_dir, split: str) -> Path:
    """``data_dir/train`` must exist for training; for ``val`` a directory of class folders works too."""
    path = resolve_split(data_dir, split)
    if split == "train" and path.name != "train":
        raise MixaError(f"{data_dir} has no train/ folder (expected {data_dir}/train/<class>/<image>)")
    if split == "val" and path.name != "val" and (Path(data_dir) / "train").is_dir():
        raise MixaError(f"{data_dir} has no val/ folder (expected {data_dir}/val/<class>/<image>)")
    return path


def train_transform(model, settings: Dict[str, Any]):
    """timm's training transform (random resized crop, flip, RandAugment, colour jitter, random erasing)
    for the student's input size, mean/std and interpolation."""
    cfg = data_config(model)
    transform = create_transform(cfg["input_size"], is_training=True, interpolation=cfg["interpolation"],
                                 mean=cfg["mean"], std=cfg["std"], auto_augment=settings.get("auto_augment"),
                                 color_jitter=settings.get("color_jitter", 0.4),
                                 re_prob=settings.get("reprob", 0.0), re_mode=settings.get("remode", "pixel"),
                                 hflip=settings.get("hflip", 0.5), scale=tuple(settings.get("scale", (0.08, 1.0))))
    return repair_posterize(transform)


class ShardSampler(Sampler):
    """Every world-th of ``indices`` from ``rank``, in order, without padding (evaluation counts each
    image once)."""
    def __init__(self, indices, rank: int = 0, world: int = 1):
        self.indices = list(indices)[rank::world]

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


def train_loader(dataset, batch_size: int, seed: int, workers, rank: int = 0, world: int = 1) -> DataLoader:
    """Shuffled, sharded, drop-last loader over ``dataset``. Call ``set_train_epoch(loader, epoch)`` before
    each epoch: the order and the workers' augmentation seeds are functions of (seed, epoch, rank) only."""
    sampler = ResumableSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=int(seed), drop_last=True)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=resolve_workers(workers),
                        drop_last=True, pin_memory=torch.cuda.is_available(), generator=torch.Generator())
    loader.mixa_seed = (int(seed), rank)
    return loader


def labeled_train_loader(data_dir, model, settings: Dict[str, Any], batch_size: int, rank: int = 0,
                         world: int = 1) -> Tuple[DataLoader, SafeImageFolder]:
    """The training loader of ``data_dir/train`` with the recipe's augmentation."""
    dataset = SafeImageFolder(split_dir(data_dir, "train"), train_transform(model, settings))
    return train_loader(dataset, batch_size, settings["seed"], settings["workers"], rank, world), dataset


def set_train_epoch(loader: DataLoader, epoch: int, skip_batches: int = 0) -> None:
    """Prepare ``epoch``; ``skip_batches`` resumes it after that many batches (checkpoint inside an epoch)."""
    seed, rank = loader.mixa_seed
    loader.sampler.set_epoch(epoch)
    loader.sampler.skip = skip_batches * loader.batch_size
    loader.generator.manual_seed((seed * 1_000_003 + epoch * 1_009 + rank) % (2 ** 63))


def val_loader(data_dir, model, batch_size: int = 64, workers="auto", max_images: Optional[int] = None,
               rank: int = 0, world: int = 1, split: str = "val", labeled: bool = True) -> DataLoader:
    """Loader over ``data_dir/val`` (or a directory of class folders) with the model's eval transform.
    Items are (image, label, skipped) (stand-ins for unreadable files included: batches keep their size
    under torchrun, and ``evaluate_loader`` leaves them out). ``max_images`` keeps a fixed random subset of that many images
    (the same every time; the first N files of a class-folder tree would be one class)."""
    dataset = SafeImageFolder(split_dir(data_dir, split) if labeled else resolve_split(data_dir, split),
                              eval_transform(model), labeled=labeled)
    indices = range(len(dataset))
    if max_images is not None and max_images < len(dataset):
        indices = sorted(torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:max_images].tolist())
    return DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(indices, rank, world),
                      num_workers=resolve_workers(workers), pin_memory=torch.cuda.is_available())


def mixup_fn(settings: Dict[str, Any], num_classes: int):
    """timm's Mixup/CutMix (it also applies the label smoothing), or None when both are off."""
    if not (settings["mixup"] > 0 or settings["cutmix"] > 0):
        return None

    return Mixup(mixup_alpha=settings["mixup"], cutmix_alpha=settings["cutmix"], prob=settings["mixup_prob"],
                 switch_prob=settings["mixup_switch_prob"], label_smoothing=settings["smoothing"],
                 num_classes=num_classes)
