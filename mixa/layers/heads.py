"""One fused q/k/v projection written as three, each straight into the head layout its product reads, for
runtimes where cutting one (B, N, 3C) output into heads costs more than two more calls: ExecuTorch's XNNPACK
delegate copies the whole output in one transpose and then each part in a strided slice, and transposes k
once more for q @ k^T (``mixa.export.lowering.projection_forms``)."""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

Projection = Tuple[torch.Tensor, Optional[torch.Tensor]]


def split_qkv(weight: torch.Tensor, bias: Optional[torch.Tensor], q_scale: float = 1.0) -> List[Projection]:
    """The (weight, bias) of q, k and v in a fused ``qkv`` linear's (3C, C_in) weight, q multiplied by
    ``q_scale`` (softmax's d^-1/2 folded into the projection: one elementwise op fewer per layer)."""
    weights = weight.detach().chunk(3)
    biases = bias.detach().chunk(3) if bias is not None else (None, None, None)
    scales = (q_scale, 1.0, 1.0)
    return [(w * s, None if b is None else b * s) for w, b, s in zip(weights, biases, scales)]


def project_heads(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], num_heads: int,
                  tokens_last: bool = False) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` of (B, N, C_in) as (B, heads, N, d), or as (B, heads, d, N) with
    ``tokens_last`` (k^T for q @ k^T, in the one transpose the heads need anyway)."""
    b, n, _ = x.shape
    y = F.linear(x, weight, bias).reshape(b, n, num_heads, -1)
    return y.permute(0, 2, 3, 1) if tokens_last else y.transpose(1, 2)
