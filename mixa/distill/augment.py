"""A posterize for timm's augmentations that works on every Pillow.

Why: timm's RandAugment op ``PosterizeIncreasing`` keeps 4 - 4 * m / 10 bits, so 0 bits
at magnitude 10 (reached with ``m9-mstd0.5``, about 1 image in 500). Pillow < 13 turned 0 bits into a
black image; Pillow >= 13's ``ImageOps.posterize`` raises "bits must be between or equal to 1 and 8".
``posterize`` below computes the same bit mask for 0..8 bits on any Pillow, and ``repair_posterize``
puts it in place of timm's function on the ops of one transform (timm keeps each op's function in
``AugmentOp.aug_fn``), so no global state of timm is patched.
"""
from __future__ import annotations

from timm.data import auto_augment


def posterize(img, bits_to_keep, **_):
    """Keep the ``bits_to_keep`` most significant bits of every channel (0 -> black), like Pillow's
    ImageOps.posterize for 1..8 bits."""
    bits = int(bits_to_keep)
    if bits >= 8:
        return img
    mask = (0xFF << (8 - max(bits, 0))) & 0xFF
    return img.point([value & mask for value in range(256)] * len(img.getbands()))


def repair_posterize(transform):
    """Swap timm's posterize for ``posterize`` in every RandAugment / AugMix / AutoAugment op of
    ``transform`` (a Compose or a single transform). Returns the transform."""
    for t in getattr(transform, "transforms", [transform]):
        ops = list(getattr(t, "ops", []))              # RandAugment, AugMixAugment
        for sub_policy in getattr(t, "policy", []):    # AutoAugment: a list of op lists
            ops.extend(sub_policy)
        for op in ops:
            if getattr(op, "aug_fn", None) is auto_augment.posterize:
                op.aug_fn = posterize
    return transform

