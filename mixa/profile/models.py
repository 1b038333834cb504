"""Profiling PyTorch-side targets: a keep sweep of conversions, and a model at several resolutions through
ONNX Runtime (exported on the fly) or PyTorch eager / compiled. Imports torch."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from torch import nn

from ..conversion import convert
from ..export import export_onnx
from ..export.targets import at_resolution, trained_size
from ..macs import count_macs, count_params
from .ort import profile_file
from .records import make_record
from .torch_runtime import check_device, time_model


def keep_sweep(model: nn.Module, keeps: Sequence[int], attn: str = "rala", *, label: str = "model",
               keep_kind: str = "softmax", attn_options: Optional[Dict[str, Any]] = None
               ) -> List[Tuple[str, nn.Module]]:
    """(label, converted model) for each k in ``keeps``: softmax (or ``keep_kind``) kept in k layers,
    ``attn`` elsewhere (uniform selection: latency does not depend on which layers are kept)."""
    suffix = "" if keep_kind == "softmax" else f" kept={keep_kind}"
    return [(f"{label} keep={k} {attn}{suffix}",
             convert(model, keep=k, attn=attn, keep_kind=keep_kind, attn_options=attn_options, progress=False))
            for k in keeps]


def profile_model(model: nn.Module, *, label: str, runtime: str = "ort", resolutions: Sequence[Optional[int]] = (None,),
                  threads: Sequence[Optional[int]] = (1,), batch: int = 1, device: str = "cpu", warmup: int = 5,
                  repeat: int = 20, progress=None) -> List[Dict[str, Any]]:
    """Records for ``model`` at each resolution (None: its trained size) and thread count. ``runtime``:
    'ort' (exported to ONNX in a temporary directory, then timed), 'torch' or 'torch-compile' (CUDA also
    timed with AMP)."""
    if runtime != "ort":
        check_device(device)
    records = []
    with tempfile.TemporaryDirectory(prefix="mixa-profile-") as work:
        for res in resolutions:
            sized = at_resolution(model, res)
            res = trained_size(sized)
            params, macs = count_params(sized), count_macs(sized, (3, res, res))
            if runtime == "ort":
                path = Path(work) / f"{res}.onnx"
                export_onnx(sized, path, (3, res, res), dynamic_batch=batch != 1)
                records += [profile_file(path, threads=t, batch=batch, resolution=res, warmup=warmup,
                                         repeat=repeat, label=label, params=params, macs_per_image=macs,
                                         progress=progress) for t in threads]
                continue
            for amp in ([False, True] if device == "cuda" else [False]):
                for t in threads if device == "cpu" else [None]:
                    seconds = time_model(sized, batch=batch, resolution=res, device=device, threads=t, amp=amp,
                                         compile=runtime == "torch-compile", warmup=warmup, repeat=repeat,
                                         progress=progress)
                    records.append(make_record(target=label, runtime=runtime + ("+amp" if amp else ""),
                                               device=device, threads=t, batch=batch, resolution=res,
                                               params=params, macs=macs * batch, seconds=seconds))
    return records
