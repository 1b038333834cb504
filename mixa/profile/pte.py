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


def operator_times(path: os.PathLike | str, *, threads: Optional[int] = 1, runs: int = 10) -> Dict[str, Any]:
    """Where ExecuTorch spends its time in a .pte, from its own profiler (ETDump, read with the devtools
    Inspector) over ``runs`` calls after one warm-up: ``ops`` = {op: {"ms": per run, "calls": per run,
    "delegated": inside XNNPACK?}} most expensive first (XNNPACK's operators by their XNNPACK names, e.g.
    'Fully Connected (NC, F32) GEMM'; ops outside as 'native_layer_norm.out'), and per run ``total_ms``
    (Method::execute), ``outside_ms`` (ops outside the delegate) and ``outside_share``."""
    import tempfile
    import warnings
    from collections import defaultdict

    from ..export.executorch import input_shape, load_pte, require_executorch, set_threads

    require_executorch()
    import torch
    from executorch.devtools import Inspector
    from executorch.runtime import Runtime

    set_threads(threads)
    shape = input_shape(load_pte(path))
    program = Runtime.get().load_program(str(path), enable_etdump=True)
    method = program.load_method("forward")
    x = [torch.randn(*shape)]
    method.execute(x)  # warm-up: in the dump too, dropped below by keeping the last ``runs`` samples
    for _ in range(runs):
        method.execute(x)
    with tempfile.TemporaryDirectory() as work, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dump = Path(work) / "etdump.etdp"
        program.write_etdump_result_to_file(str(dump), str(Path(work) / "debug.bin"))
        blocks = Inspector(etdump_path=str(dump)).event_blocks
    ops: Dict[str, Dict[str, Any]] = defaultdict(lambda: {"ms": 0.0, "calls": 0.0, "delegated": False})
    total = outside = 0.0
    for block in blocks:
        if block.name != "Execute":
            continue
        for event in block.events:
            if event.perf_data is None:
                continue
            ms = sum(event.perf_data.raw[-runs:]) / runs
            if event.name == "Method::execute":
                total += ms
                continue
            if event.is_delegated_op:
                name = event.name.rsplit(" #", 1)[0]
            elif event.name.startswith("native_call_"):
                name = event.name[len("native_call_"):]
                outside += ms
            else:  # DELEGATE_CALL / OPERATOR_CALL: wrappers around the events above
                continue
            ops[name]["ms"] += ms
            ops[name]["calls"] += 1
            ops[name]["delegated"] = bool(event.is_delegated_op)
    return {"total_ms": total, "outside_ms": outside, "outside_share": outside / total if total else None,
            "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1]["ms"]))}
