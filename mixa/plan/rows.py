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
    transfer_steps: N > 0 when the row was scored after N steps of layer-wise transfer on the calibration
        images: ``agreement`` / ``kl`` are then the post-transfer figures and ``agreement_before`` /
        ``kl_before`` the converted model's as it is (None when N = 0).
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
    agreement_before: Optional[float] = None
    kl_before: Optional[float] = None
    transfer_steps: int = 0


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
               min_agreement: Optional[float] = None, min_speedup: Optional[float] = None) -> Optional[PlanRow]:
    """The best row under one budget: the most faithful one (agreement, then KL) no slower than
    ``max_latency_ms`` or at least ``min_speedup`` times as fast as the original, or the fastest one at
    least ``min_agreement`` percent in agreement. None when no row meets the budget."""
    if sum(b is not None for b in (max_latency_ms, min_agreement, min_speedup)) != 1:
        raise ValueError("give exactly one budget: max_latency_ms, min_speedup or min_agreement")
    faithful = lambda r: (-r.agreement, r.kl, r.latency_ms)
    if max_latency_ms is not None:
        fits, key = [r for r in rows if r.latency_ms <= max_latency_ms], faithful
    elif min_speedup is not None:
        fits, key = [r for r in rows if r.speedup >= min_speedup], faithful
    else:
        fits = [r for r in rows if r.agreement >= min_agreement]
        key = lambda r: (r.latency_ms, -r.agreement, r.kl)
    return min(fits, key=key) if fits else None


def knee(rows: Sequence[PlanRow]) -> Optional[PlanRow]:
    """The knee of the Pareto front: with latency and agreement scaled to [0, 1] between the front's fastest
    and most faithful rows, the front row farthest above the straight line joining them -- where the
    agreement bought per millisecond drops most. With fewer than three front rows: the most faithful one."""
    front = sorted({(r.latency_ms, r.agreement): r for r in rows if r.pareto}.values(), key=lambda r: r.latency_ms)
    if not front:
        return None
    if len(front) < 3:
        return max(front, key=lambda r: (r.agreement, -r.latency_ms))
    (x0, y0), (x1, y1) = (front[0].latency_ms, front[0].agreement), (front[-1].latency_ms, front[-1].agreement)
    span_x, span_y = (x1 - x0) or 1.0, (y1 - y0) or 1.0
    # on the scaled axes the chord is y = x; a point's height above it is (y - x) / sqrt(2): rank by y - x
    return max(front, key=lambda r: ((r.agreement - y0) / span_y - (r.latency_ms - x0) / span_x, r.agreement))


def _agreement_columns(plan: Plan):
    """Header and cells of the agreement columns: one (the converted models), or two when the rows were
    scored after transfer (before it, after it)."""
    steps = max((r.transfer_steps for r in plan.rows), default=0)
    if not steps:
        return ["agree %", "KL"], lambda r: [f"{r.agreement:.1f}", f"{max(r.kl, 0.0):.4f}"]
    before = lambda r: "-" if r.agreement_before is None else f"{r.agreement_before:.1f}"
    return (["agree % converted", f"agree % after {steps} transfer steps", "KL after"],
            lambda r: [before(r), f"{r.agreement:.1f}", f"{max(r.kl, 0.0):.4f}"])


def format_table(plan: Plan) -> str:
    head, agreement_cells = _agreement_columns(plan)
    cells = [(r.kind, r.keep, ",".join(map(str, r.kept)) or "-", *agreement_cells(r), human(r.params),
              human(r.macs), f"{r.latency_ms:.3f}", f"{r.speedup:.2f}x", "*" if r.pareto else "")
             for r in plan.rows]
    o = plan.original
    return "\n".join([
        table(cells, ["kind", "k", "softmax layers", *head, "params", "MACs", "latency ms", "speed-up", "pareto"]),
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
    optional = lambda s: float(s) if s else None
    types = {"keep": int, "params": int, "macs": int, "agreement": float, "kl": float, "latency_ms": float,
             "speedup": float, "kind": str, "kept": lambda s: [int(i) for i in s.split()],
             "pareto": lambda s: s == "True", "agreement_before": optional, "kl_before": optional,
             "transfer_steps": int}
    try:
        with open(path, newline="") as f:
            return [PlanRow(**{k: types[k](v) for k, v in line.items()}) for line in csv.DictReader(f)]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise MixaError(f"cannot read plan rows from {path}: {err}") from None
