"""Knowledge-distillation fine-tuning of converted models (``mixa distill`` / ``mixa eval``).

    metrics = mixa.distill.distill("deit_s_rala", "/data/imagenet", "runs/deit_s_rala", recipe="deit_s")
    result = mixa.distill.evaluate("runs/deit_s_rala/best", "/data/imagenet", teacher="auto")
"""
from .losses import agreement, cross_entropy, distillation_loss, kd_loss
from .recipes import DEFAULTS, load_recipe
from .train import DistillStep, build_teacher, distill, evaluate, lr_at, param_groups

__all__ = ["distill", "evaluate", "load_recipe", "DEFAULTS", "DistillStep", "build_teacher", "lr_at",
           "param_groups", "cross_entropy", "kd_loss", "distillation_loss", "agreement"]
