"""Evaluation: top-1/top-5/loss of a model on labelled images, and its agreement with a reference model
(``mixa eval``, and distill's validation after every epoch)."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .. import metrics
from ..errors import MixaError, UsageError
from .data import split_dir, val_loader
from .distributed import Dist, Sums
from .precision import autocast, autocast_dtype
from .teacher import (ModelSource, build_teacher, check_classes, check_teacher, load_model, recorded_original,
                      renormalizer, unwrap)


@dataclasses.dataclass
class EvalSums(Sums):
    images: float = 0.0
    top1: float = 0.0
    top5: float = 0.0
    loss: float = 0.0
    match: float = 0.0
    kl: float = 0.0
    skipped: float = 0.0


@torch.no_grad()
def evaluate_loader(model: nn.Module, loader, teacher: Optional[nn.Module] = None, device=None,
                    dtype: Optional[torch.dtype] = None, dist: Optional[Dist] = None,
                    progress: bool = False, desc: str = "eval") -> Dict[str, Any]:
    """top-1/top-5/CE loss over the loader's readable images, and with a teacher the top-1 agreement and
    mean KL(teacher || model). Stand-ins for unreadable files are counted in ``skipped``, not scored."""
    device = device or torch.device("cpu")
    was_training = model.training
    model.eval()
    to_teacher = renormalizer(unwrap(model), teacher) if teacher is not None else None
    sums = EvalSums()
    for images, target, skipped in tqdm(loader, desc=desc, disable=not progress, leave=False):
        readable = skipped == 0  # a stand-in for an unreadable file is scored at its own index
        sums.add(skipped=(~readable).sum().item())
        if not readable.all():
            images, target = images[readable], target[readable]
        if not len(target):
            continue
        images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
        with autocast(device, dtype):
            logits = model(images).float()
        hits = metrics.topk_hits(logits, target)
        sums.add(images=target.numel(), top1=hits[1], top5=hits[5],
                 loss=F.cross_entropy(logits, target, reduction="sum").item())
        if teacher is not None:
            with autocast(device, dtype):
                t_logits = teacher(to_teacher(images) if to_teacher else images).float()
            agree = metrics.agreement_sums(t_logits, logits)
            sums.add(match=agree["match"], kl=agree["kl"])
    model.train(was_training)
    sums = sums.reduced(dist)
    n = max(sums.images, 1.0)
    result = {"images": int(sums.images), "top1": 100.0 * sums.top1 / n, "top5": 100.0 * sums.top5 / n,
              "loss": sums.loss / n, "skipped": int(sums.skipped)}
    if teacher is not None:
        result.update({"agreement_top1": 100.0 * sums.match / n, "mean_kl": sums.kl / n})
    return result


def evaluate(model: ModelSource, data_dir, teacher=None, *, teacher_checkpoint: Optional[str] = None,
             batch_size: int = 64, workers="auto", max_images: Optional[int] = None, amp: str = "none",
             device: Optional[str] = None, progress: bool = True, **source) -> Dict[str, Any]:
    """Evaluate ``model`` (a saved mixa directory, a timm name with ``source`` weight options, or a module)
    on ``data_dir/val`` (or a directory of class folders).

    ``teacher``: None/"none" (no agreement), "auto" (the original recorded for the model; ``mixa eval``'s
    default), a timm name/alias, a saved model directory or a module. Returns top1, top5 (percent), loss,
    images, skipped, and agreement_top1 (percent) and mean_kl when a teacher was compared. When "auto"
    cannot be built (offline, no checkpoint, nothing recorded), the result has ``agreement_missing``
    (one line saying why) and everything else.
    """
    if batch_size < 1 or (max_images is not None and max_images < 1):
        raise UsageError("--batch-size and --num-images must be >= 1")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = autocast_dtype(amp, dev)
    net = load_model(model, **source)
    loader = val_loader(data_dir, net, batch_size=batch_size, workers=workers, max_images=max_images)
    check_classes(net, loader.dataset, split_dir(data_dir, "val"))
    reference, missing = None, None
    if teacher is not None and teacher != "none":
        try:
            reference = build_teacher(teacher, recorded_original(model, net), teacher_checkpoint)
        except MixaError as err:
            if teacher != "auto" or teacher_checkpoint is not None:
                raise
            missing = str(err)
    if reference is not None:
        check_teacher(net, reference)
        reference.to(dev)
    net.to(dev)
    result = evaluate_loader(net, loader, reference, dev, dtype, progress=progress)
    if missing is not None:
        result["agreement_missing"] = missing
    return result
