"""Profiling records, the environment they were measured in, and how they are shown (table, CSV, JSON,
plot). Needs numpy only (matplotlib for plots)."""
from __future__ import annotations

import csv
import functools
import os
import platform
from importlib import metadata
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .. import __version__
from ..errors import MixaError
from ..io import atomic_path, save_figure
from ..io import write_json as write_json_file
from ..report import table
from .timing import paired_speedup

LIBRARIES = ("mixa", "numpy", "onnxruntime", "onnx", "torch", "timm")


def latency_stats(seconds: Sequence[float]) -> Dict[str, float]:
    """median / mean / p90 / p99 / min of per-call latencies, in milliseconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    if ms.size == 0:
        raise ValueError("no timings")
    return {"median": float(np.median(ms)), "mean": float(ms.mean()), "p90": float(np.percentile(ms, 90)),
            "p99": float(np.percentile(ms, 99)), "min": float(ms.min())}


@functools.lru_cache(maxsize=None)
def _cpuinfo(path: str = "/proc/cpuinfo") -> Optional[Dict[str, str]]:
    """The first processor's fields of Linux's /proc/cpuinfo (keys lower-case), None where it cannot be read.
    Read once per path and process: ``environment()`` takes the name, generation and flags from it for every
    record. Callers only read the mapping."""
    fields: Dict[str, str] = {}
    try:
        with open(path) as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and value.strip():
                    fields.setdefault(key.strip().lower(), value.strip())
    except OSError:
        return None
    return fields


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo: x86 'model name', ARM 'Hardware' / 'Model'), else
    what platform knows."""
    fields = _cpuinfo(cpuinfo) or {}
    for key in ("model name", "cpu model", "hardware", "model"):
        if key in fields and not fields[key].isdigit():
            return fields[key]
    return platform.processor() or platform.machine()


def cpu_id(cpuinfo: str = "/proc/cpuinfo") -> Optional[str]:
    """Which CPU generation this is, where the marketing name does not say: a VM may call both an AVX2-only
    EPYC and AVX-512 ones just "AMD EPYC", and speed-ups on two AVX-512 ones differed by up to 7%
    (benchmarks/edge/README.md). x86 'family F model M stepping S', ARM 'implementer I part P'; None if unknown."""
    fields = _cpuinfo(cpuinfo) or {}
    if "cpu family" in fields and "model" in fields:
        return f"family {fields['cpu family']} model {fields['model']} stepping {fields.get('stepping', '?')}"
    if "cpu implementer" in fields and "cpu part" in fields:
        return f"implementer {fields['cpu implementer']} part {fields['cpu part']}"
    return None


# The instruction-set extensions that decide which INT8 / fp32 kernels ONNX Runtime and XNNPACK can pick:
# x86 AVX2 / AVX-512 / the int8 dot products (VNNI) / AMX, ARM's int8 dot product and matrix multiply.
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "asimddp", "i8mm", "sve")


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> Optional[set]:
    """The CPU's feature flags from /proc/cpuinfo (x86 'flags', ARM 'Features'); None where it cannot tell
    (not Linux, or a VM that hides them)."""
    fields = _cpuinfo(cpuinfo) or {}
    for key in ("flags", "features"):
        if key in fields:
            return set(fields[key].split())
    return None


def cpu_simd(cpuinfo: str = "/proc/cpuinfo") -> Optional[List[str]]:
    """Which of ``SIMD_FLAGS`` the CPU reports (what the runtimes' kernels can use), None if unknown. A VM
    reports what it passes through: this is what the timed code could use, whatever the host has."""
    flags = cpu_flags(cpuinfo)
    return None if flags is None else [f for f in SIMD_FLAGS if f in flags]


def describe_cpu(env: Dict[str, Any]) -> str:
    """One line naming the CPU of an ``environment()`` record: name, generation (where known) and SIMD."""
    generation = f", {env['cpu_id']}" if env.get("cpu_id") else ""
    return f"{env['cpu']}{generation} ({', '.join(env.get('cpu_simd') or ['SIMD unknown'])})"


def environment() -> Dict[str, Any]:
    """CPU, OS and library versions (read from package metadata: nothing is imported)."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    if versions["mixa"] is None:  # run from a source tree, not installed
        versions["mixa"] = __version__
    return {"cpu": cpu_model(), "cpu_id": cpu_id(), "cpu_simd": cpu_simd(), "cpu_count": os.cpu_count(),
            "machine": platform.machine(), "os": platform.platform(), "python": platform.python_version(),
            "versions": versions}


def make_record(*, target: str, runtime: str, device: str, threads: Optional[int], batch: int, resolution: int,
                params: Optional[int], macs: Optional[int], seconds: Sequence[float],
                env: Optional[Dict[str, Any]] = None, round_robin: Optional[str] = None) -> Dict[str, Any]:
    """One measurement. ``macs`` are for the whole batch; ``images_per_s`` = batch / median latency;
    ``round_ms`` the timed calls in order, ``round_robin`` names the round-robin they were made in (call i of
    every target of one round-robin belongs to round i)."""
    latency = latency_stats(seconds)
    return {"target": target, "runtime": runtime, "device": device, "threads": threads, "batch": batch,
            "resolution": resolution, "params": params, "macs": macs, "latency_ms": latency,
            "images_per_s": batch / (latency["median"] / 1e3), "environment": env or environment(),
            "round_robin": round_robin, "round_ms": [float(s) * 1e3 for s in seconds]}


def speedups(records: List[Dict[str, Any]]) -> List[float]:
    """Each record's speed-up over the first record with the same runtime/device/threads/batch/resolution
    (the first target given, or the original under --compare). Two records of one round-robin:
    ``mixa.profile.timing.paired_speedup``, the median over rounds of their per-round latency ratio (measured
    on DeiT-T/14 at load average 3 on 2 CPUs: over blocks of 20 rounds the spread of this estimate was 0.7x
    that of the ratio of medians, over 60 rounds 0.3x). Otherwise (separate measurements): the ratio of
    their medians."""
    first: Dict[tuple, Dict[str, Any]] = {}
    out = []
    for r in records:
        base = first.setdefault((r["runtime"], r["device"], r["threads"], r["batch"], r["resolution"]), r)
        paired = r.get("round_robin") is not None and base.get("round_robin") == r["round_robin"] \
            and len(base.get("round_ms") or []) == len(r.get("round_ms") or []) > 0
        if paired:
            out.append(paired_speedup(base["round_ms"], r["round_ms"]))
        else:
            out.append(base["latency_ms"]["median"] / r["latency_ms"]["median"])
    return out


def _giga(value: Optional[int]) -> str:
    return "-" if value is None else f"{value / 1e9:.3f}"


def format_table(records: List[Dict[str, Any]]) -> str:
    """A fixed-width table, one row per record; ``speed-up`` as ``speedups`` computes it."""
    headers = ["target", "runtime", "device", "thr", "batch", "res", "params M", "GMACs", "median ms",
               "p90 ms", "min ms", "img/s", "speed-up"]
    rows = []
    for r, speedup in zip(records, speedups(records)):
        lat = r["latency_ms"]
        rows.append([r["target"], r["runtime"], r["device"], str(r["threads"] or "-"), str(r["batch"]),
                     str(r["resolution"]), "-" if r["params"] is None else f"{r['params'] / 1e6:.2f}",
                     _giga(r["macs"]), f"{lat['median']:.2f}", f"{lat['p90']:.2f}", f"{lat['min']:.2f}",
                     f"{r['images_per_s']:.1f}", f"{speedup:.2f}x"])
    return table(rows, headers, align="l" + "r" * (len(headers) - 1))


CSV_FIELDS = ["target", "runtime", "device", "threads", "batch", "resolution", "params", "macs",
              "latency_median_ms", "latency_mean_ms", "latency_p90_ms", "latency_p99_ms", "latency_min_ms",
              "images_per_s", "cpu", "versions"]


def write_csv(path: os.PathLike | str, records: List[Dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for r in records:
            row = {k: r[k] for k in CSV_FIELDS if k in r}
            row.update({f"latency_{k}_ms": v for k, v in r["latency_ms"].items()})
            row["cpu"] = r["environment"]["cpu"]
            row["versions"] = " ".join(f"{k}={v}" for k, v in r["environment"]["versions"].items() if v)
            writer.writerow(row)


def write_json(path: os.PathLike | str, records: List[Dict[str, Any]]) -> None:
    write_json_file(path, records)


def plot(path: os.PathLike | str, records: List[Dict[str, Any]]) -> None:
    """Median latency vs resolution, one line per target (and runtime/threads when those vary)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MixaError("--plot needs matplotlib: pip install 'mixa[plot]'") from None
    vary = [k for k in ("runtime", "device", "threads", "batch") if len({r[k] for r in records}) > 1]
    lines: Dict[str, List[tuple]] = {}
    for r in records:
        label = " ".join([r["target"], *(f"{k}={r[k]}" for k in vary)])
        lines.setdefault(label, []).append((r["resolution"], r["latency_ms"]["median"]))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in lines.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set_xlabel("input resolution (px)")
    ax.set_ylabel("median latency (ms)")
    ax.set_yscale("log")
    first = records[0]
    ax.set_title(f"{first['runtime']} on {first['device']} ({first['environment']['cpu']})", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
