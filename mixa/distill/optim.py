"""AdamW with timm's weight-decay groups and timm's per-step cosine schedule with linear warm-up."""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Dict, List, Set

import torch
from timm.optim import param_groups_weight_decay
from timm.scheduler import CosineLRScheduler
from torch import nn

from ..attention import MixAttention


def no_weight_decay_patterns(model: nn.Module) -> Set[str]:
    """The model's own declaration, as timm reads it: names from ``no_weight_decay()`` and substrings from
    ``no_weight_decay_keywords()`` (RAVLT's layer-scale ``gamma_``); plus the gate and LePE of every
    MixAttention: they start neutral (gate = 1, LePE = 0; see mixa.attention.modules) and decay would pull
    them elsewhere than where they start, so they take none, like norms and biases."""
    patterns: Set[str] = set()
    if hasattr(model, "no_weight_decay"):
        patterns |= set(model.no_weight_decay())
    if hasattr(model, "no_weight_decay_keywords"):
        patterns |= {f"*{keyword}*" for keyword in model.no_weight_decay_keywords()}
    for name, module in model.named_modules():
        if isinstance(module, MixAttention):
            patterns |= {f"{name}.gate.*", f"{name}.lepe.*"}
    return patterns


def param_groups(model: nn.Module, weight_decay: float) -> List[Dict[str, Any]]:
    """timm's param_groups_weight_decay: no decay for 1-d parameters, biases and the patterns above."""
    return param_groups_weight_decay(model, weight_decay, no_weight_decay_list=no_weight_decay_patterns(model))


def create_optimizer(params, lr: float, settings: Dict[str, Any]) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=lr, betas=tuple(settings["betas"]), eps=settings["eps"])


def create_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                     settings: Dict[str, Any]):
    """Linear warm-up from ``warmup_lr`` over ``warmup_steps`` optimiser steps, then cosine down to ``min_lr``
    at ``total_steps``; call ``step_update(step)`` before every optimiser step (step counts from 0).
    A run of one step after the warm-up has no cosine to anneal: timm logs a warning meant for its own
    users then, which says nothing to ours, so it is filtered out here."""
    with _quiet_cosine_warning():
        return CosineLRScheduler(optimizer, t_initial=max(1, total_steps - warmup_steps), lr_min=settings["min_lr"],
                                 warmup_t=warmup_steps, warmup_lr_init=settings["warmup_lr"], warmup_prefix=True,
                                 t_in_epochs=False)


@contextlib.contextmanager
def _quiet_cosine_warning():
    def keep(record: logging.LogRecord) -> bool:
        return "Cosine annealing scheduler will have no effect" not in record.getMessage()

    logger = logging.getLogger(CosineLRScheduler.__module__)
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def clipped_step(optimizer: torch.optim.Optimizer, parameters, clip_grad, scaler=None) -> None:
    """One optimiser update of already-computed gradients: unscale (AMP), clip the global norm when
    ``clip_grad`` is set, step through the GradScaler when there is one, and clear the gradients."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    if clip_grad:
        torch.nn.utils.clip_grad_norm_(parameters, float(clip_grad))
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
