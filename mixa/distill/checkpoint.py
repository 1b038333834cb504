"""Run directories: checkpoints switched in atomically, the training state that resumes a run exactly,
and the metrics files. Shared by ``mixa distill`` and ``mixa transfer``.

A run directory holds:
    RUN/run.json          the resolved settings and inputs (written at the start)
    RUN/last/             saved model (model.safetensors + config.json) + train_state.pt
    RUN/best/, RUN/ema/   (distill) the best epoch by val top-1; the EMA weights
    RUN/metrics.jsonl     one row per epoch or evaluation (also RUN/metrics.csv)
Each checkpoint directory is written complete under a temporary name and then renamed into place, so a
kill at any moment leaves the previous ``last`` (or, in the instant between two renames, ``.last.old``,
which ``--resume`` picks up).
"""
from __future__ import annotations

import csv
import io
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from ..errors import MixaError, UsageError
from ..io import atomic_path, make_temp_dir
from ..saved import WEIGHTS_NAME, save

STATE_NAME = "train_state.pt"
STATE_VERSION = 1


def rng_state() -> Dict[str, Any]:
    """Python, numpy, torch (and CUDA) random states, in a form ``torch.load(weights_only=True)`` reads."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos),
                                                    int(has_gauss), float(gauss)),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run: Path, name: str, model: nn.Module, state: Optional[Dict[str, Any]]) -> Path:
    """Write ``run/name`` as a complete saved-model directory (+ train state), switched in by renames."""
    final, old = run / name, run / f".{name}.old"
    tmp = make_temp_dir(run, prefix=f".{name}.tmp.")
    try:
        save(model, tmp)
        if state is not None:
            torch.save({"version": STATE_VERSION, **state}, tmp / STATE_NAME)
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    return final


def recover_checkpoint(run: Path, name: str) -> Path:
    """``run/name``, restored from ``.name.old`` if a kill fell between the two renames."""
    final, old = run / name, run / f".{name}.old"
    if not final.exists() and old.exists():
        os.replace(old, final)
    for stray in run.glob(f".{name}.tmp.*"):
        shutil.rmtree(stray, ignore_errors=True)
    return final


def load_train_state(directory: Path) -> Dict[str, Any]:
    path = directory / STATE_NAME
    if not path.is_file():
        raise MixaError(f"{directory} has no {STATE_NAME}; cannot resume from it")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # never fall back to full unpickling
        raise MixaError(f"cannot read {path} (mixa reads training states without unpickling code): "
                        f"{str(err).splitlines()[0]}") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise MixaError(f"{path} is not a mixa training state (version {STATE_VERSION})")
    return state


def open_run(output, resume: bool, command: str) -> Tuple[Path, Optional[Dict[str, Any]]]:
    """The run directory and, with ``resume``, the state of its ``last`` checkpoint. Refuses to start a
    new run over an existing one and to resume nothing; writes nothing."""
    run = Path(output)
    if run.exists() and not run.is_dir():
        raise UsageError(f"--output {run} exists and is not a directory")
    if not resume:
        if (run / "last").exists() or (run / ".last.old").exists():
            raise UsageError(f"{run} already holds a {command} run; pass --resume to continue it or choose "
                             f"another --output")
        if run.is_dir() and any(run.iterdir()) and not (run / "run.json").is_file():
            # (a run.json without last/: a run killed before its first checkpoint starts again)
            raise UsageError(f"--output {run} is not empty and holds no run; choose another --output")
        return run, None
    if not run.is_dir():
        raise UsageError(f"nothing to resume: {run} does not exist")
    last = recover_checkpoint(run, "last") if os.access(run, os.W_OK) else run / "last"
    if not last.is_dir():
        raise UsageError(f"nothing to resume: {run} has no last/ checkpoint")
    return run, load_train_state(last)


def load_last_weights(model: nn.Module, run: Path, what: str) -> None:
    """The weights of ``run/last`` into ``model`` (which must be the same architecture)."""
    try:
        model.load_state_dict(load_file(str(run / "last" / WEIGHTS_NAME)), strict=True)
    except RuntimeError as err:
        raise MixaError(f"{run}/last does not match {what}: {str(err).splitlines()[0]}") from None


def write_metrics(run: Path, rows: List[Dict[str, Any]]) -> None:
    """RUN/metrics.jsonl and RUN/metrics.csv (columns in order of first appearance)."""
    with atomic_path(run / "metrics.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    keys: List[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(run / "metrics.csv") as tmp:
        tmp.write_text(buf.getvalue())
