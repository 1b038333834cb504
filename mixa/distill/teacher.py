"""The models of a run: the student (a saved mixa model or a timm name) and its teacher, by default
the original model recorded in the student's config (the same resolution for distill, eval, transfer)."""
from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from ..data import data_config
from ..errors import MixaError, UsageError
from ..models import create_model
from ..saved import Original, build_original, load, load_target, original_of
from ..saved import recorded_original as saved_original

ModelSource = Union[str, os.PathLike, nn.Module]


def load_model(model: ModelSource, **source) -> nn.Module:
    """An nn.Module (used as is), a saved mixa model directory or a timm name/alias; ``source`` are the
    weight-source options of a name (pretrained, checkpoint, num_classes, timm kwargs)."""
    if isinstance(model, nn.Module):
        return model
    return load_target(str(model), **{k: v for k, v in source.items() if v is not None})


def recorded_original(model: ModelSource, loaded: Optional[nn.Module] = None) -> Union[Original, nn.Module, None]:
    """The model's original as mixa.saved.recorded_original resolves it (an Original to build, or the
    unconverted model itself); None when it can't be recorded."""
    try:
        return saved_original(loaded if loaded is not None else load_model(model))
    except UsageError:
        return None


def build_teacher(teacher, original: Union[Original, nn.Module, None],
                  checkpoint: Optional[str] = None) -> nn.Module:
    """The frozen teacher. ``None``/"auto": the ``original`` recorded for the student (recorded_original:
    its timm pretrained weights or checkpoint, its timm kwargs, the input size staying the student's; an
    unconverted student is its own original). A saved mixa directory, a timm name/alias (pretrained, or
    ``checkpoint``) or an nn.Module also work."""
    if isinstance(teacher, nn.Module):
        model = teacher
    elif (teacher is None or teacher == "auto") and isinstance(original, nn.Module) and checkpoint is None:
        model = copy.deepcopy(unwrap(original))  # an unconverted model is its own original: a frozen copy
    elif teacher is None or teacher == "auto":
        if isinstance(original, nn.Module):  # its architecture, with the weights of --teacher-checkpoint
            original = original_of(unwrap(original))
        if original is None:
            raise MixaError("the model records no original to compare with; pass --teacher NAME|DIR")
        if (checkpoint or original.checkpoint) is None and original.pretrained is False \
                and os.environ.get("RANK", "0") == "0":
            print(f"mixa: warning: the model was converted from a randomly initialised {original.model}; "
                  f"the default teacher has random weights (pass --teacher or --teacher-checkpoint)", file=sys.stderr)
        model = build_original(original, checkpoint)
    elif Path(str(teacher)).is_dir():
        model = load(teacher)
    else:
        if os.sep in str(teacher) or str(teacher).startswith("."):
            raise MixaError(f"teacher not found: {teacher} (not a saved mixa model directory)")
        model = create_model(str(teacher), pretrained=checkpoint is None, checkpoint=checkpoint)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def renormalizer(student: nn.Module, teacher: nn.Module):
    """Map student-normalised images to the teacher's normalisation (None when they agree)."""
    s, t = data_config(student), data_config(teacher)
    if tuple(s["mean"]) == tuple(t["mean"]) and tuple(s["std"]) == tuple(t["std"]):
        return None
    ms, ss, mt, st = (torch.tensor(v).view(1, -1, 1, 1) for v in (s["mean"], s["std"], t["mean"], t["std"]))
    return lambda x: (x * ss.to(x) + ms.to(x) - mt.to(x)) / st.to(x)


def check_teacher(student: nn.Module, teacher: nn.Module) -> None:
    s, t = getattr(unwrap(student), "num_classes", None), getattr(teacher, "num_classes", None)
    if s is not None and t is not None and s != t:
        raise MixaError(f"the teacher predicts {t} classes but the student {s}; pass a teacher with {s} classes")


def check_classes(model: nn.Module, dataset, where: Path) -> None:
    n = getattr(unwrap(model), "num_classes", None)
    if n is not None and n != len(dataset.classes):
        raise MixaError(f"{where} has {len(dataset.classes)} class folders but the model has {n} classes")
