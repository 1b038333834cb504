"""Processes of a run: rank and world from torchrun's environment (one process without it), and the
running sums that are added up across processes."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, List, Optional

import torch
import torch.distributed as tdist


class Dist:
    """Rank and world from torchrun's environment; one process when not launched by torchrun."""
    def __init__(self, device: Optional[str] = None):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device is None:
            device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.owns_group = False
        if self.world > 1 and not tdist.is_initialized():
            tdist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")
            self.owns_group = True
        self.enabled = self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, values: List[float]) -> List[float]:
        if not self.enabled:
            return list(values)

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        tdist.all_reduce(t)
        return t.tolist()

    def gather(self, obj) -> list:
        if not self.enabled:
            return [obj]

        out = [None] * self.world
        tdist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:

            tdist.barrier()

    def close(self) -> None:
        if self.owns_group:

            tdist.destroy_process_group()


@dataclasses.dataclass
class Sums:
    """Base of a dataclass of float running sums: ``add(name=value, ...)``, ``reduced(dist)`` (summed over
    processes), ``as_dict()`` / ``from_dict()`` (for a checkpoint)."""
    def add(self, **values: float) -> None:
        for name, value in values.items():
            setattr(self, name, getattr(self, name) + float(value))

    def reduced(self, dist: Optional[Dist]):
        values = dataclasses.astuple(self)
        return type(self)(*(dist.sum(list(values)) if dist is not None else values))

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Any):
        return cls(**values)
