"""mixa.plan.plan: every (kind, k) configuration of a model measured before fine-tuning, in one call.

For each linear kind the selection scores are computed once (sensitivity: one conversion per layer) and
every k keeps the top-k layers of those scores, exactly as ``mixa.convert(select="sensitivity")`` picks
them. Each configuration is then measured against the original: top-1 agreement and mean KL on the
calibration images, params, MACs, and ONNX Runtime latency at batch 1 (exported to a temporary file and
verified by ``mixa.export``, timed round-robin against the original's file in this process).

With ``transfer_steps`` N > 0 each row is also measured after N steps of layer-wise attention transfer on half
of the calibration images (mixa.plan.transfer: what ``mixa distill``'s first stage recovers): ``agreement``
and ``kl`` are then the post-transfer figures on the other, held-out half (the Pareto front and the budgets
use them) and ``agreement_before`` / ``kl_before`` the converted model's as it is, on every calibration
image (as with N = 0).

With ``work_dir`` every finished row (and every kind's scores) is kept in a JSON file in a directory named
after a hash of the model's weights, the calibration images, the selection strategy, the resolution and the
thread count, so a killed run is rerun cheaply (the timing's rounds / repeat only refine a row: not hashed).
A transferred row's file name carries N and a hash of the transfer settings.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from statistics import median
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from tqdm import tqdm

from ..attention import list_attention_kinds
from ..conversion import attention_kinds, calibration_batches, convert
from ..conversion.select import model_logits, top_k
from ..errors import UsageError
from ..export import export_onnx
from ..export.targets import at_resolution, trained_size
from ..io import write_json
from ..macs import count_macs, count_params
from ..metrics import agreement
from ..profile.ort import input_for, session
from ..profile.records import environment
from ..profile.timing import CLOCKS, paired_speedup, round_robin
from ..profile.torch_runtime import cpu_threads
from ..saved import load_target
from .rows import Plan, PlanRow, mark_pareto
from .settings import DEFAULT_KEEP, DEFAULT_KINDS, DEFAULT_TRANSFER_STEPS, SELECTIONS
from .transfer import Probe, held_out_split, probe_settings, settings_key



def _checked(attn: Sequence[str], keep: Sequence[int], select: str, depth: int) -> Tuple[List[str], List[int]]:
    linear = list_attention_kinds(linear_only=True)
    attn = attn.split(",") if isinstance(attn, str) else list(attn)
    keep = [keep] if isinstance(keep, int) else list(keep)
    kinds = list(dict.fromkeys(attn))
    unknown = [k for k in kinds if k not in linear]
    if unknown or not kinds:
        raise UsageError(f"--attn takes linear kinds from {', '.join(linear)}; got {','.join(attn) or 'nothing'}")
    ks = sorted(set(int(k) for k in keep))
    bad = [k for k in ks if not 0 <= k <= depth]
    if bad or not ks:
        raise UsageError(f"--keep values must be in 0..{depth} (the model has {depth} attention layers); "
                         f"got {','.join(map(str, keep)) or 'nothing'}")
    if select not in SELECTIONS:
        raise UsageError(f"--select must be one of {', '.join(SELECTIONS)}; got {select!r}")
    return kinds, ks


def _calibration(calib, model: nn.Module, images: int) -> List[torch.Tensor]:
    if images < 1:
        raise UsageError(f"--calib-images must be >= 1; got {images}")
    return calibration_batches(calib, model, images=images)


def _fingerprint(model: nn.Module, batches: List[torch.Tensor], settings: Dict[str, Any]) -> str:
    """What a cached row depends on: the weights, the calibration images and the settings."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    for b in batches:
        digest.update(b.detach().cpu().float().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class _Cache:
    """JSON files in one directory per fingerprint; no directory means no cache."""
    def __init__(self, root: Optional[Path]):
        self.root = root

    def get(self, name: str) -> Optional[Dict[str, Any]]:
        if self.root is None or not (self.root / f"{name}.json").is_file():
            return None
        try:
            return json.loads((self.root / f"{name}.json").read_text())
        except ValueError:  # a damaged entry is recomputed
            return None

    def put(self, name: str, value: Dict[str, Any]) -> None:
        if self.root is not None:
            write_json(self.root / f"{name}.json", value)


def time_against(reference_path: os.PathLike | str, path: os.PathLike | str, *, threads: Optional[int],
                 rounds: int, repeat: int, warmup: int, clock: str = "wall") -> Dict[str, float]:
    """Two ONNX files timed at batch 1 with mixa's one timing helper (round-robin: one call of each per
    round, ``rounds * repeat`` rounds), so both see the same load. Returns each file's median (ms) and the
    median per-round ratio reference / file (``speedup``). ``clock="cpu"``: the calling thread's CPU time
    (for 1 thread on a shared machine; see mixa.profile.timing)."""
    calls = []
    for p in (reference_path, path):
        sess = session(p, threads)
        feed, _ = input_for(sess, 1, None)
        calls.append(lambda sess=sess, feed=feed: sess.run(None, feed))
    ref, own = round_robin(calls, warmup=warmup, rounds=rounds * repeat, clock=clock)
    return {"reference_ms": median(ref) * 1e3, "measured_ms": median(own) * 1e3,
            "speedup": paired_speedup(ref, own)}


def _label(model: Union[str, nn.Module]) -> str:
    if isinstance(model, str):
        return model
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return (cfg.get("architecture") if isinstance(cfg, dict) else None) or type(model).__name__


def plan(model: Union[str, nn.Module], calib, *, attn: Union[str, Sequence[str]] = DEFAULT_KINDS,
         keep: Union[None, int, Sequence[int]] = None, select: str = "sensitivity", resolution: Optional[int] = None,
         threads: Optional[int] = 1, calib_images: int = 256, work_dir: Optional[os.PathLike | str] = None,
         rounds: int = 5, repeat: int = 20, warmup: int = 5, transfer_steps: int = DEFAULT_TRANSFER_STEPS,
         transfer: Optional[Dict[str, Any]] = None, clock: str = "wall", progress: bool = True, **source) -> Plan:
    """Measure every (kind, k) of ``attn`` x ``keep`` before fine-tuning; rows sorted by latency, the
    Pareto front marked. ``keep`` defaults to the values of DEFAULT_KEEP up to the model's depth.

    model: a timm name / alias (built with ``source``: checkpoint, pretrained, num_classes, timm kwargs) or
        a saved mixa model directory (``mixa.saved.load_target``), or an unconverted model.
    calib: calibration images (ImageFolder dir, tensor, or iterable of batches); ``calib_images`` of them.
    select: how the k softmax layers are chosen: sensitivity (scores once per kind), first, last, uniform.
    resolution: input size in px (default: the model's trained size); threads: torch and ORT threads.
    rounds / repeat / warmup / clock: the round-robin latency timing (``time_against``).
    transfer_steps: N > 0 scores every row after N steps of layer-wise transfer on the calibration images
        (``transfer``: other settings of mixa.transfer, e.g. lr, batch_size, seed); 0 scores the converted
        models as they are.
    """
    if min(rounds, repeat) < 1 or warmup < 0:
        raise UsageError("rounds and repeat must be >= 1, warmup >= 0")
    if clock not in CLOCKS:
        raise UsageError(f"clock must be one of {', '.join(CLOCKS)}; got {clock!r}")
    if isinstance(transfer_steps, bool) or not isinstance(transfer_steps, int) or transfer_steps < 0:
        raise UsageError(f"--transfer-steps must be an integer >= 0; got {transfer_steps!r}")
    transfer = dict(transfer or {})
    probe_settings(transfer_steps or 1, **transfer)  # bad transfer settings fail here, before any work
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be >= 1; got {threads}")
    label = _label(model)
    if isinstance(model, str):
        model = load_target(model, **source)
    elif source:
        raise UsageError("weight-source options apply only when the model is given by name")
    kinds_now = attention_kinds(model)
    if any(k != "softmax" for k in kinds_now):
        raise UsageError(f"{label} is already converted ({kinds_now.count('softmax')} of {len(kinds_now)} layers "
                         f"softmax); plan starts from the original model")
    depth = len(kinds_now)
    if keep is None:
        keep = [k for k in DEFAULT_KEEP if k <= depth]
    kinds, ks = _checked(attn, keep, select, depth)
    res = resolution or trained_size(model)

    with cpu_threads(threads), torch.no_grad(), tempfile.TemporaryDirectory(prefix="mixa-plan-") as tmp:
        original = at_resolution(model, res).eval()
        batches = _calibration(calib, original, calib_images)
        settings = {"select": select, "img_size": res, "threads": threads,
                    "calib_images": sum(len(b) for b in batches),
                    "calib": str(calib) if isinstance(calib, (str, os.PathLike)) else type(calib).__name__}
        fingerprint = _fingerprint(original, batches, {k: settings[k] for k in ("select", "img_size", "threads")})
        cache = _Cache(Path(work_dir) / fingerprint if work_dir is not None else None)
        reference = model_logits(original, batches)
        size = (3, res, res)
        original_onnx: List[Path] = []  # exported when the first row needs timing

        def measure(converted: nn.Module) -> Dict[str, Any]:
            """The converted model as it is, on every calibration image, and its latency."""
            logits = model_logits(converted, batches)
            if not original_onnx:
                original_onnx.append(export_onnx(original, Path(tmp) / "original.onnx", size).path)
            path = export_onnx(converted, Path(tmp) / "row.onnx", size).path
            timing = time_against(original_onnx[0], path, threads=threads, rounds=rounds, repeat=repeat,
                                  warmup=warmup, clock=clock)
            faithful = agreement(reference, logits)
            return {"agreement": faithful["top1_agreement"], "kl": faithful["mean_kl"],
                    "params": count_params(converted), "macs": count_macs(converted, size), **timing}

        probe = None
        if transfer_steps:
            probe_images, held_out = held_out_split(batches)
            probe, held_out_reference = Probe(original, probe_images), model_logits(original, held_out)
        transfer_config = {kind: probe_settings(transfer_steps, kind=kind, **transfer)
                           for kind in kinds} if transfer_steps else {}

        def build(kind: str, k: int, scores) -> nn.Module:
            if select == "sensitivity":  # k = 0 and k = depth need no scores
                selection = top_k(scores, k) if scores is not None else list(range(k))
            else:
                selection = select
            return convert(original, keep=k, attn=kind, select=selection, progress=False)

        def transferred(kind: str, k: int, scores) -> Dict[str, Any]:
            """Converted (new parameters drawn from the transfer seed, so a row does not depend on the rows
            before it), measured, transferred, measured again."""
            config = transfer_config[kind]
            with torch.random.fork_rng():
                torch.manual_seed(int(config["seed"]))
                converted = build(kind, k, scores)
                entry = measure(converted)
                entry.update(agreement_before=entry["agreement"], kl_before=entry["kl"], transfer_steps=transfer_steps)
                if k < depth:
                    entry["transfer"] = probe.run(converted, config, seed=int(config["seed"]))
                faithful = agreement(held_out_reference, model_logits(converted, held_out))  # k = depth too
                entry.update(agreement=faithful["top1_agreement"], kl=faithful["mean_kl"],
                             held_out_images=sum(len(b) for b in held_out))
            return {**entry, "kept": converted.mixa_config["selection"]["kept"]}

        measured: Dict[tuple, Dict[str, Any]] = {}  # k = depth is the original for every kind: timed once
        entries = []
        bar = tqdm(total=len(kinds) * len(ks), desc="plan", unit="config", disable=not progress)
        for kind in kinds:
            scores = None
            if select == "sensitivity" and any(0 < k < depth for k in ks):
                cached = cache.get(f"scores_{kind}")
                if cached is None:
                    scored = convert(original, keep=1, attn=kind, select="sensitivity", calib=batches,
                                     calib_images=None, progress=progress)
                    cached = {"scores": scored.mixa_config["selection"]["scores"]}
                    cache.put(f"scores_{kind}", cached)
                scores = cached["scores"]
            for k in ks:
                bar.set_postfix_str(f"{kind} k={k}" + (f", {transfer_steps} transfer steps" if probe else ""))
                name = (f"{kind}_k{k}_transfer{transfer_steps}_{settings_key(transfer_config[kind])}" if probe
                        else f"{kind}_k{k}")
                entry = cache.get(name)
                if entry is None:
                    if probe is None:
                        converted = build(kind, k, scores)
                        kept = converted.mixa_config["selection"]["kept"]
                        key = ("original",) if k == depth else (kind, tuple(kept))
                        if key not in measured:
                            measured[key] = measure(converted)
                        entry = {**measured[key], "kind": kind, "keep": k, "kept": kept}
                    elif k == depth and ("original",) in measured:
                        entry = {**measured[("original",)], "kind": kind, "keep": k}
                    else:
                        entry = {**transferred(kind, k, scores), "kind": kind, "keep": k}
                    cache.put(name, entry)
                measured.setdefault(("original",) if k == depth else (kind, tuple(entry["kept"])), entry)
                entries.append(entry)
                bar.update(1)
        bar.close()

    reference_ms = median(e["reference_ms"] for e in entries)
    rows = [PlanRow(kind=e["kind"], keep=e["keep"], kept=list(e["kept"]), agreement=e["agreement"], kl=e["kl"],
                    params=e["params"], macs=e["macs"], latency_ms=reference_ms / e["speedup"],
                    speedup=e["speedup"], agreement_before=e.get("agreement_before"),
                    kl_before=e.get("kl_before"), transfer_steps=e.get("transfer_steps", 0)) for e in entries]
    original_cost = {"params": count_params(original), "macs": count_macs(original, size),
                     "latency_ms": reference_ms}
    settings.update(attn=kinds, keep=ks, rounds=rounds, repeat=repeat, warmup=warmup,
                    work_dir=None if cache.root is None else str(cache.root))
    if transfer_steps:
        settings.update(transfer_steps=transfer_steps, transfer=transfer_config)
    return Plan(model=label, depth=depth, rows=mark_pareto(rows), original=original_cost, settings=settings,
                environment=environment())
