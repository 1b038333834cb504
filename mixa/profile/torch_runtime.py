"""Timing PyTorch models: eager or torch.compile, CPU or CUDA (synchronised), fp32 or AMP."""
from __future__ import annotations

import contextlib
from typing import List, Optional

import torch
from torch import nn

from ..errors import MixaError, UsageError
from .timing import time_call


def check_device(device: str) -> torch.device:
    if device == "cuda":
        if not torch.cuda.is_available():
            raise MixaError("--device cuda: no CUDA device is available to this torch "
                            f"({torch.__version__}, built {'with' if torch.version.cuda else 'without'} CUDA)")
        return torch.device("cuda")
    if device != "cpu":
        raise UsageError(f"unknown device {device!r}; choose cpu or cuda")
    return torch.device("cpu")


@contextlib.contextmanager
def cpu_threads(threads: Optional[int]):
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def model_call(model: nn.Module, *, batch: int, resolution: int, device: str = "cpu", amp: bool = False,
               compile: bool = False):
    """A zero-argument call running ``model`` once on a random batch (inference mode; on CUDA synchronised,
    so a timed call covers the kernels, not just their launch; AMP = fp16 autocast there, bf16 on CPU)."""
    dev = check_device(device)
    model = model.to(dev).eval()
    run = torch.compile(model) if compile else model
    x = torch.randn(batch, 3, resolution, resolution, device=dev)
    dtype = torch.float16 if dev.type == "cuda" else torch.bfloat16
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def call():
        with torch.inference_mode(), torch.autocast(dev.type, dtype=dtype, enabled=amp):
            run(x)
        sync()

    return call


def time_model(model: nn.Module, *, batch: int, resolution: int, device: str = "cpu",
               threads: Optional[int] = None, amp: bool = False, compile: bool = False,
               warmup: int = 10, repeat: int = 50, progress=None) -> List[float]:
    """Per-call latency (seconds) of ``model`` on a random batch, timed alone (``model_call``).
    torch.compile's compilation runs inside the warm-up (at least one call)."""
    call = model_call(model, batch=batch, resolution=resolution, device=device, amp=amp, compile=compile)
    with cpu_threads(threads if device == "cpu" else None):
        return time_call(call, warmup=max(warmup, 1 if compile else 0), repeat=repeat, progress=progress)
