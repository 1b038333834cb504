"""Comparisons of logits: KL to a reference, agreement with a reference, top-k hits (pure functions).

One owner for these numbers: conversion's report and sensitivity scores, distill's validation, ``mixa
eval``, ``mixa plan`` and ``mixa transfer`` all call them, so "agreement" means the same thing everywhere.
"""
from __future__ import annotations

import math
from typing import Dict, Sequence

import torch
import torch.nn.functional as F
from timm.utils import accuracy
from torch import Tensor


def kl_per_sample(reference_logits: Tensor, logits: Tensor) -> Tensor:
    """KL(softmax(reference) || softmax(logits)) of every sample, in nats, computed in fp32."""
    ref = F.log_softmax(reference_logits.float(), dim=-1)
    out = F.log_softmax(logits.float(), dim=-1)
    return F.kl_div(out, ref, reduction="none", log_target=True).sum(dim=-1)


@torch.no_grad()
def agreement_sums(reference_logits: Tensor, logits: Tensor) -> Dict[str, float]:
    """Sums over a batch: ``images``, ``match`` (same top-1 class as the reference) and ``kl``
    (KL(reference || logits) summed over samples). Callers add batches (and processes), then summarise."""
    return {"images": float(logits.shape[0]),
            "match": float((reference_logits.argmax(-1) == logits.argmax(-1)).sum()),
            "kl": float(kl_per_sample(reference_logits, logits).sum())}


def summarize_agreement(sums: Dict[str, float]) -> Dict[str, float]:
    """Sums -> top-1 agreement (percent of images whose argmax matches the reference's) and mean KL."""
    n = max(sums["images"], 1.0)
    return {"top1_agreement": 100.0 * sums["match"] / n, "mean_kl": sums["kl"] / n, "images": int(sums["images"])}


def agreement(reference_logits: Tensor, logits: Tensor) -> Dict[str, float]:
    """Top-1 agreement (percent) and mean KL(reference || logits) of one set of logits."""
    return summarize_agreement(agreement_sums(reference_logits, logits))


@torch.no_grad()
def topk_hits(logits: Tensor, target: Tensor, ks: Sequence[int] = (1, 5)) -> Dict[int, float]:
    """Number of samples whose label is among the top-k logits, for each k (timm's accuracy, as counts)."""
    n = target.numel()
    return {k: round(float(acc) * n / 100.0) for k, acc in zip(ks, accuracy(logits, target, topk=tuple(ks)))}


def top1_standard_error(top1: float, images: int) -> float:
    """The binomial standard error (points) of a top-1 (percent) measured on ``images`` images, floored at
    what one image in ``images`` would give, so a top-1 of 0 or 100% is not taken as exact."""
    n = max(int(images), 1)
    p = min(max(top1 / 100.0, 0.0), 1.0)
    return 100.0 * math.sqrt(max(p * (1.0 - p), 0.25 / n) / n)


def clearly_above(top1: float, reference: float, images: int, standard_errors: float = 1.0) -> bool:
    """Is ``top1`` above ``reference`` (both percent, each measured on the same ``images`` images) by more
    than ``standard_errors`` standard errors of their difference? (Their errors taken as independent, which
    overstates the error of two close models scored on the same images: the test is conservative.)"""
    spread = math.hypot(top1_standard_error(top1, images), top1_standard_error(reference, images))
    return top1 - reference > standard_errors * spread
