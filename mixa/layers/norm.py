"""LayerNorm over the last axis written as matrix products and elementwise ops, for runtimes that have no
LayerNorm kernel in their accelerated backend (ExecuTorch's XNNPACK delegate in executorch 1.5 takes
neither ``native_layer_norm`` nor a mean over a 3-D tensor's last axis; ``mixa.export.lowering``)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def averaging_row(channels: int, dtype=torch.float32) -> torch.Tensor:
    """The (1, C) weight whose ``F.linear`` is the mean over the last axis: every entry 1 / C."""
    return torch.full((1, channels), 1.0 / channels, dtype=dtype)


def layer_norm_by_averaging(x: torch.Tensor, averaging: torch.Tensor, weight: Optional[torch.Tensor],
                            bias: Optional[torch.Tensor], eps: float) -> torch.Tensor:
    """``F.layer_norm(x, (C,), weight, bias, eps)``, the mean and the (biased) variance taken as ``F.linear``
    with ``averaging`` (``averaging_row(C)``), so that a backend that runs fully connected layers runs them.
    Two passes (the variance of the centred values), as LayerNorm kernels do: E[x^2] - E[x]^2 would cancel
    catastrophically on residual streams with a large mean."""
    centred = x - F.linear(x, averaging)
    variance = F.linear(centred * centred, averaging)
    y = centred * torch.rsqrt(variance + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y
