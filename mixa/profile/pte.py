"""Timing a .pte file with ExecuTorch's Python runtime (the ``edge`` extra)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional

from ..errors import UsageError
from .compare import Runner, measure


def pte_runner(path: os.PathLike | str, *, threads: Optional[int], batch: int = 1,
               resolution: Optional[int] = None, label: Optional[str] = None) -> Runner:
    """A .pte file to time (``mixa.profile.compare``); its batch and resolution are the file's own (asking for
    others is an error, raised now). The program is loaded again when its round-robin starts, after the
    thread pool is sized: the XNNPACK delegate takes the pool when it is initialised."""
    from ..export.executorch import input_shape, load_pte, require_executorch, set_threads

    require_executorch()
    import torch

    shape = input_shape(load_pte(path))
    if shape[0] != batch:
        raise UsageError(f"this .pte file takes batch {shape[0]} only; use --batch-size {shape[0]}")
    if resolution is not None and tuple(shape[2:]) != (resolution, resolution):
        raise UsageError(f"wrong input size: this .pte file takes {shape[2]}x{shape[3]} images, not "
                         f"{resolution}x{resolution} (re-export with mixa export --img-size {resolution})")

    def start():
        set_threads(threads)
        method = load_pte(path)
        x = [torch.randn(*shape)]
        return lambda: method.execute(x)

    record = dict(target=label or Path(path).name, runtime="executorch", device="cpu", threads=threads,
                  batch=batch, resolution=int(shape[2]), params=None, macs=None)
    return Runner(record, start)


def profile_pte(path: os.PathLike | str, *, threads: Optional[int], batch: int = 1, resolution: Optional[int] = None,
                warmup: int = 5, repeat: int = 20, label: Optional[str] = None, progress=None,
                clock: str = "wall") -> Dict[str, Any]:
    """One record for a .pte file timed alone."""
    runner = pte_runner(path, threads=threads, batch=batch, resolution=resolution, label=label)
    return measure([runner], warmup=warmup, repeat=repeat, progress=progress, clock=clock)[0]
