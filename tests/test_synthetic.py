"""The synthetic task: deterministic, labels right (checked from the pixels, not from the generator's
own bookkeeping), balanced, and written as a readable ImageFolder."""
import numpy as np
import pytest

from mixa.data import synthetic as S
from reference.pixels import components


def _find_objects(image, rgb, tol=40):
    """Top-left corners of the objects of colour ``rgb``, read from the pixels alone."""
    return [(x0, y0) for x0, y0, _, _ in components(image, rgb, tol)]


def test_deterministic_and_order_independent():
    a = S.SyntheticShapes("val", 20, seed=3)
    b = S.SyntheticShapes("val", 20, seed=3)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    # Sample 15 alone equals sample 15 of the sequence: each sample has its own generator.
    alone = S.SyntheticShapes("val", 5, seed=3, offset=15)
    assert np.array_equal(alone.images[0], a.images[15])
    other_seed = S.SyntheticShapes("val", 20, seed=4)
    other_split = S.SyntheticShapes("train", 20, seed=3)
    assert not np.array_equal(a.images, other_seed.images)
    assert not np.array_equal(a.images, other_split.images)
    for split in ("calib", "test"):  # every split its own scenes
        assert not np.array_equal(a.images, S.SyntheticShapes(split, 20, seed=3).images)


def test_labels_follow_the_rule_from_pixels():
    """Re-derive every label from the rendered image: find the red and blue objects (distractors are
    green or yellow), count them per half and per colour, and apply the documented rule."""
    half = S.IMAGE_SIZE // 2
    for i in range(60):
        sample = S.make_sample(0, "val", i)
        red = _find_objects(sample["image"], S.KEY_COLORS["red"])
        blue = _find_objects(sample["image"], S.KEY_COLORS["blue"])
        keys = red + blue
        assert len(keys) == 5, (i, red, blue)
        right = sum(x >= half for x, _ in keys)
        below = sum(y >= half for _, y in keys)
        expected = 4 * (right >= 3) + 2 * (below >= 3) + (len(red) >= 3)
        assert sample["label"] == expected, (i, red, blue)
        # No object crosses a midline: the half of each object is unambiguous.
        for x, y in keys:
            assert (x + S.OBJECT_SIZE <= half or x >= half) and (y + S.OBJECT_SIZE <= half or y >= half)


def test_classes_balanced():
    labels = S.SyntheticShapes("val", 1600, seed=0).labels
    counts = np.bincount(labels, minlength=len(S.CLASSES))
    # 8 equally likely classes: each near 200 of 1600 (binomial sd ~13).
    assert counts.min() > 150 and counts.max() < 250, counts


def test_tensor_normalisation_and_dataset_item():
    ds = S.SyntheticShapes("val", 4, seed=0)
    x, y = ds[2]
    assert x.shape == (3, S.IMAGE_SIZE, S.IMAGE_SIZE)
    expected = (ds.images[2, 5, 7, 1] / 255.0 - S.MEAN[1]) / S.STD[1]
    assert float(x[1, 5, 7]) == pytest.approx(expected, abs=1e-6)
    assert y == int(ds.labels[2])


def test_image_folder_round_trip(tmp_path):
    from torchvision.datasets import ImageFolder

    S.write_image_folder(tmp_path, seed=1, sizes={"val": 64})
    folder = ImageFolder(str(tmp_path / "val"))
    assert folder.classes == sorted(S.CLASSES)
    assert len(folder) == 64
    mem = S.SyntheticShapes("val", 64, seed=1)
    for path, target in folder.samples:
        index = int(path.rsplit("/", 1)[1].split(".")[0])
        from PIL import Image

        assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), mem.images[index])
        assert target == mem.labels[index]  # ImageFolder's index is the task's class index


def test_too_small_split_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="misses classes"):
        S.write_image_folder(tmp_path, seed=0, sizes={"val": 3})
