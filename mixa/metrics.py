"""How close a model's predictions are to a reference's: the one place these formulas live.

Every command that reports agreement (convert, eval, distill, plan, the benchmarks) calls ``agreement``;
sensitivity selection ranks layers by ``kl_per_sample``.
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F


def kl_per_sample(reference_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(reference) || softmax(logits)) of every sample, in nats, computed in fp32."""
    ref = F.log_softmax(reference_logits.float(), dim=-1)
    out = F.log_softmax(logits.float(), dim=-1)
    return F.kl_div(out, ref, reduction="none", log_target=True).sum(dim=-1)


def agreement_counts(reference_logits: torch.Tensor, logits: torch.Tensor) -> Dict[str, float]:
    """Sums over a batch (to accumulate across batches and processes): matches, KL, samples."""
    return {"top1_matches": float((reference_logits.argmax(-1) == logits.argmax(-1)).sum()),
            "kl_sum": float(kl_per_sample(reference_logits, logits).sum()),
            "samples": float(reference_logits.shape[0])}


def agreement(reference_logits: torch.Tensor, logits: torch.Tensor) -> Dict[str, float]:
    """Top-1 agreement (percent of samples whose argmax matches the reference's) and mean KL."""
    counts = agreement_counts(reference_logits, logits)
    return summarize_agreement(counts)


def summarize_agreement(counts: Dict[str, float]) -> Dict[str, float]:
    n = max(counts["samples"], 1.0)
    return {"top1_agreement": 100.0 * counts["top1_matches"] / n, "mean_kl": counts["kl_sum"] / n,
            "images": int(counts["samples"])}
