"""Learnable feature maps of a linear attention kind: the kernel's own parameters, one set per layer.

- ``hedgehog``: Hedgehog (Zhang et al., ICLR 2024): per head, phi(x) = [softmax(x W), softmax(-x W)], a
  separate W (d x d) for queries and for keys, initialised to the identity (the paper's start near the
  identity: phi then depends on q and k alone, like a fixed kernel, and transfer bends it towards softmax).
MixAttention applies the map to q and k (``forward(q, k) -> features``); the kind's core then works on the
features (mixa.attention.functional.feature_linear_attention).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from . import functional as AF

FEATURE_MAPS = ("hedgehog",)


class HedgehogFeatureMap(nn.Module):
    def __init__(self, num_heads: int, head_dim: int):
        super().__init__()
        self.weight_q = nn.Parameter(torch.empty(num_heads, head_dim, head_dim))
        self.weight_k = nn.Parameter(torch.empty(num_heads, head_dim, head_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for weight in (self.weight_q, self.weight_k):
                weight.copy_(torch.eye(weight.shape[-1]).expand_as(weight))

    def forward(self, q: Tensor, k: Tensor) -> Tuple[Tensor, Tensor]:
        """(B, H, N, d) queries and keys -> their (B, H, N, 2d) features, in at least fp32 (one image's
        (H, N, d) -> (H, N, 2d) alike)."""
        return AF.hedgehog_features(q, self.weight_q), AF.hedgehog_features(k, self.weight_k)

    def extra_repr(self) -> str:
        h, d, m = self.weight_q.shape
        return f"heads={h}, head_dim={d}, features={2 * m}"


def make_feature_map(name: Optional[str], num_heads: int, head_dim: int) -> Optional[nn.Module]:
    """The feature-map module for a FEATURE_MAPS name, None for a fixed kernel (name None)."""
    if name is None:
        return None
    if name not in FEATURE_MAPS:
        raise ValueError(f"unknown feature map {name!r}; choose from {', '.join(FEATURE_MAPS)}")
    return HedgehogFeatureMap(num_heads, head_dim)
