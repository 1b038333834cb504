"""Mixed precision: the autocast dtype an ``amp`` setting (one of AMP_MODES) means on a device."""
from __future__ import annotations

import contextlib
from typing import Optional

import torch

from ..errors import UsageError


def autocast_dtype(amp: str, device: torch.device) -> Optional[torch.dtype]:
    if device.type == "cuda":
        if amp == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp]
    if amp == "fp16":
        raise UsageError("fp16 autocast needs a CUDA device; use --amp bf16 or --amp none on CPU")
    return torch.bfloat16 if amp == "bf16" else None


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
