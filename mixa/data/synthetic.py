"""A procedurally generated image-classification task that needs global spatial reasoning.

Every image holds one red and one blue *key* object and a few distractor objects in other colours on a
noisy background. The label combines two relations between the two key objects, which lie far apart:

- where the red object lies relative to the blue one: left/right and above/below (4 cases), and
- whether the two key objects have the same shape (2 cases),

so 8 classes. No single patch decides the label: a model must find both key objects anywhere in the
image, compare their positions and compare their shapes. That is the job of attention, so replacing
attention layers hurts until the model is fine-tuned, which is what the quick start demonstrates.

Sample ``i`` of a split is drawn from its own generator seeded with ``(seed, split, i)``, so a dataset is
deterministic, order-independent and needs no storage: it is served in memory (:class:`SyntheticShapes`,
a torch ``Dataset``) or written once as an ImageFolder (:func:`write_image_folder`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

IMAGE_SIZE = 32
OBJECT_SIZE = 7
SHAPES = ("square", "ring", "cross")
KEY_COLORS = {"red": (225, 45, 45), "blue": (50, 80, 230)}
DISTRACTOR_COLORS = ((45, 185, 70), (225, 205, 50), (200, 200, 200))
NUM_DISTRACTORS = (2, 3)  # inclusive range
MIN_OFFSET = OBJECT_SIZE + 1  # key objects differ by at least this much in x and in y: unambiguous relations
# Normalisation the packaged teacher was trained with (also recorded in its timm pretrained_cfg).
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
SPLITS = {"train": 0, "val": 1, "calib": 2}

CLASSES = tuple(
    f"red_{h}_{v}_{same}"
    for same in ("different", "same")
    for h in ("left", "right")
    for v in ("above", "below")
)


def label_of(red_xy: Tuple[int, int], blue_xy: Tuple[int, int], red_shape: str, blue_shape: str) -> int:
    """The class index of a scene: ``4 * same_shape + 2 * red_is_right + red_is_below``."""
    right = int(red_xy[0] > blue_xy[0])
    below = int(red_xy[1] > blue_xy[1])
    same = int(red_shape == blue_shape)
    return 4 * same + 2 * right + below


def _shape_mask(shape: str) -> np.ndarray:
    s = OBJECT_SIZE
    mask = np.zeros((s, s), dtype=bool)
    if shape == "square":
        mask[:, :] = True
    elif shape == "ring":
        mask[:, :] = True
        mask[2:-2, 2:-2] = False
    elif shape == "cross":
        mid = s // 2
        mask[mid - 1:mid + 2, :] = True
        mask[:, mid - 1:mid + 2] = True
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return mask


_MASKS = {name: _shape_mask(name) for name in SHAPES}


def _overlaps(a: Tuple[int, int], b: Tuple[int, int], gap: int = 1) -> bool:
    return abs(a[0] - b[0]) < OBJECT_SIZE + gap and abs(a[1] - b[1]) < OBJECT_SIZE + gap


def generate_scene(rng: np.random.Generator, image_size: int = IMAGE_SIZE) -> Dict:
    """Draw one scene: a uint8 HWC image plus the object list it was drawn from and its label."""
    hi = image_size - OBJECT_SIZE  # top-left corners lie in [0, hi]
    while True:
        red = (int(rng.integers(0, hi + 1)), int(rng.integers(0, hi + 1)))
        blue = (int(rng.integers(0, hi + 1)), int(rng.integers(0, hi + 1)))
        if abs(red[0] - blue[0]) >= MIN_OFFSET and abs(red[1] - blue[1]) >= MIN_OFFSET:
            break
    # Half the scenes have equal key shapes, so both answers of the shape question are equally likely.
    red_shape = SHAPES[int(rng.integers(len(SHAPES)))]
    if rng.random() < 0.5:
        blue_shape = red_shape
    else:
        others = [s for s in SHAPES if s != red_shape]
        blue_shape = others[int(rng.integers(len(others)))]
    objects = [
        {"color": "red", "rgb": KEY_COLORS["red"], "shape": red_shape, "xy": red},
        {"color": "blue", "rgb": KEY_COLORS["blue"], "shape": blue_shape, "xy": blue},
    ]
    n_distractors = int(rng.integers(NUM_DISTRACTORS[0], NUM_DISTRACTORS[1] + 1))
    for _ in range(n_distractors):
        for _attempt in range(50):  # rejection sampling; a crowded scene just gets fewer distractors
            xy = (int(rng.integers(0, hi + 1)), int(rng.integers(0, hi + 1)))
            if not any(_overlaps(xy, o["xy"]) for o in objects):
                rgb = DISTRACTOR_COLORS[int(rng.integers(len(DISTRACTOR_COLORS)))]
                objects.append({"color": "distractor", "rgb": rgb,
                                "shape": SHAPES[int(rng.integers(len(SHAPES)))], "xy": xy})
                break

    # Background: a random dark tint plus pixel noise, so colour alone is not a trivial per-pixel cue.
    tint = rng.integers(20, 70, size=3)
    image = tint[None, None, :] + rng.normal(0.0, 12.0, size=(image_size, image_size, 3))
    for obj in objects:
        x, y = obj["xy"]
        mask = _MASKS[obj["shape"]]
        colour = np.asarray(obj["rgb"], dtype=np.float64) + rng.normal(0.0, 10.0, size=3)
        region = image[y:y + OBJECT_SIZE, x:x + OBJECT_SIZE]
        region[mask] = colour
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    label = label_of(red, blue, red_shape, blue_shape)
    return {"image": image, "label": label, "objects": objects}


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})")
    return np.random.default_rng([int(seed), SPLITS[split], int(index)])


def make_sample(seed: int, split: str, index: int, image_size: int = IMAGE_SIZE) -> Dict:
    """Sample ``index`` of ``split``: the same scene every time, whatever else was generated before."""
    return generate_scene(sample_rng(seed, split, index), image_size)


def to_tensor(images: np.ndarray):
    """uint8 NHWC (or HWC) -> float NCHW (or CHW) normalised like the packaged teacher expects."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    x = x.movedim(-1, -3)
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    return (x - mean) / std


def _torch_dataset_base():
    from torch.utils.data import Dataset

    return Dataset


class SyntheticShapes(_torch_dataset_base()):
    """The synthetic task as an in-memory torch ``Dataset`` of ``(image CHW float, label)``.

    ``length`` samples of ``split`` are generated once at construction (32x32 images: 3 KB each), so
    iterating costs nothing. ``offset`` shifts the sample indices: a training loop can ask for fresh
    scenes by moving the offset instead of repeating the same ones.
    """

    def __init__(self, split: str = "val", length: int = 2000, seed: int = 0, offset: int = 0,
                 image_size: int = IMAGE_SIZE, transform: Optional[Callable] = None):
        self.split, self.seed, self.offset, self.image_size = split, int(seed), int(offset), image_size
        self.transform = transform
        samples = [make_sample(seed, split, offset + i, image_size) for i in range(int(length))]
        self.images = np.stack([s["image"] for s in samples]) if samples else \
            np.zeros((0, image_size, image_size, 3), np.uint8)
        self.labels = np.asarray([s["label"] for s in samples], dtype=np.int64)
        self.classes = list(CLASSES)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        if self.transform is not None:
            from PIL import Image

            return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])
        return to_tensor(self.images[index]), int(self.labels[index])

    def tensors(self):
        """All images as one normalised (N, 3, H, W) tensor and the labels as a (N,) tensor."""
        import torch

        return to_tensor(self.images), torch.from_numpy(self.labels)


def write_image_folder(root: Union[str, os.PathLike], seed: int = 0,
                       sizes: Optional[Dict[str, int]] = None, image_size: int = IMAGE_SIZE,
                       progress: bool = False) -> Path:
    """Write ``root/<split>/<class>/<index>.png`` for each split in ``sizes`` (default train 2000,
    val 1000); readable by ``torchvision.datasets.ImageFolder`` and ``mixa.data.eval_loader``.

    Files are written atomically and existing ones are kept, so an interrupted write resumes.
    """
    from PIL import Image

    from ..io import atomic_path

    sizes = {"train": 2000, "val": 1000} if sizes is None else dict(sizes)
    root = Path(root)
    for split, n in sizes.items():
        for name in CLASSES:  # every class folder exists even when a tiny split misses a class
            (root / split / name).mkdir(parents=True, exist_ok=True)
        indices: Sequence[int] = range(int(n))
        if progress:
            from tqdm import tqdm

            indices = tqdm(indices, desc=f"writing {split}", unit="img", leave=False)
        for i in indices:
            sample = make_sample(seed, split, i, image_size)
            path = root / split / CLASSES[sample["label"]] / f"{i:06d}.png"
            if path.exists():
                continue
            with atomic_path(path) as tmp:
                Image.fromarray(sample["image"]).save(tmp, format="PNG")
    return root


def class_names() -> List[str]:
    return list(CLASSES)
