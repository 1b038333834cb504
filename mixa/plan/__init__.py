"""mixa plan: the accuracy / latency trade-off of every (kind, k) before fine-tuning, in one call.

    p = mixa.plan.plan("deit_s", "~/imagenet/val", attn=("relu", "rala"), keep=(0, 4, 8))
    print(mixa.plan.format_table(p))
    best = mixa.plan.best_under(p.rows, max_latency_ms=20)    # or min_speedup=1.2; mixa.plan.knee(p.rows)

transfer_steps (default DEFAULT_TRANSFER_STEPS, as mixa distill's transfer stage) scores each row after that
many steps of layer-wise transfer on the calibration images; 0 scores the converted models as they are.

Modules: settings (defaults; no torch), rows (rows, Pareto front, budgets, knee, table / JSON / CSV; no
torch), core (the measurement), transfer (the transfer probe), figure (the plot). The names below load their module on
first use, so that ``mixa plan --help`` reads the defaults without importing torch.
"""
import importlib

_API = {
    "plan": "core", "time_against": "core",
    "DEFAULT_KINDS": "settings", "DEFAULT_KEEP": "settings", "DEFAULT_TRANSFER_STEPS": "settings",
    "SELECTIONS": "settings",
    "Plan": "rows", "PlanRow": "rows", "mark_pareto": "rows", "best_under": "rows", "knee": "rows",
    "format_table": "rows", "write_json": "rows", "read_json": "rows", "write_csv": "rows", "read_csv": "rows",
    "plan_to_dict": "rows", "plan_from_dict": "rows",
    "plot": "figure",
}
__all__ = list(_API)


def __getattr__(name):
    if name in _API:
        return getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
