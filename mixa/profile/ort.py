"""Timing an .onnx file with ONNX Runtime. Imports numpy and onnxruntime only (and mixa's torch-free
modules), so it runs on a board without torch: ``python -m mixa profile model.onnx``."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..errors import MixaError, UsageError
from .compare import Runner, measure

_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise MixaError("profiling an .onnx file needs onnxruntime: pip install onnxruntime") from None
    return onnxruntime


def session(path: os.PathLike | str, threads: Optional[int] = None, providers: Optional[List[str]] = None,
            profile_prefix: Optional[str] = None):
    """An InferenceSession with ``threads`` intra-op threads (None: onnxruntime's default), sequential
    execution and every graph optimisation; ``profile_prefix`` turns on ONNX Runtime's profiler."""
    ort = _ort()
    path = Path(path)
    if not path.is_file():
        raise MixaError(f"{path}: no such file")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = threads
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    try:
        return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
    except Exception as err:
        raise MixaError(f"ONNX Runtime cannot load {path}: {str(err).splitlines()[0][:300]}") from None


def metadata(sess) -> Dict[str, str]:
    return dict(sess.get_modelmeta().custom_metadata_map)


def input_for(sess, batch: int, resolution: Optional[int]) -> Tuple[Dict[str, np.ndarray], int]:
    """A random input of ``batch`` x C x ``resolution``^2 that fits the file, and the resolution used.

    Fixed dimensions that disagree with the request are a UsageError naming what the file takes."""
    (spec,) = sess.get_inputs()
    shape = list(spec.shape)
    if len(shape) != 4:
        raise UsageError(f"expected an image model with one (B, C, H, W) input; {spec.name} has shape {shape}")
    b, c, h, w = shape
    if isinstance(b, int) and b != batch:
        raise UsageError(f"this .onnx file takes batch {b} only; use --batch-size {b} or export with --dynamic-batch")
    if not isinstance(h, int) or not isinstance(w, int):
        if resolution is None:
            raise UsageError("this .onnx file has a dynamic image size: pass --img-size")
        h = w = resolution
    elif resolution is not None and (h, w) != (resolution, resolution):
        raise UsageError(f"wrong input size: this .onnx file takes {h}x{w} images, not {resolution}x{resolution} "
                         f"(re-export with mixa export --img-size {resolution})")
    if h != w:
        raise UsageError(f"only square inputs are supported; the file takes {h}x{w}")
    dtype = _NUMPY_TYPES.get(spec.type)
    if dtype is None:
        raise UsageError(f"unsupported input type {spec.type}")
    x = np.random.default_rng(0).standard_normal((batch, c if isinstance(c, int) else 3, h, w)).astype(dtype)
    return {spec.name: x}, h


def operator_times(path: os.PathLike | str, *, threads: Optional[int], runs: int = 30,
                   resolution: Optional[int] = None) -> Dict[str, Dict[str, float]]:
    """Where ONNX Runtime spends its time in a file, batch 1: ``{op type: {"us": kernel microseconds per
    run, "nodes": nodes per run}}`` from its own profiler over ``runs`` calls, most expensive first."""
    with tempfile.TemporaryDirectory() as work:
        sess = session(path, threads, profile_prefix=str(Path(work) / "ort"))
        feed = input_for(sess, 1, resolution)[0]
        for _ in range(runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    totals: Dict[str, Dict[str, float]] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = totals.setdefault(e["args"]["op_name"], {"us": 0.0, "nodes": 0.0})
            op["us"] += e["dur"] / runs
            op["nodes"] += 1 / runs
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]["us"]))


def file_runner(path: os.PathLike | str, *, threads: Optional[int], batch: int, resolution: Optional[int],
                label: Optional[str] = None, params: Optional[int] = None,
                macs_per_image: Optional[int] = None) -> Runner:
    """An .onnx file to time (``mixa.profile.compare``); the session is made now, so a file that does not fit
    the request fails before anything is timed. Params/MACs come from the arguments or from the metadata
    that ``mixa export`` writes into the file (null for files from elsewhere)."""
    sess = session(path, threads)
    feed, res = input_for(sess, batch, resolution)
    meta = metadata(sess)
    if params is None and "mixa.params" in meta:
        params = int(meta["mixa.params"])
    if macs_per_image is None and "mixa.macs" in meta:
        macs_per_image = int(meta["mixa.macs"])
    record = dict(target=label or str(path), runtime="ort", device="cpu", threads=threads, batch=batch,
                  resolution=res, params=params, macs=None if macs_per_image is None else macs_per_image * batch)
    return Runner(record, lambda: (lambda: sess.run(None, feed)))


def profile_file(path: os.PathLike | str, *, threads: Optional[int], batch: int, resolution: Optional[int],
                 warmup: int, repeat: int, label: Optional[str] = None, params: Optional[int] = None,
                 macs_per_image: Optional[int] = None, progress=None, clock: str = "wall") -> Dict[str, Any]:
    """One record for an .onnx file timed alone (several files: ``mixa.profile.compare.measure``)."""
    runner = file_runner(path, threads=threads, batch=batch, resolution=resolution, label=label, params=params,
                         macs_per_image=macs_per_image)
    return measure([runner], warmup=warmup, repeat=repeat, progress=progress, clock=clock)[0]
