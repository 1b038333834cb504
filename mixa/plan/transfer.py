"""The plan's recovery probe: ``steps`` optimiser steps of layer-wise attention transfer (mixa.transfer's
objective, optimiser, schedule and settings) on part of the calibration images, so that a row can be scored by
what the pipeline's first stage recovers instead of by the converted model as it is.

The probe trains on the first half of the calibration images and the row is scored on the other half
(``held_out_split``): 100 steps on a few dozen images fit them, so agreement on the training images says
100% for most rows (7 of 12 on the extremes proxy, whatever the pipeline made of them later) and ranks by
memorisation; the held-out half measures what generalises.

With teacher-forced inputs (mixa.transfer's default) the inputs and targets are the *original's* activations,
the same for every row of a plan: they are captured once per calibration batch and replayed for every row
while they fit in ``activation_budget_bytes``; beyond that each step runs the original again (same numbers,
slower). Settings that feed the student's own inputs run the original every step.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..errors import UsageError
from ..models.attention_layers import attention_layers
from ..transfer.layerwise import TransferStep, capture, parent_path
from ..transfer.run import replaced_layers
from ..transfer.settings import transfer_settings

ACTIVATION_BUDGET_BYTES = 1 << 30
HELD_OUT = 0.5  # the share of the calibration images the probe never trains on: a transferred row's score


def held_out_split(batches: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
    """Calibration batches -> (the probe's training images, the held-out images that score it), as batch
    lists; the held-out part is the last HELD_OUT of the images (at least one each)."""
    images = torch.cat(batches)
    if len(images) < 2:
        raise UsageError("a plan with transfer steps needs at least 2 calibration images (the probe trains on "
                         "half of them and is scored on the other half)")
    scored = min(len(images) - 1, max(1, round(HELD_OUT * len(images))))
    return [images[: len(images) - scored]], [images[len(images) - scored:]]


def probe_settings(steps: int, kind: Optional[str] = None, **overrides) -> Dict[str, Any]:
    """mixa.transfer's settings for ``steps`` steps: its defaults (for ``kind`` when it has per-kind ones),
    then ``overrides``."""
    return transfer_settings(kind=kind, steps=steps, **overrides)


def settings_key(settings: Dict[str, Any]) -> str:
    """A short hash of what a transferred row depends on besides the model and the images (lr, batch,
    schedule, seed, ..., and the held-out share that scores it): a row cached with other transfer settings
    is another row."""
    kept = {k: v for k, v in settings.items() if k not in ("workers", "save_every_steps", "eval_images")}
    kept["held_out"] = HELD_OUT
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:8]


def _nbytes(value) -> int:
    if isinstance(value, Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    return 0


class Probe:
    """Transfer for every row of one plan: the calibration images cut into batches of the transfer batch
    size, and the original's activations at every attention layer, captured on first use and kept while
    they fit in the budget."""

    def __init__(self, original: nn.Module, batches: List[Tensor],
                 activation_budget_bytes: int = ACTIVATION_BUDGET_BYTES):
        self.original = original
        self.images = torch.cat(batches)
        self.budget = activation_budget_bytes
        self.cache: Dict[tuple, Dict[str, Any]] = {}
        self.cached_bytes = 0

    def batches(self, size: int) -> List[Tensor]:
        size = min(size, len(self.images))
        return list(self.images[: len(self.images) // size * size].split(size))

    def _activations(self, size: int, index: int, paths: List[str], target: str) -> Dict[str, Any]:
        """The original's inputs and outputs at every attention layer (or, for the block target, every block
        holding one) on calibration batch ``index``, of which ``paths``."""
        key = (size, index, target)
        if key in self.cache:
            return {p: self.cache[key][p] for p in paths}
        every = [p for p, _ in attention_layers(self.original)]
        if target == "block":
            every = list(dict.fromkeys(parent_path(p) for p in every))
        with torch.no_grad():
            captured = capture(self.original, every, self.batches(size)[index])
        nbytes = _nbytes(captured)
        if self.cached_bytes + nbytes <= self.budget:
            self.cache[key] = captured
            self.cached_bytes += nbytes
        return {p: captured[p] for p in paths}

    def run(self, student: nn.Module, settings: Dict[str, Any], seed: int) -> Dict[str, Any]:
        """``settings["steps"]`` steps of transfer on ``student``'s replaced layers (in place); the batch order
        is drawn from ``seed``. Returns the mean relative error of the layers over the last pass through the
        images."""
        s = settings
        step = TransferStep(self.original, replaced_layers(student), s, torch.device("cpu"), lr=float(s["lr"]),
                            total_steps=s["steps"], warmup_steps=int(round(s["warmup_fraction"] * s["steps"])),
                            student=student)
        size = int(s["batch_size"])
        batches = self.batches(size)
        teacher_forced = s.get("inputs", "teacher") == "teacher"
        if teacher_forced:
            # forward_backward(batch) asks step.targets(batch) for the teacher-forced inputs and targets: here
            # the batch is an index into the calibration batches and the answer comes from the cache
            step.targets = lambda index: self._activations(size, index, list(step.units), s["target"])
        order = torch.Generator().manual_seed(seed)
        recent: List[float] = []
        with torch.enable_grad():
            for n in range(s["steps"]):
                if n % len(batches) == 0:
                    perm = torch.randperm(len(batches), generator=order).tolist()
                index = perm[n % len(batches)]
                errors = step.forward_backward(index if teacher_forced else batches[index])
                recent = (recent + [errors.mean().item()])[-len(batches):]
        student.eval()
        return {"steps": s["steps"], "final_error": sum(recent) / len(recent)}
