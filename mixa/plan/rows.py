"""A plan's rows: one (kind, k) configuration each, the Pareto front, the best row under a budget, and the
row formats (table, JSON, CSV). Torch-free."""
from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, List, Optional, Sequence

from ..errors import MixaError
from ..io import atomic_path
from ..io import write_json as write_json_file
from ..report import human, table


@dataclass
class PlanRow:
    """One configuration before any fine-tuning, measured against the original model.

    agreement: top-1 agreement with the original on the calibration images (percent).
    kl: mean KL(original || converted) of the output distribution on the same images (nats).
    speedup: original / converted ONNX Runtime latency at batch 1, timed round-robin in one process.
    latency_ms: the plan's reference latency of the original divided by ``speedup`` (so every row is on
        the same scale even when the machine's load changed between rows).
    """
    kind: str
    keep: int
    kept: List[int]
    agreement: float
    kl: float
    params: int
    macs: int
    latency_ms: float
    speedup: float
    pareto: bool = False


@dataclass
class Plan:
    model: str
    depth: int
    rows: List[PlanRow]
    original: Dict[str, Any]  # params, macs, latency_ms (the reference)
    settings: Dict[str, Any] = field(default_factory=dict)
    environment: Dict[str, Any] = field(default_factory=dict)


def mark_pareto(rows: Sequence[PlanRow]) -> List[PlanRow]:
    """Mark the rows no other row beats: none is at least as fast and at least as accurate and strictly
    better in one of the two (equal rows are both on the front). Returns the rows sorted by latency, then
    by agreement (best first)."""
    for r in rows:
        r.pareto = not any(o.latency_ms <= r.latency_ms and o.agreement >= r.agreement
                           and (o.latency_ms < r.latency_ms or o.agreement > r.agreement) for o in rows)
    return sorted(rows, key=lambda r: (r.latency_ms, -r.agreement, r.kind, r.keep))


def best_under(rows: Sequence[PlanRow], max_latency_ms: Optional[float] = None,
               min_agreement: Optional[float] = None) -> Optional[PlanRow]:
    """The best row under one budget: the most faithful one (agreement, then KL) no slower than
    ``max_latency_ms``, or the fastest one at least ``min_agreement`` percent in agreement. None when no
    row meets the budget."""
    if (max_latency_ms is None) == (min_agreement is None):
        raise ValueError("give exactly one budget: max_latency_ms or min_agreement")
    if max_latency_ms is not None:
        fits = [r for r in rows if r.latency_ms <= max_latency_ms]
        key = lambda r: (-r.agreement, r.kl, r.latency_ms)
    else:
        fits = [r for r in rows if r.agreement >= min_agreement]
        key = lambda r: (r.latency_ms, -r.agreement, r.kl)
    return min(fits, key=key) if fits else None


def format_table(plan: Plan) -> str:
    cells = [(r.kind, r.keep, ",".join(map(str, r.kept)) or "-", f"{r.agreement:.1f}", f"{max(r.kl, 0.0):.4f}",
              human(r.params), human(r.macs), f"{r.latency_ms:.3f}", f"{r.speedup:.2f}x", "*" if r.pareto else "")
             for r in plan.rows]
    o = plan.original
    return "\n".join([
        table(cells, ["kind", "k", "softmax layers", "agree %", "KL", "params", "MACs", "latency ms",
                      "speed-up", "pareto"]),
        f"original ({plan.depth} softmax layers): {human(o['params'])} params, {human(o['macs'])} MACs, "
        f"{o['latency_ms']:.3f} ms (the reference; speed-ups are round-robin ratios against it)"])


def plan_to_dict(plan: Plan) -> Dict[str, Any]:
    return asdict(plan)


def plan_from_dict(data: Dict[str, Any]) -> Plan:
    data = dict(data)
    data["rows"] = [PlanRow(**r) for r in data["rows"]]
    return Plan(**data)


def write_json(path: os.PathLike | str, plan: Plan) -> None:
    write_json_file(path, plan_to_dict(plan))


def read_json(path: os.PathLike | str) -> Plan:
    try:
        return plan_from_dict(json.loads(open(path).read()))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise MixaError(f"cannot read a plan from {path}: {err}") from None


CSV_FIELDS = [f.name for f in fields(PlanRow)]


def write_csv(path: os.PathLike | str, rows: Sequence[PlanRow]) -> None:
    """One line per row; ``kept`` as space-separated layer indices."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for r in rows:
            writer.writerow({**asdict(r), "kept": " ".join(map(str, r.kept))})


def read_csv(path: os.PathLike | str) -> List[PlanRow]:
    types = {"keep": int, "params": int, "macs": int, "agreement": float, "kl": float, "latency_ms": float,
             "speedup": float, "kind": str, "kept": lambda s: [int(i) for i in s.split()],
             "pareto": lambda s: s == "True"}
    try:
        with open(path, newline="") as f:
            return [PlanRow(**{k: types[k](v) for k, v in line.items()}) for line in csv.DictReader(f)]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise MixaError(f"cannot read plan rows from {path}: {err}") from None
