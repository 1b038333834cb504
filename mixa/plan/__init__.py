"""mixa plan: the accuracy / latency trade-off of every (kind, k) before fine-tuning, in one call.

    p = mixa.plan.plan("deit_s", "~/imagenet/val", attn=("relu", "rala"), keep=(0, 4, 8))
    print(mixa.plan.format_table(p))
    best = mixa.plan.best_under(p.rows, max_latency_ms=20)
"""
from .core import DEFAULT_KEEP, DEFAULT_KINDS, SELECTIONS, plan, time_against
from .rows import (Plan, PlanRow, best_under, format_table, mark_pareto, plan_from_dict, plan_to_dict, read_csv,
                   read_json, write_csv, write_json)
from .plot import plot

__all__ = ["plan", "time_against", "Plan", "PlanRow", "mark_pareto", "best_under", "format_table", "write_json",
           "read_json", "write_csv", "read_csv", "plan_to_dict", "plan_from_dict", "plot", "DEFAULT_KINDS",
           "DEFAULT_KEEP", "SELECTIONS"]
