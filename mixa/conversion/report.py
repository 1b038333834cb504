"""What a conversion did: layer table, cost before/after, agreement with the original."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
from torch import nn

from ..macs import count_macs, count_params
from ..report import human, table
from ..models.attention_layers import attention_layers, layer_kind
from ..metrics import agreement
from .select import model_logits


def input_size(model: nn.Module):
    return tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))


def model_agreement(original: nn.Module, converted: nn.Module, batches: List[torch.Tensor]) -> Dict[str, float]:
    """Top-1 agreement (percent) and mean KL(original || converted) on the same images."""
    return agreement(model_logits(original, batches), model_logits(converted, batches))


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
        report["agreement"] = model_agreement(original, converted, batches)
    return report


def print_conversion_report(report: Dict[str, Any]) -> None:
    """The layer table, the cost before/after and the agreement, as ``mixa convert`` prints them."""
    rows = [(l["index"], l["path"], l["kind"], "keep" if l["kept"] else "replace",
             None if l["score"] is None else f"{l['score']:.4g}") for l in report["layers"]]
    score = "transfer (rel. error)" if report["selection"] == "transfer" else "sensitivity (KL)"
    print(table(rows, ["layer", "module", "kind", "", score]))
    print()
    cost = [("params", human(report["params_before"]), human(report["params_after"]),
             f"{report['params_after'] / report['params_before']:.3f}"),
            ("MACs", human(report["macs_before"]), human(report["macs_after"]),
             f"{report['macs_after'] / report['macs_before']:.3f}")]
    print(table(cost, ["", "original", "converted", "ratio"]))
    if "agreement" in report:
        a = report["agreement"]
        print(f"\nagreement with the original on {a['images']} calibration images: "
              f"top-1 {a['top1_agreement']:.1f}%, mean KL {a['mean_kl']:.4f}")
