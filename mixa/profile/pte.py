"""Timing a .pte file with ExecuTorch's Python runtime (the ``edge`` extra)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional

from ..errors import UsageError
from .records import make_record
from .timing import time_call


def profile_pte(path: os.PathLike | str, *, threads: Optional[int], batch: int = 1, resolution: Optional[int] = None,
                warmup: int = 5, repeat: int = 20, label: Optional[str] = None, progress=None) -> Dict[str, Any]:
    """One record for a .pte file (batch and resolution are the file's own; asking for others is an error)."""
    from ..export.executorch import input_shape, load_pte, require_executorch, set_threads

    require_executorch()
    import torch

    set_threads(threads)  # before loading: the XNNPACK delegate takes the pool when it is initialised
    method = load_pte(path)
    shape = input_shape(method)
    if shape[0] != batch:
        raise UsageError(f"this .pte file takes batch {shape[0]} only; use --batch-size {shape[0]}")
    if resolution is not None and tuple(shape[2:]) != (resolution, resolution):
        raise UsageError(f"wrong input size: this .pte file takes {shape[2]}x{shape[3]} images, not "
                         f"{resolution}x{resolution} (re-export with mixa export --img-size {resolution})")
    x = [torch.randn(*shape)]
    seconds = time_call(lambda: method.execute(x), warmup=warmup, repeat=repeat, progress=progress)
    return make_record(target=label or Path(path).name, runtime="executorch", device="cpu", threads=threads,
                       batch=batch, resolution=int(shape[2]), params=None, macs=None, seconds=seconds)
