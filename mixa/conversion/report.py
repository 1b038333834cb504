"""What a conversion did: layer table, cost before/after, agreement with the original."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
from torch import nn

from .. import metrics
from ..macs import count_macs, count_params
from .layers import attention_layers, layer_kind
from .select import model_logits


def input_size(model: nn.Module):
    return tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))


@torch.no_grad()
def agreement(original: nn.Module, converted: nn.Module, batches: List[torch.Tensor]) -> Dict[str, float]:
    """Top-1 match rate (percent) and mean KL(original || converted) on the same images."""
    sums = metrics.agreement(model_logits(original, batches), model_logits(converted, batches))
    return {"top1_agreement": 100.0 * sums["match"] / sums["images"], "mean_kl": sums["kl"] / sums["images"],
            "images": int(sums["images"])}


def conversion_report(original: nn.Module, converted: nn.Module,
                      batches: Optional[List[torch.Tensor]] = None) -> Dict[str, Any]:
    cfg = converted.mixa_config
    scores = cfg["selection"]["scores"]
    kept = set(cfg["selection"]["kept"])
    size = input_size(converted)
    report = {
        "layers": [{"index": i, "path": path, "kind": layer_kind(m), "kept": i in kept,
                    "score": None if scores is None else scores[i]}
                   for i, (path, m) in enumerate(attention_layers(converted))],
        "selection": cfg["selection"]["strategy"],
        "input_size": list(size),
        "params_before": count_params(original), "params_after": count_params(converted),
        "macs_before": count_macs(original, input_size(original)), "macs_after": count_macs(converted, size),
    }
    if batches:
        report["agreement"] = agreement(original, converted, batches)
    return report
