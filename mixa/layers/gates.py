"""Output gates phi(x) for rank-augmented attention: ``y * phi(x)``, each starting as phi = 1.

RALA multiplies the attention output by phi(x), a function of the block's input, and gets its rank boost
from that Hadamard product whatever phi is (the paper's ablation: phi = identity or tanh change almost
nothing). The full linear phi costs N D^2 MACs per layer -- as much as the q projection -- so cheaper
forms are offered. Every gate is built neutral (phi(x) = 1 exactly), so a freshly converted layer is the
plain kernelised attention of its pretrained weights.

- ``linear``: phi(x) = W x + b, D x D (RALA's form). W = 0, b = 1 at start. N D^2 MACs.
- ``lowrank``: phi(x) = 1 + U (A x), A: rank x D, U: D x rank, U = 0 at start. 2 N D rank MACs.
- ``identity``: phi(x) = 1 + gamma * x, one scale per channel, gamma = 0 at start: the paper's
  phi = identity made to start neutral. No matmul (counted as 0 MACs, like a norm's affine).
- ``none``: no gate (phi = 1 for ever).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

GATES = ("linear", "lowrank", "identity", "none")


def gate_name(gate) -> str:
    """A gate option as saved or given (a GATES name, or a bool from older configs) -> a GATES name."""
    if gate is True:
        return "linear"
    if gate is False or gate is None:
        return "none"
    if gate not in GATES:
        raise ValueError(f"unknown gate {gate!r}; choose from {', '.join(GATES)}")
    return gate


class LowRankGate(nn.Module):
    def __init__(self, dim: int, rank: int):
        super().__init__()
        if not 1 <= rank <= dim:
            raise ValueError(f"gate rank must be in [1, {dim}]; got {rank}")
        self.down = nn.Linear(dim, rank, bias=False)
        self.up = nn.Linear(rank, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.down.reset_parameters()  # random, so the gate's gradient reaches U from the first step
        nn.init.zeros_(self.up.weight)
        nn.init.ones_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.down(x))

    def extra_repr(self) -> str:
        return f"rank={self.down.out_features}"


class IdentityGate(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.zeros(dim))

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.scale)

    def forward(self, x: Tensor) -> Tensor:
        return 1.0 + x * self.scale


def make_gate(gate, dim: int, rank: Optional[int] = None) -> Optional[nn.Module]:
    """The neutral gate module for a GATES name (None for 'none'); ``rank`` defaults to dim // 8."""
    name = gate_name(gate)
    if name == "linear":
        module = nn.Linear(dim, dim)
        nn.init.zeros_(module.weight)
        nn.init.ones_(module.bias)
        return module
    if name == "lowrank":
        return LowRankGate(dim, rank or max(dim // 8, 1))
    if name == "identity":
        return IdentityGate(dim)
    return None


def reset_gate(module: Optional[nn.Module]) -> None:
    """Back to phi = 1."""
    if isinstance(module, nn.Linear):
        nn.init.zeros_(module.weight)
        nn.init.ones_(module.bias)
    elif module is not None:
        module.reset_parameters()


def describe_gate(module: Optional[nn.Module]) -> dict:
    """The options that rebuild ``module``: {'gate': name, 'gate_rank': rank or None}."""
    if module is None:
        return {"gate": "none", "gate_rank": None}
    if isinstance(module, LowRankGate):
        return {"gate": "lowrank", "gate_rank": module.down.out_features}
    return {"gate": "identity" if isinstance(module, IdentityGate) else "linear", "gate_rank": None}
