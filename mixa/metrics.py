"""Comparisons of logits: KL to a reference, agreement with a reference, top-k hits (pure functions).

One owner for these numbers: conversion's report and sensitivity scores, distill's validation, ``mixa
eval``, ``mixa plan`` and ``mixa transfer`` all call them, so "agreement" means the same thing everywhere.
"""
from __future__ import annotations

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
