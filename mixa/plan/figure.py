"""The plan as a picture: latency vs agreement, one marker per kind, k beside each point, the Pareto front
as a line (matplotlib: the ``plot`` extra)."""
from __future__ import annotations

import os
from typing import Optional

from ..errors import MixaError
from ..io import save_figure
from .rows import Plan, PlanRow

MARKERS = "osD^v<>px*h"


def plot(path: os.PathLike | str, plan: Plan, best: Optional[PlanRow] = None) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MixaError("--plot needs matplotlib: pip install 'mixa[plot]'") from None

    fig, ax = plt.subplots(figsize=(7, 4.5))
    kinds = list(dict.fromkeys(r.kind for r in plan.rows))
    annotated = set()  # k = depth is the same model for every kind: one label
    for kind, marker in zip(kinds, MARKERS * len(kinds)):
        rows = [r for r in plan.rows if r.kind == kind]
        ax.scatter([r.latency_ms for r in rows], [r.agreement for r in rows], marker=marker, label=kind, zorder=3)
        for r in rows:
            if (r.keep, r.latency_ms, r.agreement) in annotated:
                continue
            annotated.add((r.keep, r.latency_ms, r.agreement))
            ax.annotate(f"k={r.keep}", (r.latency_ms, r.agreement), textcoords="offset points", xytext=(4, 3),
                        fontsize=7)
    front = sorted((r for r in plan.rows if r.pareto), key=lambda r: r.latency_ms)
    ax.step([r.latency_ms for r in front], [r.agreement for r in front], where="post", color="grey", lw=1,
            label="Pareto front", zorder=2)
    ax.axvline(plan.original["latency_ms"], color="black", ls=":", lw=1, label="original")
    if best is not None:
        ax.scatter([best.latency_ms], [best.agreement], s=160, facecolors="none", edgecolors="red", zorder=4,
                   label=f"chosen: {best.kind} k={best.keep}")
    ax.set_xlabel("ONNX Runtime latency, batch 1 (ms)")
    ax.set_ylabel("top-1 agreement with the original (%)")
    env = plan.environment
    steps = plan.settings.get("transfer_steps") or 0
    when = f"after {steps} transfer steps" if steps else "before fine-tuning"
    ax.set_title(f"{plan.model} at {plan.settings.get('img_size')} px, {when} "
                 f"({env.get('cpu', '?')}, {plan.settings.get('threads')} thread(s))", fontsize=8)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
