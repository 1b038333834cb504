"""Training recipes: YAML files of settings, the defaults below, then flags on top.

A recipe is a flat mapping whose keys are the fields of ``DEFAULTS``. ``--recipe NAME`` looks for
``recipes/NAME.yaml`` in the source tree; any path to a YAML file works too.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

from ..errors import UsageError

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"

# The defaults are the MixA fine-tuning settings (ATTENTION.md section 1) where the paper gives them and
# DeiT's where it does not (kd weight 0.5, temperature 1, smoothing 0.1, RandAugment m9, erasing 0.25).
DEFAULTS: Dict[str, Any] = {
    "epochs": 150,
    "warmup_epochs": 10,
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
    "amp": "auto",            # auto (bf16 on CUDA if supported, else fp16; off on CPU) | bf16 | fp16 | none
    "ema": False,
    "ema_decay": 0.9998,
    "kd": "soft",             # soft | hard | none
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
    "seed": 0,
    "workers": 8,
    "eval_batch_size": None,  # null: per-process batch
    "save_every_steps": 500,  # also write RUN/last every N optimiser steps inside an epoch; 0: epoch ends only
}

AMP_CHOICES = ("auto", "bf16", "fp16", "none")


def recipe_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise UsageError(f"recipe file not found: {path}")
        return path
    path = RECIPES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")) if RECIPES_DIR.is_dir() else []
        raise UsageError(f"unknown recipe {name_or_path!r} (known: {', '.join(known) or 'none'}; or a .yaml path)")
    return path


def load_recipe(recipe: Optional[Any] = None, **overrides) -> Dict[str, Any]:
    """DEFAULTS <- recipe (name, path or dict) <- overrides that are not None."""
    import yaml

    settings = dict(DEFAULTS)
    if isinstance(recipe, dict):
        given = dict(recipe)
    elif recipe is not None:
        path = recipe_path(str(recipe))
        try:
            given = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise UsageError(f"cannot parse recipe {path}: {str(err).splitlines()[0]}") from None
        if not isinstance(given, dict):
            raise UsageError(f"recipe {path} must be a mapping of settings")
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
    if s["warmup_epochs"] < 0 or s["warmup_epochs"] > s["epochs"]:
        # a warm-up longer than the run is clamped rather than refused (tiny test runs)
        s["warmup_epochs"] = max(0, min(s["warmup_epochs"], s["epochs"]))
    if s["kd"] not in ("soft", "hard", "none"):
        raise UsageError(f"kd must be soft, hard or none, got {s['kd']!r}")
    if not 0.0 <= float(s["kd_weight"]) <= 1.0:
        raise UsageError(f"kd_weight must be in [0, 1], got {s['kd_weight']}")
    if float(s["kd_temperature"]) <= 0:
        raise UsageError(f"kd_temperature must be > 0, got {s['kd_temperature']}")
    if s["amp"] not in AMP_CHOICES:
        raise UsageError(f"amp must be one of {', '.join(AMP_CHOICES)}, got {s['amp']!r}")
    if not 0.0 <= float(s["smoothing"]) < 1.0:
        raise UsageError(f"smoothing must be in [0, 1), got {s['smoothing']}")
    if s["workers"] < 0:
        raise UsageError(f"workers must be >= 0, got {s['workers']}")
