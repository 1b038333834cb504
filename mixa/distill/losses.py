"""Loss maths of knowledge-distillation fine-tuning (pure functions on logits).

Conventions (documented in README.md, "Distill and evaluate"):
- ``cross_entropy`` takes class indices (label smoothing applied here) or soft targets (rows summing
  to 1, e.g. from Mixup/CutMix, which already carry the smoothing).
- ``kd_loss``: "soft" is Hinton's KL(teacher_T || student_T) * T^2, averaged over the batch;
  "hard" is cross-entropy against the teacher's top-1 class (DeiT's hard distillation).
- ``distillation_loss`` = (1 - weight) * CE(class head, labels) + weight * KD(kd head, teacher),
  the DeiT form; the kd head is the distillation head of a two-head DeiT, else the class head;
  plus ``hidden_weight`` * ``hidden_state_loss`` when hidden states are given.
- ``hidden_state_loss``: the mean over blocks of the relative squared error ||s - t||^2 / ||t||^2 of the
  student's block output against the teacher's on the same images (the student runs on its own outputs,
  not teacher-forced: ViT-AdaLA's second stage, arXiv 2603.16063). Relative, as in mixa.transfer, so that
  deep blocks with large activations do not outweigh the others.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..transfer.layerwise import relative_error
from .choices import KD_KINDS


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


def hidden_state_loss(student_states: List[Tensor], teacher_states: List[Tensor]) -> Tensor:
    """Mean over blocks of each block's relative squared error (fp32)."""
    if len(student_states) != len(teacher_states) or not student_states:
        raise ValueError(f"{len(student_states)} student and {len(teacher_states)} teacher hidden states")
    return torch.stack([relative_error(s, t.detach()) for s, t in zip(student_states, teacher_states)]).mean()


def distillation_loss(output, target: Tensor, teacher_logits: Optional[Tensor], kd: str = "soft",
                      weight: float = 0.5, temperature: float = 1.0, smoothing: float = 0.0,
                      hidden: Optional[Tuple[List[Tensor], List[Tensor]]] = None,
                      hidden_weight: float = 0.0) -> Dict[str, Tensor]:
    """Total loss and its parts for one batch. ``output`` is the student's output (logits or a pair);
    ``hidden`` the (student, teacher) block outputs, added with ``hidden_weight``."""
    cls_logits, kd_logits = split_heads(output)
    ce = cross_entropy(cls_logits, target, smoothing)
    if kd == "none" or teacher_logits is None:
        if kd_logits is not cls_logits:  # the distillation head still learns: from the labels
            ce = 0.5 * (ce + cross_entropy(kd_logits, target, smoothing))
        loss, kdl = ce, torch.zeros_like(ce)
    else:
        kdl = kd_loss(kd_logits, teacher_logits, kd, temperature)
        loss = (1.0 - weight) * ce + weight * kdl
    parts = {"ce": ce.detach(), "kd": kdl.detach(), "hidden": torch.zeros_like(ce).detach()}
    if hidden is not None and hidden_weight:
        hid = hidden_state_loss(*hidden)
        loss = loss + hidden_weight * hid
        parts["hidden"] = hid.detach()
    return {"loss": loss, **parts}
