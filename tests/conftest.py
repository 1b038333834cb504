"""Fixtures every test file shares: generated image folders and tiny timm models (CI has 2 cores)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pytest
from PIL import Image

# Tiny versions of the families mixa converts: (timm architecture, kwargs, image side)
TINY_MODELS = {
    "vit": ("deit_tiny_patch16_224", dict(depth=4, embed_dim=32, num_heads=2, img_size=32, patch_size=8), 32),
    "deit_distilled": ("deit_tiny_distilled_patch16_224",
                       dict(depth=4, embed_dim=32, num_heads=2, img_size=32, patch_size=8), 32),
    "swin": ("swin_tiny_patch4_window7_224",
             dict(depths=(2, 2), embed_dim=16, num_heads=(1, 2), img_size=56, window_size=7), 56),
}


def write_image_folder(root: Path, classes: int = 3, per_class: int = 4, size: int = 32, seed: int = 0,
                       splits: Sequence[str] = ()) -> Path:
    """An ImageFolder of random RGB PNGs (``root/[split/]class<i>/<j>.png``); returns ``root``."""
    rng = np.random.default_rng(seed)
    for split in splits or [""]:
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Callable[..., Path]:
    """``image_folder(name="images", **write_image_folder options)`` -> a fresh folder under tmp_path."""
    def make(name: str = "images", **options) -> Path:
        return write_image_folder(tmp_path / name, **options)
    return make


@pytest.fixture
def tiny_model() -> Callable:
    """``tiny_model(family, num_classes=5, seed=0)`` -> a random-init tiny timm model built by mixa."""
    import torch

    from mixa.models import create_model

    def make(family: str = "vit", num_classes: int = 5, seed: int = 0, **overrides):
        name, kwargs, _ = TINY_MODELS[family]
        torch.manual_seed(seed)
        return create_model(name, pretrained=False, num_classes=num_classes, **{**kwargs, **overrides})
    return make
