"""Profiling PyTorch-side targets: a keep sweep of conversions, and a model at several resolutions through
ONNX Runtime (exported on the fly) or PyTorch eager / compiled. Imports torch."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..conversion import convert
from ..export import export_onnx
from ..export.targets import at_resolution, trained_size
from ..macs import count_macs, count_params
from .compare import Runner, measure
from .ort import file_runner
from .torch_runtime import check_device, model_call


def keep_sweep(model: nn.Module, keeps: Sequence[int], attn: str = "rala", *, label: str = "model",
               keep_kind: str = "softmax", attn_options: Optional[Dict[str, Any]] = None
               ) -> List[Tuple[str, nn.Module]]:
    """(label, converted model) for each k in ``keeps``: softmax (or ``keep_kind``) kept in k layers,
    ``attn`` elsewhere (uniform selection: latency does not depend on which layers are kept)."""
    suffix = "" if keep_kind == "softmax" else f" kept={keep_kind}"
    return [(f"{label} keep={k} {attn}{suffix}",
             convert(model, keep=k, attn=attn, keep_kind=keep_kind, attn_options=attn_options, progress=False))
            for k in keeps]


def model_runners(model: nn.Module, *, label: str, work: os.PathLike | str, runtime: str = "ort",
                  resolutions: Sequence[Optional[int]] = (None,), threads: Sequence[Optional[int]] = (1,),
                  batch: int = 1, device: str = "cpu") -> List[Runner]:
    """What to time for ``model`` at each resolution (None: its trained size) and thread count
    (``mixa.profile.compare``). ``runtime``: 'ort' (exported to ONNX into ``work`` now, in the form ONNX
    Runtime runs best), 'torch' or 'torch-compile' (CUDA also timed with AMP)."""
    if runtime != "ort":
        check_device(device)
    runners = []
    for res in resolutions:
        sized = at_resolution(model, res)
        res = trained_size(sized)
        params, macs = count_params(sized), count_macs(sized, (3, res, res))
        if runtime == "ort":
            path = Path(work) / f"{len(list(Path(work).iterdir()))}_{res}.onnx"
            export_onnx(sized, path, (3, res, res), dynamic_batch=batch != 1)
            runners += [file_runner(path, threads=t, batch=batch, resolution=res, label=label, params=params,
                                    macs_per_image=macs) for t in threads]
            continue
        for amp in ([False, True] if device == "cuda" else [False]):
            for t in threads if device == "cpu" else [None]:
                record = dict(target=label, runtime=runtime + ("+amp" if amp else ""), device=device, threads=t,
                              batch=batch, resolution=res, params=params, macs=macs * batch)

                def start(sized=sized, res=res, amp=amp, t=t):
                    if t:
                        torch.set_num_threads(t)
                    return model_call(sized, batch=batch, resolution=res, device=device, amp=amp,
                                      compile=runtime == "torch-compile")
                runners.append(Runner(record, start, warmup=1 if runtime == "torch-compile" else 0))
    return runners


def profile_model(model: nn.Module, *, label: str, runtime: str = "ort", resolutions: Sequence[Optional[int]] = (None,),
                  threads: Sequence[Optional[int]] = (1,), batch: int = 1, device: str = "cpu", warmup: int = 5,
                  repeat: int = 20, progress=None, clock: str = "wall") -> List[Dict[str, Any]]:
    """Records for ``model`` at each resolution and thread count (``model_runners``), timed round-robin."""
    with tempfile.TemporaryDirectory(prefix="mixa-profile-") as work:
        runners = model_runners(model, label=label, work=work, runtime=runtime, resolutions=resolutions,
                                threads=threads, batch=batch, device=device)
        return measure(runners, warmup=warmup, repeat=repeat, progress=progress, clock=clock)
