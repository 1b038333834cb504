"""Loss maths of knowledge-distillation fine-tuning (pure functions on logits).

Conventions (documented in README.md, "Distill and evaluate"):
- ``cross_entropy`` takes class indices (label smoothing applied here) or soft targets (rows summing
  to 1, e.g. from Mixup/CutMix, which already carry the smoothing).
- ``kd_loss``: "soft" is Hinton's KL(teacher_T || student_T) * T^2, averaged over the batch;
  "hard" is cross-entropy against the teacher's top-1 class (DeiT's hard distillation).
- ``distillation_loss`` = (1 - weight) * CE(class head, labels) + weight * KD(kd head, teacher),
  the DeiT form; the kd head is the distillation head of a two-head DeiT, else the class head.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .recipes import KD_KINDS


def cross_entropy(logits: Tensor, target: Tensor, smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy; ``target`` is (B,) class indices or (B, C) probabilities (no smoothing added)."""
    if target.dim() == logits.dim():  # soft targets
        return F.cross_entropy(logits.float(), target.float())
    return F.cross_entropy(logits.float(), target.long(), label_smoothing=smoothing)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, kind: str = "soft",
            temperature: float = 1.0) -> Tensor:
    """Distillation term between student and (detached) teacher logits."""
    teacher_logits = teacher_logits.detach().float()
    student_logits = student_logits.float()
    if kind == "soft":
        log_s = F.log_softmax(student_logits / temperature, dim=-1)
        log_t = F.log_softmax(teacher_logits / temperature, dim=-1)
        return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * temperature ** 2
    if kind == "hard":
        return F.cross_entropy(student_logits, teacher_logits.argmax(-1))
    raise ValueError(f"unknown kd kind {kind!r} (choose from {', '.join(k for k in KD_KINDS if k != 'none')})")


def split_heads(output: Union[Tensor, Tuple[Tensor, Tensor]]) -> Tuple[Tensor, Tensor]:
    """(class logits, kd logits): a two-head DeiT in distilled training returns a pair."""
    if isinstance(output, (tuple, list)):
        return output[0], output[1]
    return output, output


def distillation_loss(output, target: Tensor, teacher_logits: Optional[Tensor], kd: str = "soft",
                      weight: float = 0.5, temperature: float = 1.0,
                      smoothing: float = 0.0) -> Dict[str, Tensor]:
    """Total loss and its parts for one batch. ``output`` is the student's output (logits or a pair)."""
    cls_logits, kd_logits = split_heads(output)
    ce = cross_entropy(cls_logits, target, smoothing)
    if kd == "none" or teacher_logits is None:
        if kd_logits is not cls_logits:  # the distillation head still learns: from the labels
            ce = 0.5 * (ce + cross_entropy(kd_logits, target, smoothing))
        return {"loss": ce, "ce": ce.detach(), "kd": torch.zeros_like(ce).detach()}
    kdl = kd_loss(kd_logits, teacher_logits, kd, temperature)
    loss = (1.0 - weight) * ce + weight * kdl
    return {"loss": loss, "ce": ce.detach(), "kd": kdl.detach()}
