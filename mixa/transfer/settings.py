"""Settings of a transfer run: the defaults, then flags on top (no torch: the CLI reads them for --help)."""
from __future__ import annotations

from typing import Any, Dict, Optional

from ..distill.choices import AMP_MODES
from ..errors import UsageError

# AdamW without weight decay (a regression onto fixed targets, nothing to pull towards zero), a 5% linear
# warm-up and a cosine to 1e-6, clipping at 1 for the first steps on fresh gates/LePE. lr 6e-3: on the
# extremes proxy (k = 0, 100 steps, seed 1; benchmarks/transfer/lr100) it ends every kind higher than 2e-3
# did (relu 97.0 -> 98.0, stella 84.2 -> 87.8, rala 72.5 -> 78.2 top-1), where 2e-3 -- the best of
# 5e-4 / 2e-3 / 5e-3 on the 16-token offline task -- anneals a 100-step run before it has converged.
# Not tuned on large models.
DEFAULTS: Dict[str, Any] = {
    "steps": 500,             # optimiser steps (one batch each)
    "batch_size": 64,         # global batch (all processes)
    "lr": 6.0e-3,
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
    "inputs": "teacher",      # each layer's input: the reference's activation (teacher) or the student's own
    "train": "all",           # which parameters of a replaced layer learn: all, or a comma list of TRAIN_PARTS
    "target": "attention",    # what learns and is matched: each replaced attention layer, or the block holding it
}

INPUTS = ("teacher", "student")
# attention: each replaced layer reproduces its softmax layer's output. block: the whole block holding it
# (attention, MLP, norms) reproduces the original block's residual update, output - input, so the MLP can
# make up for what the kernel cannot represent (ViT-AdaLA's block-wise alignment, arXiv 2603.16063).
TARGETS = ("attention", "block")
# the parts of a replaced layer (mixa.attention.MixAttention's submodules) that --train can name
TRAIN_PARTS = ("qkv", "proj", "gate", "lepe", "feature_map")


def train_parts(value) -> tuple:
    """'all' or a comma list of TRAIN_PARTS -> the tuple of parts."""
    if value == "all":
        return TRAIN_PARTS
    parts = tuple(p.strip() for p in str(value).split(",") if p.strip())
    unknown = [p for p in parts if p not in TRAIN_PARTS]
    if not parts or unknown:
        raise UsageError(f"train must be 'all' or a comma list of {', '.join(TRAIN_PARTS)}, got {value!r}")
    return parts


# Per attention kind, what differs from DEFAULTS (measured on the extremes proxy; see docs/transfer.md).
# rala transfers whole blocks: its attention alone cannot imitate the teacher's broad middle layers (its global
# key weights concentrate every query on the same keys): 100 steps at lr 6e-3 took rala k = 0 from 64.9 to
# 78.2 top-1 with the attention target and to 93.2 (81% of the conversion loss) with the block target, where
# the MLP makes up for the kernel (benchmarks/transfer/lr100, seed 1).
KIND_DEFAULTS: Dict[str, Dict[str, Any]] = {"rala": {"target": "block"}}


def transfer_settings(kind: Optional[str] = None, **overrides) -> Dict[str, Any]:
    """DEFAULTS <- the kind's KIND_DEFAULTS (when ``kind`` is given) <- overrides that are not None, validated."""
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise UsageError(f"unknown transfer setting(s): {', '.join(unknown)}")
    s = {**DEFAULTS, **KIND_DEFAULTS.get(kind, {}), **{k: v for k, v in overrides.items() if v is not None}}
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
    if s["inputs"] not in INPUTS:
        raise UsageError(f"inputs must be one of {', '.join(INPUTS)}, got {s['inputs']!r}")
    train_parts(s["train"])
    if s["target"] not in TARGETS:
        raise UsageError(f"target must be one of {', '.join(TARGETS)}, got {s['target']!r}")
    if s["target"] == "block" and s["train"] != "all":
        raise UsageError(f"target block trains whole blocks: train must be 'all', got {s['train']!r}")
    if s["workers"] != "auto" and (isinstance(s["workers"], bool) or not isinstance(s["workers"], int)
                                   or s["workers"] < 0):
        raise UsageError(f"workers must be 'auto' or an integer >= 0, got {s['workers']!r}")
    return s
