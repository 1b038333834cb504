"""Knowledge-distillation fine-tuning of converted models (``mixa distill`` / ``mixa eval``).

    metrics = mixa.distill.distill("deit_s_rala", "/data/imagenet", "runs/deit_s_rala", recipe="deit_s")
    result = mixa.distill.evaluate("runs/deit_s_rala/best", "/data/imagenet", teacher="auto")

Modules, one concept each: choices (AMP_MODES, KD_KINDS; no third-party imports), recipes (settings; no
torch), losses, augment (a posterize for every Pillow), data (loaders, samplers), teacher (student and teacher
resolution), optim (AdamW groups, cosine schedule), precision (autocast), distributed (processes, running
sums), step (one optimiser step), checkpoint (run directory, exact resume), evaluation, train (the run).

The names below load their module on first use, so that ``mixa distill --help`` reads AMP_MODES and
KD_KINDS without importing torch.
"""
import importlib

_API = {
    "AMP_MODES": "choices", "KD_KINDS": "choices", "DEFAULTS": "recipes", "load_recipe": "recipes",
    "recipe_names": "recipes",
    "cross_entropy": "losses", "kd_loss": "losses", "distillation_loss": "losses",
    "DistillStep": "step", "param_groups": "optim", "build_teacher": "teacher",
    "evaluate": "evaluation", "distill": "train",
}
__all__ = list(_API)


def __getattr__(name):
    if name in _API:
        return getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
