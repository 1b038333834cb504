"""The transfer run (``mixa transfer``): a student's replaced attention layers learn, teacher-forced, to
reproduce the softmax layers of its recorded original on unlabeled images; everything else stays as it is.

Built on distill's engine: the same teacher resolution, run directory, atomic checkpoints, exact resume,
torchrun processes and loaders. The run directory, when the run is complete, is itself a saved mixa model
(``RUN/config.json`` + ``RUN/model.safetensors``) that ``mixa distill --model RUN`` and ``mixa eval`` take:
    RUN/run.json          settings and inputs
    RUN/last/             checkpoint (saved model + train_state.pt) every save_every_steps and at the end
    RUN/metrics.jsonl     per checkpoint: step, images, train error, held-out error per layer (also .csv)
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Dict, Optional

from timm.utils import random_seed
from torch import nn
from tqdm import tqdm

from ..data import SafeImageFolder, eval_transform, resolve_split
from ..distill import data as D
from ..distill.checkpoint import load_last_weights, open_run, rng_state, save_checkpoint, set_rng_state, write_metrics
from ..distill.distributed import Dist
from ..distill.precision import autocast_dtype
from ..distill.teacher import ModelSource, build_teacher, load_model, recorded_original, renormalizer
from ..errors import MixaError, UsageError
from ..io import write_json
from ..models.attention_layers import attention_layers, layer_kind
from ..saved import save
from .layerwise import TransferStep, check_reference, layer_errors, transfer_units
from .settings import transfer_settings


def replaced_layers(model: nn.Module) -> Dict[str, nn.Module]:
    """path -> module of every attention layer that is not softmax (what a conversion replaced)."""
    layers = {path: m for path, m in attention_layers(model) if layer_kind(m) != "softmax"}
    if not layers:
        raise MixaError("the model has no replaced (linear) attention layers: nothing to transfer "
                        "(convert it first with mixa convert)")
    return layers


def transfer(student: ModelSource, data_dir, output, teacher=None, *, teacher_checkpoint: Optional[str] = None,
             resume: bool = False, stop_after: Optional[int] = None, device: Optional[str] = None,
             progress: bool = True, source: Optional[Dict[str, Any]] = None, **overrides) -> Dict[str, Any]:
    """Teacher-forced layer-wise transfer of ``student``'s replaced attention layers (see layerwise.py).

    ``student``: a saved mixa model directory, a timm name built with the weight options in ``source``, or
    a module. ``data_dir``: images without labels: ``DIR/train`` if it exists (``DIR/val`` is then the
    held-out set for the per-layer error), else ``DIR`` (class folders or a flat folder of images).
    ``teacher``: the reference, resolved like distill's (default: the original recorded for the student).
    ``overrides``: settings of mixa.transfer.settings.DEFAULTS (steps, batch_size, lr, ...). ``resume``
    continues ``output`` exactly; ``stop_after`` ends this call after that many steps (the schedule still
    plans ``steps``). Returns the last metrics row plus ``run`` and ``complete``.
    """
    run, state = open_run(output, resume, "transfer")
    given = {k: v for k, v in overrides.items() if v is not None}
    if state is not None:
        given = {**state["settings"], **given}  # a resumed run keeps its resolved settings
    transfer_settings(**given)  # bad settings fail before the models load
    dist = Dist(device)
    try:
        return _run(student, dict(source or {}), data_dir, run, teacher, teacher_checkpoint, given, state,
                    stop_after, dist, progress)
    finally:
        dist.close()


def _datasets(data_dir, student: nn.Module, settings: Dict[str, Any], per_process: int, dist: Dist):
    root = Path(data_dir)
    train_root = resolve_split(root, "train")
    dataset = SafeImageFolder(train_root, eval_transform(student), labeled=False)
    if len(dataset) // dist.world < per_process:
        raise MixaError(f"{len(dataset)} images in {train_root} are fewer than one batch of {per_process} per "
                        f"process ({dist.world} process(es)); lower --batch-size")
    loader = D.train_loader(dataset, per_process, settings["seed"], settings["workers"], dist.rank, dist.world)
    holdout = None
    if settings["eval_images"] and train_root != root and (root / "val").is_dir():
        holdout = D.val_loader(root, student, batch_size=per_process, workers=settings["workers"],
                               max_images=settings["eval_images"], rank=dist.rank, world=dist.world, labeled=False)
    return loader, holdout


def student_kind(layers: Dict[str, nn.Module]) -> Optional[str]:
    """The one attention kind of the replaced layers (None when they mix kinds)."""
    kinds = {layer_kind(m) for m in layers.values()}
    return kinds.pop() if len(kinds) == 1 else None


def _run(student_source, source, data_dir, run: Path, teacher, teacher_checkpoint, given, state, stop_after,
         dist: Dist, progress: bool) -> Dict[str, Any]:
    # Everything that can fail on user input is checked before anything is written.
    random_seed(int(transfer_settings(**given)["seed"]), dist.rank)  # (the seed is not a kind's setting)
    student = load_model(student_source, **source)
    replaced = replaced_layers(student)
    s = settings = transfer_settings(student_kind(replaced), **given)
    layers = transfer_units(student, replaced, s["target"])  # what learns and is matched (as TransferStep finds)
    if s["batch_size"] % dist.world:
        raise UsageError(f"batch_size {s['batch_size']} is not divisible by the {dist.world} processes")
    per_process = s["batch_size"] // dist.world
    autocast_dtype(s["amp"], dist.device)
    train_dl, holdout = _datasets(data_dir, student, s, per_process, dist)
    reference = build_teacher(teacher, recorded_original(student_source, student), teacher_checkpoint)
    check_reference(reference, list(layers))
    if state is not None:
        load_last_weights(student, run, f"the student {student_source}")
    for param in student.parameters():  # only the replaced layers learn (the optimiser holds only theirs)
        param.requires_grad_(False)
    student.to(dist.device).eval()
    reference.to(dist.device)
    warmup = int(round(s["warmup_fraction"] * s["steps"]))
    stepper = TransferStep(reference, replaced, s, dist.device, s["lr"], s["steps"], warmup, ddp=dist.enabled,
                           to_reference=renormalizer(student, reference), student=student)

    history = []
    if state is not None:
        stepper.load_state_dict(state)
        history = list(state["metrics"])
        if len(state["rng"]) == dist.world:
            set_rng_state(state["rng"][dist.rank])
        elif dist.main:
            tqdm.write(f"mixa transfer: resuming with {dist.world} processes instead of {len(state['rng'])}; "
                       f"random streams restart (the run is no longer bit-exact)")
    if dist.main:
        run.mkdir(parents=True, exist_ok=True)
        write_json(run / "run.json", {
            "student": str(student_source), "data": str(data_dir), "teacher": None if teacher is None else str(teacher),
            "teacher_checkpoint": teacher_checkpoint, "settings": s, "processes": dist.world,
            "per_process_batch": per_process, "layers": list(layers)})

    def held_out() -> Dict[str, float]:
        if holdout is None:
            return {}
        return layer_errors(reference, layers, holdout, stepper.to_reference, dist.device, stepper.dtype, dist,
                            residual=s["target"] == "block")

    def metrics_row(train_error: Optional[float]) -> Dict[str, Any]:
        errors = held_out()
        row = {"step": stepper.step, "images": stepper.step * s["batch_size"], "train_error": train_error,
               "lr": stepper.current_lr(), "holdout_error": sum(errors.values()) / len(errors) if errors else None}
        row.update({f"holdout_error/{path}": value for path, value in errors.items()})
        return row

    if not history:
        history.append(metrics_row(None))  # before any step: the error of the fresh conversion

    end = s["steps"] if stop_after is None else min(s["steps"], stepper.step + int(stop_after))
    every = int(s["save_every_steps"] or 0)
    batches_per_epoch = len(train_dl)
    bar = tqdm(total=s["steps"], initial=stepper.step, desc="transfer", disable=not (progress and dist.main),
               leave=False)
    window, t0, start_step = [], time.perf_counter(), stepper.step
    while stepper.step < end:
        epoch, first = divmod(stepper.step, batches_per_epoch)
        D.set_train_epoch(train_dl, epoch, skip_batches=first)
        for images, _, _ in train_dl:
            errors = stepper.forward_backward(images.to(dist.device, non_blocking=True))
            total = float(errors.sum())
            if not math.isfinite(total):
                raise MixaError(f"transfer error became {total} at step {stepper.step}; lower --lr or use --amp none")
            window = (window + [float(errors.mean())])[-50:]
            bar.update(1)
            bar.set_postfix(error=f"{window[-1]:.4f}", lr=f"{stepper.current_lr():.2e}",
                            img_s=f"{(stepper.step - start_step) * s['batch_size'] / (time.perf_counter() - t0):.1f}",
                            refresh=False)
            if stepper.step == end or (every and stepper.step % every == 0):
                row = metrics_row(sum(window) / len(window))
                history.append(row)
                rngs = dist.gather(rng_state())
                if dist.main:
                    save_checkpoint(run, "last", student, {"settings": s, "metrics": history, "rng": rngs,
                                                           **stepper.state_dict()})
                    write_metrics(run, history)
                    if progress:
                        held = f"  held-out error {row['holdout_error']:.4f}" if row["holdout_error"] is not None else ""
                        tqdm.write(f"step {stepper.step}/{s['steps']}: train error {row['train_error']:.4f}{held}")
                dist.barrier()
            if stepper.step >= end:
                break
    bar.close()
    complete = stepper.step >= s["steps"]
    if complete and dist.main:
        save(student, run)  # the run directory is now the transferred model (config written last)
    dist.barrier()
    return {**history[-1], "first": history[0], "run": str(run), "complete": complete, "layers": list(layers)}
