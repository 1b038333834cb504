"""Settings of a transfer run: the defaults, then flags on top (no torch: the CLI reads them for --help)."""
from __future__ import annotations

from typing import Any, Dict

from ..distill.recipes import AMP_MODES
from ..errors import UsageError

# AdamW without weight decay (a regression onto fixed targets, nothing to pull towards zero), a 5% linear
# warm-up and a cosine to 1e-6, clipping at 1 for the first steps on fresh gates/LePE. lr 2e-3: the best of
# 5e-4 / 2e-3 / 5e-3 measured on the offline task (rala, k = 0 and 6, 5-100 steps: held-out error and
# top-1; benchmarks/transfer/RESULTS.md); not tuned on large models.
DEFAULTS: Dict[str, Any] = {
    "steps": 500,             # optimiser steps (one batch each)
    "batch_size": 64,         # global batch (all processes)
    "lr": 2.0e-3,
    "min_lr": 1.0e-6,
    "warmup_lr": 1.0e-6,
    "warmup_fraction": 0.05,  # warm-up steps = fraction x steps
    "weight_decay": 0.0,
    "betas": [0.9, 0.999],
    "eps": 1.0e-8,
    "clip_grad": 1.0,         # max global grad norm over the replaced layers; null/0: off
    "amp": "auto",            # one of mixa.distill.AMP_MODES
    "seed": 0,
    "workers": "auto",        # data-loader processes per process; auto: min(4, available cores)
    "save_every_steps": 200,  # write RUN/last every N steps (0: at the end only)
    "eval_images": 256,       # held-out images (DIR/val) for the per-layer error; 0: none
}


def transfer_settings(**overrides) -> Dict[str, Any]:
    """DEFAULTS <- overrides that are not None, validated."""
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise UsageError(f"unknown transfer setting(s): {', '.join(unknown)}")
    s = {**DEFAULTS, **{k: v for k, v in overrides.items() if v is not None}}
    for key in ("steps", "batch_size"):
        if isinstance(s[key], bool) or not isinstance(s[key], int) or s[key] < 1:
            raise UsageError(f"{key} must be a positive integer, got {s[key]!r}")
    for key in ("save_every_steps", "eval_images"):
        if isinstance(s[key], bool) or not isinstance(s[key], int) or s[key] < 0:
            raise UsageError(f"{key} must be an integer >= 0, got {s[key]!r}")
    if not float(s["lr"]) > 0:
        raise UsageError(f"lr must be > 0, got {s['lr']!r}")
    if not 0.0 <= float(s["warmup_fraction"]) <= 1.0:
        raise UsageError(f"warmup_fraction must be in [0, 1], got {s['warmup_fraction']!r}")
    if s["amp"] not in AMP_MODES:
        raise UsageError(f"amp must be one of {', '.join(AMP_MODES)}, got {s['amp']!r}")
    if s["workers"] != "auto" and (isinstance(s["workers"], bool) or not isinstance(s["workers"], int)
                                   or s["workers"] < 0):
        raise UsageError(f"workers must be 'auto' or an integer >= 0, got {s['workers']!r}")
    return s
