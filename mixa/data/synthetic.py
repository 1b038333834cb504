"""Procedurally generated image-classification tasks that need global spatial reasoning.

Three tasks, by name (``TASKS``; ``get_task(name)``):

``shapes`` (32x32; the quick start's first task). Every image holds five red or blue *key* objects and
two green or yellow distractors, all of random shapes, on a noisy background; no object crosses the
image's vertical or horizontal midline. The label combines three counts over the whole image, each over
the five key objects (distractors never count):

- do most key objects lie in the left or the right half,
- do most lie in the top ("above") or the bottom ("below") half,
- are most of them blue or red,

so 8 classes, named ``{left|right}_{above|below}_{blues|reds}``; class index =
``4 * right + 2 * below + reds``, which is also the sorted order of the names, so an ImageFolder of
the task (classes sorted by folder name) has exactly these indices.

``relations`` (64x64: 256 tokens for a ViT at patch 4, the first proxy task). Seven red or blue
key objects (at least one of each) and three green or yellow distractors anywhere in the image. The
label compares the two colour groups: is the red group's centroid left or right of the blue group's,
above or below it, and are there more reds or more blues; 8 classes
``{redleft|redright}_{redabove|redbelow}_{blues|reds}``, index ``4 * right + 2 * below + reds``
(again the sorted order). Centroids closer than ``RELATIONS_MARGIN`` px on an axis are redrawn.

``extremes`` (64x64, the proxy benchmark's and the quick start's task). Scenes like those of
``relations`` (seven red or blue key objects, three distractors), asked about their extremes: is the
leftmost key object red, is the topmost one red, are there more reds; 8 classes
``left{blue|red}_top{blue|red}_{blues|reds}``, index ``4 * leftred + 2 * topred + reds``. The answers are
drawn first and the colours assigned to match, so the classes are uniform and independent. ``relations``
asks for means (centroids, counts), which a linear attention computes as well as softmax does; an
extreme is an argmin over the whole image, which softmax attention gets by sharpening.

No patch decides a label: every object anywhere in the image counts, and distractors must be told
apart from key objects first. Aggregating over the whole image is the job of attention, so replacing
attention layers hurts until the model is fine-tuned.

Sample ``i`` of a split is drawn from its own generator seeded with ``(seed, split, i)``, so a dataset is
deterministic, order-independent and needs no storage: it is served in memory (:class:`SyntheticShapes`,
a torch ``Dataset``) or written once as an ImageFolder (:func:`write_image_folder`, or the command line
``python -m mixa.data.synthetic --task relations --output DIR --train N --val N --seed S``).
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..io import atomic_path, os_error_message

IMAGE_SIZE = 32
OBJECT_SIZE = 6
SHAPES = ("square", "ring", "cross")
KEY_COLORS = {"red": (225, 45, 45), "blue": (50, 80, 230)}
DISTRACTOR_COLORS = {"green": (45, 185, 70), "yellow": (225, 205, 50)}
NUM_KEY = 5  # odd: every count has a strict majority
NUM_DISTRACTORS = 2
# Normalisation the packaged teacher was trained with (also recorded in its timm pretrained_cfg).
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
# test: scenes that choose nothing (no checkpoint, no setting), where a benchmark scores what val picked
SPLITS = {"train": 0, "val": 1, "calib": 2, "test": 3}

CLASSES = tuple(
    f"{h}_{v}_{colour}"
    for h in ("left", "right")
    for v in ("above", "below")
    for colour in ("blues", "reds")
)
assert list(CLASSES) == sorted(CLASSES)


def label_of(key_objects: Sequence[Tuple[Tuple[int, int], str]], image_size: int = IMAGE_SIZE) -> int:
    """The class of a scene from its key objects ``((x, y) top-left corner, colour)``:
    ``4 * (most lie right) + 2 * (most lie below) + (most are red)``."""
    half = image_size // 2
    n = len(key_objects)
    right = sum(x >= half for (x, _), _ in key_objects) * 2 > n
    below = sum(y >= half for (_, y), _ in key_objects) * 2 > n
    reds = sum(colour == "red" for _, colour in key_objects) * 2 > n
    return 4 * int(right) + 2 * int(below) + int(reds)


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


def _overlaps(a: Tuple[int, int], b: Tuple[int, int], gap: int = 1, size: int = OBJECT_SIZE) -> bool:
    return abs(a[0] - b[0]) < size + gap and abs(a[1] - b[1]) < size + gap


def _render(rng: np.random.Generator, objects: List[Dict], image_size: int, size: int) -> np.ndarray:
    """Background: a random dark tint plus pixel noise; object colours jitter a little."""
    tint = rng.integers(20, 70, size=3)
    image = tint[None, None, :] + rng.normal(0.0, 12.0, size=(image_size, image_size, 3))
    for obj in objects:
        x, y = obj["xy"]
        colour = np.asarray(obj["rgb"], dtype=np.float64) + rng.normal(0.0, 10.0, size=3)
        image[y:y + size, x:x + size][_MASKS[obj["shape"]]] = colour
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def generate_scene(rng: np.random.Generator, image_size: int = IMAGE_SIZE) -> Dict:
    """Draw one scene: a uint8 HWC image plus the object list it was drawn from and its label."""
    half = image_size // 2

    def corner():
        # A corner inside one half along each axis, so that no object crosses a midline.
        return tuple(int(rng.integers(2)) * half + int(rng.integers(0, half - OBJECT_SIZE + 1)) for _ in "xy")

    colours = [("red" if rng.random() < 0.5 else "blue") for _ in range(NUM_KEY)]
    colours += [("green" if rng.random() < 0.5 else "yellow") for _ in range(NUM_DISTRACTORS)]
    while True:  # a layout with every object apart from the others (rejection sampling)
        objects = []
        for colour in colours:
            for _attempt in range(100):
                xy = corner()
                if not any(_overlaps(xy, o["xy"]) for o in objects):
                    objects.append({"color": colour, "xy": xy})
                    break
        if len(objects) == len(colours):
            break
    palette = {**KEY_COLORS, **DISTRACTOR_COLORS}
    for obj in objects:
        obj["shape"] = SHAPES[int(rng.integers(len(SHAPES)))]
        obj["rgb"] = palette[obj["color"]]

    image = _render(rng, objects, image_size, OBJECT_SIZE)
    keys = [(o["xy"], o["color"]) for o in objects if o["color"] in KEY_COLORS]
    return {"image": image, "label": label_of(keys, image_size), "objects": objects}


# ----------------------------------------------------------------------------------------------------
# the "relations" task: 64x64 images (256 tokens at patch 4), labels from relations between objects

RELATIONS_SIZE = 64
RELATIONS_OBJECT = OBJECT_SIZE  # the shape masks (_MASKS) are drawn at this size
RELATIONS_KEYS = 7           # red + blue objects; odd, so one colour is always in the majority
RELATIONS_DISTRACTORS = 3    # green or yellow, never counted
RELATIONS_MARGIN = 4         # px: the red and blue centroids differ by at least this on each axis

RELATIONS_CLASSES = tuple(
    f"{h}_{v}_{colour}"
    for h in ("redleft", "redright")
    for v in ("redabove", "redbelow")
    for colour in ("blues", "reds")
)
assert list(RELATIONS_CLASSES) == sorted(RELATIONS_CLASSES)


def relations_label(key_objects: Sequence[Tuple[Tuple[int, int], str]]) -> int:
    """``4 * (red centroid right of the blue one) + 2 * (red centroid below the blue one) + (more reds)``
    from the key objects ``((x, y) top-left corner, colour)`` (all objects have the same size, so
    corners and centres give the same comparison)."""
    red = np.asarray([xy for xy, c in key_objects if c == "red"], dtype=np.float64)
    blue = np.asarray([xy for xy, c in key_objects if c == "blue"], dtype=np.float64)
    right, below = (red.mean(0) > blue.mean(0)).tolist()
    return 4 * int(right) + 2 * int(below) + int(len(red) > len(blue))


def _scatter(rng: np.random.Generator, count: int, image_size: int, size: int) -> List[Tuple[int, int]]:
    """Corners of up to ``count`` objects anywhere in the image, each at least 2 px from the others
    (200 random tries each; an object that finds no room is left out, so the caller redraws when fewer
    than ``count`` come back)."""
    placed: List[Tuple[int, int]] = []
    for _ in range(count):
        for _attempt in range(200):
            xy = tuple(int(v) for v in rng.integers(1, image_size - size, size=2))
            if not any(_overlaps(xy, other, gap=2, size=size) for other in placed):
                placed.append(xy)
                break
    return placed


def generate_relations_scene(rng: np.random.Generator, image_size: int = RELATIONS_SIZE) -> Dict:
    """Seven red or blue objects and three green or yellow distractors anywhere in a 64x64 image. The
    label compares the two colour groups across the whole image: which colour has more objects, and
    where the red group's centroid lies relative to the blue group's (left/right, above/below). A
    scene whose centroids are closer than ``RELATIONS_MARGIN`` px on an axis is redrawn, so every
    label is decided by a visible difference."""
    size = RELATIONS_OBJECT
    while True:
        reds = int(rng.integers(1, RELATIONS_KEYS))  # 1..6: both colours present
        colours = ["red"] * reds + ["blue"] * (RELATIONS_KEYS - reds)
        colours += [("green" if rng.random() < 0.5 else "yellow") for _ in range(RELATIONS_DISTRACTORS)]
        corners = _scatter(rng, len(colours), image_size, size)
        if len(corners) < len(colours):
            continue
        objects = [{"color": colour, "xy": xy} for colour, xy in zip(colours, corners)]
        red = np.asarray([o["xy"] for o in objects if o["color"] == "red"], dtype=np.float64).mean(0)
        blue = np.asarray([o["xy"] for o in objects if o["color"] == "blue"], dtype=np.float64).mean(0)
        if np.all(np.abs(red - blue) >= RELATIONS_MARGIN):
            break
    for obj in objects:
        obj["shape"] = SHAPES[int(rng.integers(len(SHAPES)))]
        obj["rgb"] = {**KEY_COLORS, **DISTRACTOR_COLORS}[obj["color"]]
    image = _render(rng, objects, image_size, size)
    keys = [(o["xy"], o["color"]) for o in objects if o["color"] in KEY_COLORS]
    return {"image": image, "label": relations_label(keys), "objects": objects}


# ----------------------------------------------------------------------------------------------------
# the "extremes" task: the relations scenes, labels from the extreme objects (an argmin, not a mean)

EXTREMES_MARGIN = 3  # px: the leftmost (topmost) key object is at least this much left of (above) the next

EXTREMES_CLASSES = tuple(
    f"left{a}_top{b}_{colour}"
    for a in ("blue", "red")
    for b in ("blue", "red")
    for colour in ("blues", "reds")
)
assert list(EXTREMES_CLASSES) == sorted(EXTREMES_CLASSES)


def extremes_label(key_objects: Sequence[Tuple[Tuple[int, int], str]]) -> int:
    """``4 * (the leftmost key object is red) + 2 * (the topmost one is red) + (more reds than blues)``
    from the key objects ``((x, y) top-left corner, colour)``."""
    leftmost = min(key_objects, key=lambda o: o[0][0])[1]
    topmost = min(key_objects, key=lambda o: o[0][1])[1]
    reds = sum(colour == "red" for _, colour in key_objects)
    return 4 * int(leftmost == "red") + 2 * int(topmost == "red") + int(2 * reds > len(key_objects))


def generate_extremes_scene(rng: np.random.Generator, image_size: int = RELATIONS_SIZE) -> Dict:
    """Scenes like those of ``relations`` (seven red or blue key objects, three green or yellow
    distractors, anywhere in 64x64), asked about their extremes: the colour of the leftmost and of the
    topmost key object, and which colour has more objects. Two of the three answers are a selection
    over the whole image (an argmin over positions), which softmax attention does by sharpening and a
    linear attention can only approximate with a weighted mean; the count keeps a signal a model picks
    up early.

    The three answers are drawn first, uniformly and independently, and the colours are then assigned
    to a random layout to match them, so that no answer predicts another (with colours drawn first, the
    majority colour would usually also be the leftmost: a shortcut a mean could take). Layouts whose
    two leftmost (or two topmost) key objects are within ``EXTREMES_MARGIN`` px are redrawn."""
    size = RELATIONS_OBJECT
    left_red, top_red, more_red = (bool(b) for b in rng.integers(2, size=3))
    while True:
        corners = _scatter(rng, RELATIONS_KEYS + RELATIONS_DISTRACTORS, image_size, size)
        if len(corners) < RELATIONS_KEYS + RELATIONS_DISTRACTORS:
            continue
        objects: List[Dict] = [{"xy": xy} for xy in corners]
        keys = np.asarray([o["xy"] for o in objects[:RELATIONS_KEYS]])
        xs, ys = np.sort(keys[:, 0]), np.sort(keys[:, 1])
        if xs[1] - xs[0] < EXTREMES_MARGIN or ys[1] - ys[0] < EXTREMES_MARGIN:
            continue
        left, top = int(np.argmin(keys[:, 0])), int(np.argmin(keys[:, 1]))
        if left == top and left_red != top_red:
            continue  # one object cannot be both colours
        fixed = {left: left_red, top: top_red}
        free = [i for i in range(RELATIONS_KEYS) if i not in fixed]
        fixed_reds = sum(fixed.values())
        # Reds in all: a majority as asked, and both colours present (1..6 of 7).
        options = [r for r in range(1, RELATIONS_KEYS)
                   if (2 * r > RELATIONS_KEYS) == more_red and 0 <= r - fixed_reds <= len(free)]
        if options:
            break
    reds = int(options[int(rng.integers(len(options)))]) - fixed_reds
    red_free = set(rng.permutation(free)[:reds].tolist())
    for i, obj in enumerate(objects):
        if i < RELATIONS_KEYS:
            obj["color"] = "red" if fixed.get(i, i in red_free) else "blue"
        else:
            obj["color"] = "green" if rng.random() < 0.5 else "yellow"
        obj["shape"] = SHAPES[int(rng.integers(len(SHAPES)))]
        obj["rgb"] = {**KEY_COLORS, **DISTRACTOR_COLORS}[obj["color"]]
    image = _render(rng, objects, image_size, size)
    keys = [(o["xy"], o["color"]) for o in objects if o["color"] in KEY_COLORS]
    label = extremes_label(keys)
    assert label == 4 * left_red + 2 * top_red + more_red
    return {"image": image, "label": label, "objects": objects}


# ----------------------------------------------------------------------------------------------------
# the task registry

@dataclass(frozen=True)
class Task:
    """A procedural classification task: ``generate(rng, image_size)`` draws one scene."""
    name: str
    image_size: int
    classes: Tuple[str, ...]
    generate: Callable[..., Dict]
    summary: str


TASKS: Dict[str, Task] = {
    "shapes": Task("shapes", IMAGE_SIZE, CLASSES, generate_scene,
                   "32x32, five key objects: majority left/right, above/below, red/blue (16 tokens at patch 8)"),
    "relations": Task("relations", RELATIONS_SIZE, RELATIONS_CLASSES, generate_relations_scene,
                      "64x64, seven key objects: red vs blue count and centroids (256 tokens at patch 4)"),
    "extremes": Task("extremes", RELATIONS_SIZE, EXTREMES_CLASSES, generate_extremes_scene,
                     "64x64, the relations scenes: colour of the leftmost and of the topmost key object, "
                     "and the majority colour (256 tokens at patch 4)"),
}
DEFAULT_TASK = "shapes"


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r} (choose from {', '.join(TASKS)})")
    return TASKS[name]


def list_tasks() -> List[str]:
    return list(TASKS)


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})")
    return np.random.default_rng([int(seed), SPLITS[split], int(index)])


def make_sample(seed: int, split: str, index: int, image_size: Optional[int] = None,
                task: str = DEFAULT_TASK) -> Dict:
    """Sample ``index`` of ``split``: the same scene every time, whatever else was generated before."""
    t = get_task(task)
    return t.generate(sample_rng(seed, split, index), image_size or t.image_size)


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
    """A synthetic task as an in-memory torch ``Dataset`` of ``(image CHW float, label)``.

    ``length`` samples of ``split`` are generated once at construction (3 KB per 32x32 image, 12 KB
    per 64x64), so iterating costs nothing. ``offset`` shifts the sample indices: a training loop can
    ask for fresh scenes by moving the offset instead of repeating the same ones.
    """
    def __init__(self, split: str = "val", length: int = 2000, seed: int = 0, offset: int = 0,
                 image_size: Optional[int] = None, transform: Optional[Callable] = None,
                 task: str = DEFAULT_TASK):
        t = get_task(task)
        image_size = image_size or t.image_size
        self.task, self.split, self.seed, self.offset, self.image_size = task, split, int(seed), int(offset), image_size
        self.transform = transform
        samples = [make_sample(seed, split, offset + i, image_size, task) for i in range(int(length))]
        self.images = np.stack([s["image"] for s in samples]) if samples else \
            np.zeros((0, image_size, image_size, 3), np.uint8)
        self.labels = np.asarray([s["label"] for s in samples], dtype=np.int64)
        self.classes = list(t.classes)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        if self.transform is not None:

            return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])
        return to_tensor(self.images[index]), int(self.labels[index])

    def tensors(self):
        """All images as one normalised (N, 3, H, W) tensor and the labels as a (N,) tensor."""
        import torch

        return to_tensor(self.images), torch.from_numpy(self.labels)


def write_image_folder(root: Union[str, os.PathLike], seed: int = 0,
                       sizes: Optional[Dict[str, int]] = None, image_size: Optional[int] = None,
                       progress: bool = False, task: str = DEFAULT_TASK) -> Path:
    """Write ``root/<split>/<class>/<index>.png`` for each split in ``sizes`` (default train 2000,
    val 1000); readable by ``torchvision.datasets.ImageFolder`` and ``mixa.data.eval_loader``.

    Files are written atomically and existing ones are kept, so an interrupted write resumes. Every
    class must occur in every split (an ImageFolder numbers only the folders it finds), so a split too
    small to hold all 8 classes is an error.
    """
    classes = get_task(task).classes
    sizes = {"train": 2000, "val": 1000} if sizes is None else dict(sizes)
    check_classes_covered(seed, sizes, image_size, task)
    root = Path(root)
    for split, n in sizes.items():
        indices: Sequence[int] = range(int(n))
        if progress:

            indices = tqdm(indices, desc=f"writing {split}", unit="img", leave=False)
        for i in indices:
            sample = make_sample(seed, split, i, image_size, task)
            path = root / split / classes[sample["label"]] / f"{i:06d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists():
                continue
            with atomic_path(path) as tmp:
                Image.fromarray(sample["image"]).save(tmp, format="PNG")
    return root


def check_classes_covered(seed: int, sizes: Dict[str, int], image_size: Optional[int] = None,
                          task: str = DEFAULT_TASK) -> None:
    """ValueError when a split of ``sizes`` would miss a class, raised before anything is written (an
    ImageFolder numbers only the class folders it finds). Labels are drawn in the order the images are,
    and the draw stops once every class has been seen: a few dozen scenes for a sensible split."""
    classes = get_task(task).classes
    for split, n in sizes.items():
        seen = set()
        for i in range(int(n)):
            if len(seen) == len(classes):
                break
            seen.add(make_sample(seed, split, i, image_size, task)["label"])
        if len(seen) < len(classes):
            missing = [name for c, name in enumerate(classes) if c not in seen]
            raise ValueError(f"split {split!r} with {n} images misses classes {missing} (every class needs "
                             f"an image); write more images")


def class_names(task: str = DEFAULT_TASK) -> List[str]:
    return list(get_task(task).classes)


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m mixa.data.synthetic``: write a task as an ImageFolder (OUTPUT/train, OUTPUT/val)."""
    p = argparse.ArgumentParser(prog="python -m mixa.data.synthetic",
                                description="Write a synthetic task as an ImageFolder: OUTPUT/{train,val}/CLASS/*.png")
    p.add_argument("--task", default=DEFAULT_TASK, choices=list_tasks())
    p.add_argument("--output", required=True, metavar="DIR")
    p.add_argument("--train", type=int, default=2000, metavar="N", help="training images (default 2000)")
    p.add_argument("--val", type=int, default=1000, metavar="N", help="validation images (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="complete an interrupted write into OUTPUT")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty OUTPUT (files already "
                                                             "there with the same names are kept)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.output)
    try:
        if args.train < 0 or args.val < 0 or args.train + args.val == 0:
            raise ValueError("--train and --val must be >= 0, and not both 0")
        if out.exists() and not out.is_dir():
            raise ValueError(f"--output {out} exists and is not a directory")
        if out.is_dir() and any(out.iterdir()) and not (args.resume or args.overwrite):
            raise ValueError(f"--output {out} is not empty (pass --resume to complete it, or --overwrite)")
        sizes = {split: n for split, n in (("train", args.train), ("val", args.val)) if n}
        write_image_folder(out, seed=args.seed, sizes=sizes, progress=args.progress, task=args.task)
    except ValueError as err:
        if args.debug:
            raise
        print(f"{p.prog}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if args.debug:
            raise
        print(f"{p.prog}: error: {os_error_message(err)}", file=sys.stderr)
        return 1
    print(f"{args.task}: {', '.join(f'{k} {v}' for k, v in sizes.items())} images (seed {args.seed}) in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
