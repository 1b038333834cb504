"""2-D rotary position embedding tables (RMT / RAVLT convention), built per grid size and cached.

For head dim d: angles theta_m = 10000^(-m/(d/4-1)), m = 0..d/4-1, each repeated for a consecutive channel
pair (length d/2). Token (r, c) gets the angles r*theta in its first d/2 channels and c*theta in its last
d/2. Use with ``mixa.attention.functional.apply_rope`` (consecutive channel pairs).
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.fx
from torch import Tensor, nn


def rope_angles(head_dim: int, device=None, dtype=None) -> Tensor:
    """The per-pair angle vector of length head_dim/2 (what RAVLT stores as the ``angle`` buffer)."""
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs a head dim divisible by 4; got {head_dim}")
    theta = 1.0 / (10000 ** torch.linspace(0, 1, head_dim // 4, device=device, dtype=dtype))
    return theta.repeat_interleave(2)


def rope_2d_tables(angle: Tensor, height: int, width: int) -> Tuple[Tensor, Tensor]:
    """(cos, sin), each (height*width, 2*len(angle)), tokens in row-major order."""
    rows = torch.arange(height, device=angle.device, dtype=angle.dtype)[:, None] * angle   # (h, d/2)
    cols = torch.arange(width, device=angle.device, dtype=angle.dtype)[:, None] * angle    # (w, d/2)
    phase = torch.cat([rows[:, None, :].expand(height, width, -1),
                       cols[None, :, :].expand(height, width, -1)], dim=-1).reshape(height * width, -1)
    return phase.cos(), phase.sin()


def _tracing() -> bool:
    compiler = getattr(torch, "compiler", None)
    compiling = compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling()
    return compiling or torch.jit.is_tracing() or _fx_tracing()


def _fx_tracing() -> bool:
    """torch.fx.symbolic_trace under way (torch >= 2.5 names it is_fx_symbolic_tracing)."""
    fx = torch.fx._symbolic_trace
    return getattr(fx, "is_fx_symbolic_tracing", fx.is_fx_tracing)()


class RoPE2d(nn.Module):
    """Holds the ``angle`` buffer and returns cached (cos, sin) tables for a grid size."""

    def __init__(self, head_dim: int, device=None, dtype=None):
        super().__init__()
        self.register_buffer("angle", rope_angles(head_dim, device=device, dtype=dtype))
        self._cache: Dict[Tuple[int, int], Tuple[Tensor, Tensor]] = {}

    def forward(self, height: int, width: int) -> Tuple[Tensor, Tensor]:
        if torch.jit.is_scripting():  # (TorchScript compiles only this branch)
            return rope_2d_tables(self.angle.float(), height, width)
        if _tracing():  # a graph must compute the tables, not capture a Python-side cache
            return rope_2d_tables(self.angle.float(), height, width)
        key = (height, width)
        tables = self._cache.get(key)
        if tables is None or tables[0].device != self.angle.device:
            tables = rope_2d_tables(self.angle.float(), height, width)
            self._cache[key] = tables
        return tables

    def _apply(self, fn, *args, **kwargs):
        self._cache.clear()
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self._cache.clear()
        super()._load_from_state_dict(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"head_dim={2 * self.angle.numel()}"
