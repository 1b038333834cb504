"""Training recipes: YAML files of settings, the defaults below, then flags on top.

A recipe is a flat mapping whose keys are the fields of ``DEFAULTS``. ``--recipe NAME`` reads the
packaged ``mixa.recipes`` (the repository's recipes/ directory, installed as package data); any path
to a YAML file works too. This module imports no torch. The CLI reads its choices from ``choices``.
"""
from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml

from ..errors import UsageError
from .choices import AMP_MODES, KD_KINDS


# The defaults are the MixA fine-tuning settings (ATTENTION.md section 1) where the paper gives them and
# DeiT's where it does not (kd weight 0.5, temperature 1, smoothing 0.1, RandAugment m9, erasing 0.25).
DEFAULTS: Dict[str, Any] = {
    "epochs": 150,
    "warmup_epochs": 10,
    "warmup_max_fraction": 0.1,  # the warm-up never takes more than this fraction of the run's steps
    "batch_size": 512,        # global batch per optimiser step = per-process batch x processes x accum_steps
    "accum_steps": 1,
    "lr": 1.0e-4,             # for a global batch of lr_base_batch; scaled linearly for other batches
    "lr_base_batch": 512,     # null: no scaling
    "min_lr": 1.0e-6,
    "warmup_lr": 1.0e-6,
    "weight_decay": 0.05,
    "betas": [0.9, 0.999],
    "eps": 1.0e-8,
    "clip_grad": 5.0,         # max global grad norm; null: off
    "amp": "auto",            # one of AMP_MODES
    "ema": False,
    "ema_decay": 0.9998,
    "kd": "soft",             # one of KD_KINDS
    "kd_weight": 0.5,         # loss = (1 - kd_weight) * CE + kd_weight * KD
    "kd_temperature": 1.0,
    "smoothing": 0.1,
    "auto_augment": "rand-m9-mstd0.5-inc1",   # timm RandAugment string; null: off
    "reprob": 0.25,           # random erasing probability
    "remode": "pixel",
    "mixup": 0.0,             # Mixup alpha; 0: off
    "cutmix": 0.0,            # CutMix alpha; 0: off
    "mixup_prob": 1.0,
    "mixup_switch_prob": 0.5,
    "color_jitter": 0.3,
    "hflip": 0.5,             # horizontal-flip probability (0 where left/right is part of the label)
    "scale": [0.08, 1.0],     # RandomResizedCrop area range; [1, 1]: no crop
    "seed": 0,
    "workers": "auto",        # data-loader processes per process; auto: min(4, available cores)
    "eval_batch_size": None,  # null: per-process batch
    "save_every_steps": 500,  # also write RUN/last every N optimiser steps inside an epoch; 0: epoch ends only
    "hidden_weight": 0.0,     # > 0: also match the teacher's per-block hidden states (mixa.distill.losses)
    # Transfer first (mixa.transfer): "auto" = TRANSFER_AUTO below for a converted student, 0 for a model
    # without replaced attention layers; an integer: that many steps; 0: off.
    "transfer_steps": "auto",
    "transfer_lr": None,      # its peak lr; null: mixa.transfer's default (mixa.transfer.settings)
    # its global batch; null: batch_size. A smaller one takes more steps from the same images, which is what a
    # student between near and far needs (docs/transfer.md, "The batch").
    "transfer_batch_size": None,
    # The stage after a transfer stage: KD at lr x after_transfer_lr_scale; "auto" = AFTER_TRANSFER_AUTO below,
    # from the transferred student's agreement with the teacher on training images.
    "after_transfer_lr_scale": "auto",    # a number > 0, or "auto"
    "after_transfer_hidden_weight": 0.0,  # hidden_weight after a transfer stage (0: logit KD only)
    # Set by transfer_steps "auto", not by hand: the converted student was already near the teacher, so it had
    # no transfer stage and its KD is the stage after one (after_transfer_* apply, RUN/best starts as it).
    "stage_from_converted": False,
}

# transfer_steps "auto" for a converted student, keyed on how far it is from the teacher: its top-1
# disagreement with the teacher on the first AFTER_TRANSFER_AUTO["images"] training images, measured before
# anything trains (the same measurement as after_transfer_lr_scale "auto"):
# - near (under ``near_disagreement``): no transfer; its KD is the stage after transfer;
# - under ``short_disagreement``: ``short_steps`` of transfer;
# - under ``kd_disagreement``: the long transfer when it processes no more images than the run's KD will
#   (ImageNet: 2000 steps against tens of epochs); in a shorter run the between transfer, ``between_epochs``
#   passes over the training images at batch ``between_batch`` (the same step bounds), when that processes no
#   more images than the run's KD; else none and KD at the recipe's lr (plain KD: a student KD alone can
#   recover does not wait for a transfer that costs more than the run itself);
# - farther: the long transfer, ``epochs`` passes over the training images, at least ``min_steps``, at most
#   ``max_steps``.
# Measured on the extremes proxy (batch 64; benchmarks/transfer/fine_k6, fine_k2b, far_k2_long, short):
# - the farthest students (k = 0 relu, stella, hedgehog: 55-86% disagreement) need the long transfer (relu
#   k = 0: 92.5% after 50 steps, 97.4% after 100; KD alone 88.6% after 2400 images);
# - between (k = 2 stella, rala, hedgehog; k = 0 rala: 18-43%) KD alone is within about a point of the control
#   after 1300-2000 images, where the long transfer spends 6400 (2.8 times the proxy's KD) before KD starts;
#   over runs of about 9000 images the transfer ends stella k = 2 at 99.5 against KD alone's 98.8 (seeds 1-3),
#   hedgehog k = 2 at 99.4 / 99.4 / 99.9 against 98.6 / 99.1 / 99.2 (seeds 1-3), rala k = 2 at 99.5 against
#   98.6 (seeds 1-3), but rala k = 0 at 98.4 against 99.0 (seeds 1-3): the one row where the long transfer loses;
# - at k = 6, rala and hedgehog (7%) are at 98.4 / 99.5 after a transfer planned for 4 steps (a 6-step plan:
#   98.5 / 98.9 with half as many images again; a 3-step plan anneals before rala has moved: 97.6);
# - transfer wrecks stella k = 6 (3%: 96.9 -> 86.5 after 3 steps), whose KD at the near lr is at 98.0-99.4
#   after two steps (seeds 1-3);
# - a transfer needs steps more than images: at batch 8 one pass over the 800 training images (100 steps) takes
#   stella / rala / hedgehog k = 2 to 98.3 / 96.6 / 99.5 (mean of seeds 1-3), past control - 1 for stella and
#   hedgehog, where batch 64 needed 25 steps and 1600 images for 97.6 / 97.7 / 98.7 (seed 1); the between
#   transfer then the stage reach control - 1 in 800-1056 images on the mean curves, a third to a fifth of
#   KD alone's 2560-3584 (benchmarks/transfer/between).
#
# The long transfer of a student between short and far (where KD alone is the alternative) is probed: after
# ``probe_fraction`` of its steps the partly transferred student is compared with the teacher on the same
# training images, and where it still disagrees on ``probe_disagreement`` percent or more the transfer stops
# there and the run is plain KD from the converted student (the "kd" tier's run, bit for bit, after the
# probe's images). Measured on the extremes proxy (seeds 1-3; benchmarks/transfer/transfer_pace): after 25 of
# the 100 steps, rala k = 0, the one student whose transfer loses (above), agrees with the teacher on
# 87.1 / 89.1 / 91.0% of the 256 training images, while rala, stella and hedgehog k = 2, whose transfer gains,
# agree on 97.3-99.6%; the threshold sits between the two (agreement under 94%: stop). A seed 4 run after the
# threshold was set fell on the same sides: rala k = 0 83.6%, the others 97.3-97.7%.
TRANSFER_AUTO = {"near_disagreement": 5.0, "short_disagreement": 15.0, "short_steps": 4, "kd_disagreement": 50.0,
                 "epochs": 4.0, "min_steps": 100, "max_steps": 2000, "between_batch": 8, "between_epochs": 1.0,
                 "probe_fraction": 0.25, "probe_disagreement": 6.0}

# after_transfer_lr_scale "auto": the transferred student is compared with the teacher on the first
# ``images`` training images (no augmentation). Where it still disagrees on at least ``full_lr_disagreement``
# percent of them, KD runs at the recipe's lr; closer to the teacher, at lr x ``near_scale``. Measured on the
# extremes proxy (benchmarks/transfer):
# - far: rala k = 0 after a transfer that left it at 72.5 (27% disagreement): the recipe's lr took it to 98.1;
# - near: relu k = 0 after 100 transfer steps (97.0%, 3% disagreement): three KD epochs ended at 97.1 (the
#   recipe's lr), 97.9 (lr x 0.2) and 97.4 (lr x 0.1);
# - between 5 and 15% the recipe's lr overshoots too: rala k = 0 after the between transfer (7-10%), three KD
#   epochs, mean of seeds 1-3: control - 1 reached after 1824 images at lr x 0.2, 2080 at lr x 0.5, not within
#   3104 at the recipe's lr, ending at 98.6 / 98.5 / 97.8 (benchmarks/transfer/between, "The stage's lr");
#   stella k = 0 after the long transfer (12%, seed 1): 89.1 / 88.3 / 88.3 after three epochs at lr x 0.2 / 0.5 /
#   1. The one counter-case, off the default's paths: relu k = 0 after a 25-step transfer (9%, seed 1) ends at
#   94.7 / 95.7 / 94.8, lr x 0.5 ahead by about one standard error of the difference.
# The threshold sits between the measured starts, 12% and 27%.
AFTER_TRANSFER_AUTO = {"images": 256, "full_lr_disagreement": 15.0, "near_scale": 0.2}


def auto_lr_scale(agreement: float) -> float:
    """after_transfer_lr_scale "auto" for a transferred student that agrees with the teacher on
    ``agreement`` percent of the training images compared."""
    full = 100.0 - agreement >= AFTER_TRANSFER_AUTO["full_lr_disagreement"]
    return 1.0 if full else AFTER_TRANSFER_AUTO["near_scale"]


def transfer_batch(s: Dict[str, Any]) -> int:
    """The global batch of the transfer stage: transfer_batch_size, else the recipe's batch_size."""
    return s["transfer_batch_size"] or s["batch_size"]


def _passes(epochs: float, train_images: int, batch_size: int) -> int:
    """``epochs`` passes over the training images at ``batch_size``, in steps within [min_steps, max_steps]."""
    steps = round(epochs * train_images / batch_size)
    return int(min(TRANSFER_AUTO["max_steps"], max(TRANSFER_AUTO["min_steps"], steps)))


def long_transfer_steps(train_images: int, batch_size: int) -> int:
    """The long transfer of transfer_steps "auto" (a far student's): TRANSFER_AUTO["epochs"] passes over the
    training images at the run's batch."""
    return _passes(TRANSFER_AUTO["epochs"], train_images, batch_size)


def between_transfer_steps(train_images: int, batch_size: int) -> int:
    """The between transfer of transfer_steps "auto" (a student's between short and far, in a run too short for
    the long one): TRANSFER_AUTO["between_epochs"] passes over the training images at ``batch_size``."""
    return _passes(TRANSFER_AUTO["between_epochs"], train_images, batch_size)


def transfer_tier(agreement: Optional[float], long_dearer: bool, between_dearer: bool) -> str:
    """The tier of transfer_steps "auto" (near, short, long, between, kd) for a converted student that agrees
    with the teacher on ``agreement`` percent of the training images compared (None: not measured, the long
    transfer); ``long_dearer`` / ``between_dearer``: the long / the between transfer would process more images
    than the run's KD."""
    if agreement is None:
        return "long"
    disagreement = 100.0 - agreement
    if disagreement < TRANSFER_AUTO["near_disagreement"]:
        return "near"
    if disagreement < TRANSFER_AUTO["short_disagreement"]:
        return "short"
    if disagreement >= TRANSFER_AUTO["kd_disagreement"] or not long_dearer:
        return "long"
    return "kd" if between_dearer else "between"


def candidate_transfers(train_images: int, batch_size: int,
                        transfer_batch_size: Optional[int] = None) -> Dict[str, Tuple[int, int]]:
    """The long and the between transfer of transfer_steps "auto" as {name: (steps, batch)}, for a run on
    ``train_images`` at ``batch_size``: the long one at the run's batch, the between one at
    TRANSFER_AUTO["between_batch"]; ``transfer_batch_size`` (given by the user) replaces both batches."""
    long_batch = transfer_batch_size or batch_size
    between_batch = transfer_batch_size or TRANSFER_AUTO["between_batch"]
    return {"long": (long_transfer_steps(train_images, long_batch), long_batch),
            "between": (between_transfer_steps(train_images, between_batch), between_batch)}


def choose_transfer(candidates: Dict[str, Tuple[int, int]], agreement: Optional[float] = None,
                    kd_images: Optional[int] = None) -> Tuple[str, int, int]:
    """transfer_steps "auto" as (tier, steps, transfer batch) among ``candidates`` (``candidate_transfers``) for
    a converted student that agrees with the teacher on ``agreement`` percent of the training images compared
    (None: not measured, the long transfer), in a run whose KD processes ``kd_images`` (None: as many as it
    takes)."""
    dearer = {name: kd_images is not None and steps * batch > kd_images for name, (steps, batch) in candidates.items()}
    tier = transfer_tier(agreement, long_dearer=dearer["long"], between_dearer=dearer["between"])
    if tier in candidates:
        return (tier, *candidates[tier])
    return tier, int(TRANSFER_AUTO["short_steps"]) if tier == "short" else 0, candidates["long"][1]


def auto_transfer(train_images: int, batch_size: int, agreement: Optional[float] = None,
                  kd_images: Optional[int] = None, transfer_batch_size: Optional[int] = None) -> Tuple[str, int, int]:
    """``choose_transfer`` for a run on ``train_images`` at ``batch_size`` (and ``transfer_batch_size``, given
    by the user)."""
    return choose_transfer(candidate_transfers(train_images, batch_size, transfer_batch_size), agreement, kd_images)


def probe_steps(tier: str, agreement: Optional[float], steps: int) -> int:
    """After how many of its ``steps`` the transfer of transfer_steps "auto" (``tier``, for a converted student
    that agrees with the teacher on ``agreement`` percent) is probed; 0: it is not. Only the long transfer of a
    student between short and far is: a farther one has no alternative (KD alone stays far from the control)."""
    if tier != "long" or agreement is None or 100.0 - agreement >= TRANSFER_AUTO["kd_disagreement"] or steps < 2:
        return 0
    return int(min(steps - 1, max(1, round(TRANSFER_AUTO["probe_fraction"] * steps))))


def probe_keeps(agreement: float) -> bool:
    """Does the probed transfer go on, for a partly transferred student that agrees with the teacher on
    ``agreement`` percent of the training images compared?"""
    return 100.0 - agreement < TRANSFER_AUTO["probe_disagreement"]


def auto_transfer_steps(train_images: int, batch_size: int, agreement: Optional[float] = None,
                        kd_images: Optional[int] = None) -> int:
    """The steps of ``auto_transfer``."""
    return auto_transfer(train_images, batch_size, agreement, kd_images)[1]


def warmup_steps(settings: Dict[str, Any], steps_per_epoch: int) -> int:
    """Optimiser steps of linear warm-up: the recipe's warmup_epochs, capped at warmup_max_fraction of the
    run (a 150-epoch recipe's 10 epochs stay 10; cut to 3 epochs, the run warms up for 0.3 epochs, not
    the whole run)."""
    total = settings["epochs"] * steps_per_epoch
    cap = int(math.floor(settings["warmup_max_fraction"] * total))
    return int(min(round(settings["warmup_epochs"] * steps_per_epoch), cap))

def _packaged() -> Dict[str, Any]:
    """Named recipes shipped with mixa: name -> resource."""
    try:
        folder = resources.files("mixa.recipes")
    except ModuleNotFoundError:  # a broken install: say so instead of "unknown recipe"
        raise UsageError("the packaged recipes (mixa.recipes) are missing from this install; "
                         "pass a .yaml path to --recipe") from None
    return {entry.name.rsplit(".", 1)[0]: entry for entry in folder.iterdir() if entry.name.endswith(".yaml")}


def recipe_names() -> List[str]:
    return sorted(_packaged())


def recipe_text(name_or_path: str) -> str:
    """The YAML text of a packaged recipe NAME or of a .yaml path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise UsageError(f"recipe file not found: {path}")
        return path.read_text()
    packaged = _packaged()
    if name_or_path not in packaged:
        raise UsageError(f"unknown recipe {name_or_path!r} (known: {', '.join(sorted(packaged)) or 'none'}; "
                         f"or a .yaml path)")
    return packaged[name_or_path].read_text()


def load_recipe(recipe: Optional[Any] = None, **overrides) -> Dict[str, Any]:
    """DEFAULTS <- recipe (name, path or dict) <- overrides that are not None."""
    settings = dict(DEFAULTS)
    if isinstance(recipe, dict):
        given = dict(recipe)
    elif recipe is not None:
        try:
            given = yaml.safe_load(recipe_text(str(recipe))) or {}
        except yaml.YAMLError as err:
            raise UsageError(f"cannot parse recipe {recipe}: {str(err).splitlines()[0]}") from None
        if not isinstance(given, dict):
            raise UsageError(f"recipe {recipe} must be a mapping of settings")
    else:
        given = {}
    given.pop("description", None)
    for source in (given, {k: v for k, v in overrides.items() if v is not None}):
        unknown = sorted(set(source) - set(DEFAULTS))
        if unknown:
            raise UsageError(f"unknown recipe setting(s): {', '.join(unknown)}")
        settings.update(source)
    validate(settings)
    return settings


def validate(s: Dict[str, Any]) -> None:
    def positive(key, integer=True):
        value = s[key]
        if (integer and not isinstance(value, int)) or isinstance(value, bool) or value <= 0:
            raise UsageError(f"{key} must be a positive {'integer' if integer else 'number'}, got {value!r}")

    for key in ("epochs", "batch_size", "accum_steps"):
        positive(key)
    positive("lr", integer=False)
    def number(key, low, high=None):
        value = s[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low or (
                high is not None and value > high):
            raise UsageError(f"{key} must be a number in [{low}, {'inf' if high is None else high}], got {value!r}")

    number("warmup_epochs", 0)
    number("warmup_max_fraction", 0, 1)
    number("hidden_weight", 0)
    if s["after_transfer_lr_scale"] != "auto":
        scale = s["after_transfer_lr_scale"]
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
            raise UsageError(f"after_transfer_lr_scale must be 'auto' or a number > 0, got {scale!r}")
    number("after_transfer_hidden_weight", 0)
    if not isinstance(s["stage_from_converted"], bool):
        raise UsageError(f"stage_from_converted must be true or false, got {s['stage_from_converted']!r}")
    if s["transfer_batch_size"] is not None:
        positive("transfer_batch_size")
    if s["transfer_lr"] is not None:
        number("transfer_lr", 0)
        if not float(s["transfer_lr"]) > 0:
            raise UsageError(f"transfer_lr must be > 0, got {s['transfer_lr']!r}")
    if s["kd"] not in KD_KINDS:
        raise UsageError(f"kd must be one of {', '.join(KD_KINDS)}, got {s['kd']!r}")
    if not 0.0 <= float(s["kd_weight"]) <= 1.0:
        raise UsageError(f"kd_weight must be in [0, 1], got {s['kd_weight']}")
    if float(s["kd_temperature"]) <= 0:
        raise UsageError(f"kd_temperature must be > 0, got {s['kd_temperature']}")
    if s["amp"] not in AMP_MODES:
        raise UsageError(f"amp must be one of {', '.join(AMP_MODES)}, got {s['amp']!r}")
    if not 0.0 <= float(s["smoothing"]) < 1.0:
        raise UsageError(f"smoothing must be in [0, 1), got {s['smoothing']}")
    if s["transfer_steps"] != "auto" and (isinstance(s["transfer_steps"], bool) or not isinstance(s["transfer_steps"], int)
                                          or s["transfer_steps"] < 0):
        raise UsageError(f"transfer_steps must be 'auto' or an integer >= 0, got {s['transfer_steps']!r}")
    if s["workers"] != "auto" and (isinstance(s["workers"], bool) or not isinstance(s["workers"], int)
                                   or s["workers"] < 0):
        raise UsageError(f"workers must be 'auto' or an integer >= 0, got {s['workers']!r}")
