"""Which k attention layers keep softmax.

Fixed strategies: ``first``, ``last``, ``uniform`` (the centres of k equal segments of the depth),
an explicit list of indices, and two scored ones (the k layers with the largest scores keep softmax):
``sensitivity``: each layer alone is replaced by the chosen linear kind and scored by the mean KL
divergence KL(original || replaced) of the model's output distribution on calibration data;
``transfer``: every layer's replacement is first trained briefly to imitate its softmax layer
(mixa.transfer, teacher-forced, on the calibration images), then scored like sensitivity with the trained
replacement on held-out calibration images -- the layers linear attention cannot imitate even after
training keep softmax.

Without calibration data the default strategy is ``uniform`` (documented fallback); asking for a scored
strategy without data is an error.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from tqdm import tqdm

from ..errors import UsageError
from ..metrics import kl_per_sample
from ..transfer.layerwise import TransferStep
from ..transfer.settings import transfer_settings

STRATEGIES = ("first", "last", "uniform", "sensitivity", "transfer")
TRANSFER_SELECT_STEPS = 200  # optimiser steps of the short transfer behind --select transfer
# ... at the lr its ranking was measured with (benchmarks/transfer, 16-token task). mixa.transfer's default (6e-3)
# was chosen for 100-step runs on training images and is not measured for this ranking
TRANSFER_SELECT_LR = 2.0e-3
Select = Union[str, Sequence[int], None]


def parse_select(text: str) -> Union[str, List[int]]:
    """CLI form: a strategy name or comma-separated indices ('0,3,5')."""
    if text in STRATEGIES:
        return text
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--select must be one of {', '.join(STRATEGIES)} or indices like 0,3,5; got {text!r}")


def fixed_selection(strategy: str, keep: int, depth: int) -> List[int]:
    if strategy == "first":
        return list(range(keep))
    if strategy == "last":
        return list(range(depth - keep, depth))
    if strategy == "uniform":
        return [math.floor((i + 0.5) * depth / keep) for i in range(keep)]
    raise UsageError(f"unknown selection {strategy!r}; choose from {', '.join(STRATEGIES)} or a list of indices")


def validate_indices(indices: Sequence[int], depth: int) -> List[int]:
    out = sorted(set(int(i) for i in indices))
    if len(out) != len(indices):
        raise UsageError(f"layer indices must be distinct; got {list(indices)}")
    bad = [i for i in out if not 0 <= i < depth]
    if bad:
        raise UsageError(f"layer index {bad[0]} out of range: the model has {depth} attention layers (0..{depth - 1})")
    return out


def kl_to_reference(reference_logits: torch.Tensor, logits: torch.Tensor) -> float:
    """Mean over samples of KL(softmax(reference) || softmax(logits)), in nats."""
    return float(kl_per_sample(reference_logits, logits).mean())


@torch.no_grad()
def model_logits(model: nn.Module, batches: Iterable[torch.Tensor]) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x) for x in batches])


@torch.no_grad()
def sensitivity_scores(model: nn.Module, layers: List[Tuple[str, nn.Module]], batches: List[torch.Tensor],
                       make_replacement: Callable[[nn.Module], nn.Module],
                       set_layer: Callable[[nn.Module, str, nn.Module], nn.Module],
                       progress: bool = True) -> List[float]:
    """KL(original || layer i alone replaced) for every layer i, on the same calibration batches."""
    reference = model_logits(model, batches)
    scores = []
    for path, original in tqdm(layers, desc="sensitivity", unit="layer", disable=not progress, leave=False):
        set_layer(model, path, make_replacement(original).eval())
        try:
            scores.append(kl_to_reference(reference, model_logits(model, batches)))
        finally:
            set_layer(model, path, original)
    return scores


def transfer_scores(model: nn.Module, layers: List[Tuple[str, nn.Module]], batches: List[torch.Tensor],
                    make_replacement: Callable[[nn.Module], nn.Module],
                    set_layer: Callable[[nn.Module, str, nn.Module], nn.Module],
                    progress: bool = True, steps: Optional[int] = None) -> List[float]:
    """Sensitivity after transfer: every layer's replacement first gets ``steps`` (default
    TRANSFER_SELECT_STEPS) of teacher-forced transfer on the calibration batches, then each trained
    replacement alone is scored by KL(original || model with it) on held-out batches (the last quarter;
    all of them when there is one). ``model`` is the reference and stays untouched.

    Why the output KL and not the layer's own relative error: an error early in the network is amplified
    by every layer after it. Ranked by their own error, the first layer looked easy to imitate (layer 10
    was kept instead) and the students lost up to 6 points after short KD; ranked by what the remaining
    error does to the output, the choice was as good as sensitivity's or better (benchmarks/transfer)."""
    steps = steps or TRANSFER_SELECT_STEPS
    device = next(model.parameters()).device
    trained = {id(original): make_replacement(original) for _, original in layers}
    held = max(1, len(batches) // 4) if len(batches) > 1 else 0
    train, held_out = batches[:len(batches) - held], batches[len(batches) - held:] or batches
    settings = transfer_settings(steps=steps, lr=TRANSFER_SELECT_LR, amp="none", workers=0)
    stepper = TransferStep(model.eval(), {path: trained[id(m)] for path, m in layers}, settings, device,
                           settings["lr"], steps, int(round(settings["warmup_fraction"] * steps)))
    for step in tqdm(range(steps), desc="transfer scores", disable=not progress, leave=False):
        stepper.forward_backward(train[step % len(train)].to(device))
    return sensitivity_scores(model, layers, held_out, lambda original: trained[id(original)].eval(), set_layer,
                              progress=progress)


SCORED = {"sensitivity": sensitivity_scores, "transfer": transfer_scores}


def top_k(scores: Sequence[float], keep: int) -> List[int]:
    """Indices of the k largest scores (ties -> the earlier layer), sorted by index."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return sorted(order[:keep])
