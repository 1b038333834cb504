"""The distillation run: a student, its frozen teacher, epochs of DistillStep, validation, checkpoints.

Run directory layout and checkpoint semantics: mixa.distill.checkpoint.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from timm.utils import random_seed
from tqdm import tqdm

from ..errors import MixaError, UsageError
from ..io import write_json
from ..metrics import clearly_above
from ..models.attention_layers import attention_layers, layer_kind
from ..transfer.run import transfer
from . import data as D
from .checkpoint import (load_last_weights, load_train_state, open_run, recover_checkpoint, rng_state, save_checkpoint,
                         set_rng_state, write_metrics)
from .distributed import Dist, Sums
from .evaluation import evaluate_loader
from .precision import autocast_dtype
from .recipes import (AFTER_TRANSFER_AUTO, auto_lr_scale, candidate_transfers, choose_transfer, load_recipe,
                      probe_keeps, probe_steps, transfer_batch, warmup_steps)
from .step import DistillStep
from .teacher import ModelSource, build_teacher, check_classes, check_teacher, load_model, recorded_original

TRANSFER_STAGE = "transfer"
# A KD epoch replaces the transferred student as RUN/best only when its val top-1 is higher by more than this
# many standard errors of the difference: near the teacher KD epochs and the transfer differ by a few val
# images, and "higher wins" handed over KD epochs that were below the transfer on test scenes
# (benchmarks/transfer/stage_best_plan). Between KD epochs the higher val top-1 wins, as usual.
KEEP_TRANSFER_STANDARD_ERRORS = 1.0


def _has_checkpoint(run: Path) -> bool:
    return (run / "last").exists() or (run / ".last.old").exists()


def _transfer_stage(student, student_source, source, data_dir, run: Path, teacher, teacher_checkpoint,
                    s: Dict[str, Any], dist: Dist, progress: bool, stop_after: Optional[int] = None) -> None:
    """``transfer_steps`` of layer-wise attention transfer into RUN/transfer (resumed if it was killed; with
    ``stop_after``, that many more steps only), loaded into ``student``: distillation starts from it."""
    stage = run / TRANSFER_STAGE
    transfer(student_source, data_dir, stage, teacher=teacher, teacher_checkpoint=teacher_checkpoint,
             resume=(stage / "last").exists() or (stage / ".last.old").exists(), stop_after=stop_after,
             device=str(dist.device), progress=progress, source=source, steps=s["transfer_steps"],
             lr=s["transfer_lr"], batch_size=transfer_batch(s), seed=s["seed"], workers=s["workers"], amp=s["amp"])
    dist.barrier()
    load_last_weights(student, stage, f"the student {student_source}")


def _probe_transfer(student, student_source, source, data_dir, run: Path, t_model, teacher_checkpoint,
                    s: Dict[str, Any], dist: Dist, progress: bool) -> Dict[str, Any]:
    """transfer_steps "auto"'s probe of the long transfer (recipes.probe_steps; run.json:
    ``transfer_steps_auto.probe_steps``): its first steps into RUN/transfer, then the partly transferred
    student against the teacher on the training images (``transfer_steps_auto.probe``). Returns the settings,
    with transfer_steps 0 when the probe stops the transfer: the run is then plain KD from the converted
    student. A killed probe resumes; a decided one is not probed again."""
    dist.barrier()  # (run.json is the main process's)
    info = json.loads((run / "run.json").read_text())
    auto = info.get("transfer_steps_auto") or {}
    steps = auto.get("probe_steps", 0)
    if not steps or "probe" in auto:
        return s
    stage = run / TRANSFER_STAGE
    if dist.main and stage.is_dir():
        recover_checkpoint(stage, "last")
    dist.barrier()
    done = load_train_state(stage / "last")["step"] if (stage / "last").is_dir() else 0
    partial = copy.deepcopy(student)
    if done < steps:
        _transfer_stage(partial, student_source, source, data_dir, run, t_model, teacher_checkpoint, s, dist,
                        progress, stop_after=steps - done)
    else:  # (killed between the probe's steps and its verdict)
        load_last_weights(partial, stage, f"the student {student_source}")
    measured = train_agreement(partial, t_model, data_dir, s, dist)
    kept = probe_keeps(measured["agreement_top1"])
    if not kept:
        s = {**s, "transfer_steps": 0}
    if dist.main:
        write_json(run / "run.json", {**info, "settings": s, "transfer_steps_auto": {
            **auto, "probe": {**measured, "steps": steps, "kept": kept}}})
        tqdm.write(f"mixa distill: after {steps} transfer step(s) the student agrees with the teacher on "
                   f"{measured['agreement_top1']:.1f}% of {measured['images']} training images: "
                   + ("the transfer goes on" if kept else "the transfer stops there, KD starts from the converted "
                      "student (RUN/transfer keeps the probe)") + " (transfer_steps auto)")
    dist.barrier()
    return s


def _score_transferred(student, val_dl, t_model, run: Path, s: Dict[str, Any], dist: Dist,
                       progress: bool) -> Dict[str, Any]:
    """The transferred student (or the converted one, for a stage without transfer) on val, recorded in
    RUN/run.json (``after_transfer``) and saved as RUN/best, the checkpoint each KD epoch has to beat to
    replace it."""
    student.to(dist.device)
    what = "as converted" if s["stage_from_converted"] else "after transfer"
    val = evaluate_loader(student, val_dl, t_model, dist.device, autocast_dtype(s["amp"], dist.device), dist,
                          progress=progress and dist.main, desc=f"val {what}")
    scores = {key: val.get(key) for key in ("top1", "top5", "loss", "agreement_top1", "mean_kl")}
    if dist.main:
        save_checkpoint(run, "best", student, None)
        info = json.loads((run / "run.json").read_text())
        write_json(run / "run.json", {**info, "after_transfer": scores})
        tqdm.write(f"mixa distill: {what}: val top-1 {val['top1']:.2f}"
                   + (f"  agree {val['agreement_top1']:.2f}" if val.get("agreement_top1") is not None else "")
                   + " (RUN/best until a KD epoch beats it by more than one standard error)")
    dist.barrier()
    return scores


def replaces_best(top1: float, best: float, best_epoch: Optional[int], val_images: int) -> bool:
    """Does a KD epoch with val top-1 ``top1`` replace RUN/best (val top-1 ``best``, from epoch ``best_epoch``;
    0: the transferred student, None: nothing yet)? The transferred student gives way only to an epoch
    clearly above it (KEEP_TRANSFER_STANDARD_ERRORS); otherwise the higher val top-1 wins."""
    if best_epoch == 0:
        return clearly_above(top1, best, val_images, KEEP_TRANSFER_STANDARD_ERRORS)
    return top1 > best


def converted(student) -> bool:
    """Does ``student`` have replaced (linear) attention layers, something to transfer into?"""
    try:
        return any(layer_kind(m) != "softmax" for _, m in attention_layers(student))
    except UsageError:  # a model family mixa does not convert: nothing to transfer
        return False


def train_agreement(student, teacher, data_dir, s: Dict[str, Any], dist: Dist) -> Dict[str, Any]:
    """The student's top-1 agreement with the teacher on the first AFTER_TRANSFER_AUTO["images"] training
    images, without augmentation: what the "auto" rules of transfer_steps and after_transfer_lr_scale read."""
    images = AFTER_TRANSFER_AUTO["images"]
    student.to(dist.device)  # (loaded on the CPU; the teacher and the batches are on the run's device)
    loader = D.val_loader(data_dir, student, batch_size=min(64, images), workers=s["workers"], split="train",
                          max_images=images, rank=dist.rank, world=dist.world)
    measured = evaluate_loader(student, loader, teacher, dist.device, dist=dist)
    return {"agreement_top1": round(measured["agreement_top1"], 2), "images": measured["images"]}


def resolve_transfer_steps(s: Dict[str, Any], student, teacher, data_dir, train_images: int, kd_images: int,
                           dist: Dist) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]]]:
    """The settings with transfer_steps as a number, and what "auto" measured (None: nothing). "auto" is 0
    for a student without replaced attention layers or without a teacher (nothing to transfer, no
    reference); for a converted student it is TRANSFER_AUTO's rule on its agreement with the teacher
    (run.json: ``transfer_steps_auto``, with the tier), in a run whose KD processes ``kd_images``. A converted
    student near the teacher gets no transfer stage and its KD becomes the stage after one
    (``stage_from_converted``, after_transfer_lr_scale "auto" resolved on the same measurement); one in the
    "kd" tier gets plain KD."""
    if s["transfer_steps"] != "auto":
        return {**s, "transfer_steps": int(s["transfer_steps"])}, None
    if s["kd"] == "none" or teacher is None or not converted(student):
        return {**s, "transfer_steps": 0}, None
    measured = train_agreement(student, teacher, data_dir, s, dist)
    candidates = candidate_transfers(train_images, s["batch_size"], s["transfer_batch_size"])
    tier, steps, batch = choose_transfer(candidates, measured["agreement_top1"], kd_images)
    s = {**s, "transfer_steps": steps, **({"transfer_batch_size": batch} if steps else {})}
    if tier == "near":
        s["stage_from_converted"] = True
        if s["after_transfer_lr_scale"] == "auto":
            s["after_transfer_lr_scale"] = auto_lr_scale(measured["agreement_top1"])
    return s, {**measured, "steps": steps, "tier": tier,
               "probe_steps": probe_steps(tier, measured["agreement_top1"], steps),
               **{f"{name}_transfer_images": n * b for name, (n, b) in candidates.items()}, "kd_images": kd_images}


def _auto_choice(auto: Dict[str, Any], s: Dict[str, Any], lr: float) -> str:
    """What transfer_steps "auto" chose, in words (the run's first lines)."""
    if auto["tier"] == "near":
        return f"no transfer, KD at lr x {s['after_transfer_lr_scale']:g} = {lr:.3g}"
    if auto["tier"] == "kd":
        return (f"no transfer, KD at the recipe's lr {lr:.3g}: even the between transfer's "
                f"{auto['between_transfer_images']} images would exceed this run's {auto['kd_images']} KD images")
    chose = f"{auto['steps']} transfer step(s) of {transfer_batch(s)} images"
    if auto["tier"] == "between":
        chose += (f", the between transfer (the long one's {auto['long_transfer_images']} images would exceed this "
                  f"run's {auto['kd_images']} KD images)")
    return chose + (f", probed after {auto['probe_steps']}" if auto["probe_steps"] else "")


def staged(s: Dict[str, Any]) -> bool:
    """Is this run's KD the stage after transfer (a transfer stage ran, or none was needed)?"""
    return bool(s["transfer_steps"]) or s["stage_from_converted"]


def stage_settings(s: Dict[str, Any]) -> Dict[str, Any]:
    """The settings distillation runs with: after a transfer stage, hidden states matched with
    after_transfer_hidden_weight (see recipes.DEFAULTS)."""
    if staged(s):
        return {**s, "hidden_weight": s["after_transfer_hidden_weight"]}
    return s


def scaled_lr(s: Dict[str, Any]) -> float:
    """The recipe's lr, scaled linearly for the global batch (lr_base_batch) and by after_transfer_lr_scale
    after a transfer stage (still "auto" before that stage has run: the recipe's lr, as planned)."""
    lr = s["lr"] * (s["batch_size"] / s["lr_base_batch"] if s["lr_base_batch"] else 1.0)
    scale = s["after_transfer_lr_scale"]
    return lr * (scale if staged(s) and scale != "auto" else 1.0)


def resolve_lr_scale(student, teacher, data_dir, s: Dict[str, Any], dist: Dist) -> Dict[str, Any]:
    """after_transfer_lr_scale "auto" as a number (recipes.AFTER_TRANSFER_AUTO), from the transferred
    student's top-1 agreement with the teacher on the first training images, without augmentation."""
    measured = train_agreement(student, teacher, data_dir, s, dist)
    return {"after_transfer_lr_scale": auto_lr_scale(measured["agreement_top1"]), **measured}


def describe(s: Dict[str, Any], steps_per_epoch: int, warmup: int, train_images: int) -> List[str]:
    """What the run will do, in a few lines printed at its start (what a recipe does is visible)."""
    lr = scaled_lr(s)
    why = []
    if s["lr_base_batch"] and s["batch_size"] != s["lr_base_batch"]:
        why.append(f"x {s['batch_size']}/{s['lr_base_batch']} linear batch rule")
    if s["transfer_steps"] and s["after_transfer_lr_scale"] == "auto":
        why.append("x after_transfer_lr_scale auto: set after transfer")
    elif staged(s) and s["after_transfer_lr_scale"] != 1:
        why.append(f"x {s['after_transfer_lr_scale']:g} " + ("near the teacher" if s["stage_from_converted"]
                                                             else "after transfer"))
    lines = [f"{s['epochs']} epoch(s) x {steps_per_epoch} step(s) of {s['batch_size']} images; lr {lr:.3g} "
             f"(recipe {s['lr']:.3g}{', ' + ', '.join(why) if why else ''}), warm-up {warmup} step(s)"
             + (f" (the recipe's {s['warmup_epochs']:g} epoch(s), capped at {s['warmup_max_fraction']:.0%} of the run)"
                if warmup < round(s["warmup_epochs"] * steps_per_epoch) else "") + ", then cosine"]
    if lr < 10 * s["min_lr"]:
        lines.append(f"lr {lr:.3g} is within 10x of min_lr {s['min_lr']:.3g}: the schedule barely moves (the recipe's "
                     f"lr is for a batch of {s['lr_base_batch']}); pass --lr")
    if s["transfer_steps"]:
        batch = transfer_batch(s)
        lines.append(f"first {s['transfer_steps']} step(s) of {batch} images of layer-wise transfer "
                     f"({s['transfer_steps'] * batch} images, into RUN/transfer; --transfer-steps 0: off), then KD"
                     + (f" matching the teacher's logits and block outputs (hidden weight "
                        f"{s['after_transfer_hidden_weight']:g})" if s["after_transfer_hidden_weight"] else ""))
    heavy = [text for text, on in (
        (f"RandAugment {s['auto_augment']}", s["auto_augment"]), (f"random erasing {s['reprob']}", s["reprob"]),
        (f"crops down to {s['scale'][0]:.0%} of the image", s["scale"][0] < 0.5),
        (f"Mixup {s['mixup']}", s["mixup"]), (f"CutMix {s['cutmix']}", s["cutmix"])) if on]
    if heavy:
        lines.append("augmentation: " + ", ".join(heavy)
                     + (f" -- made for ImageNet-scale data; with {train_images} training images it may keep the "
                        f"student from fitting (--recipe small: no augmentation, short runs)"
                        if train_images < 20000 else ""))
    return lines


@dataclasses.dataclass
class TrainSums(Sums):
    loss: float = 0.0
    ce: float = 0.0
    kd: float = 0.0
    hidden: float = 0.0
    batches: float = 0.0
    skipped: float = 0.0


def distill(student: ModelSource, data_dir, output, teacher=None, recipe=None, *,
            teacher_checkpoint: Optional[str] = None, resume: bool = False, stop_after: Optional[int] = None,
            stop_after_steps: Optional[int] = None, device: Optional[str] = None, progress: bool = True,
            source: Optional[Dict[str, Any]] = None, **overrides) -> Dict[str, Any]:
    """Fine-tune ``student`` (a saved mixa model directory, a timm name built with the weight options in
    ``source``, or a module) on ``data_dir`` (train/ and val/ class folders) with knowledge distillation
    from ``teacher`` (default: the original recorded for the student; "none": no teacher, labels only).

    ``recipe`` is a packaged recipe name, a YAML path or a dict; ``overrides`` are recipe settings
    (epochs, batch_size, lr, seed, workers, amp, kd, kd_weight, kd_temperature, ema, ...). ``resume``
    continues ``output`` exactly (settings from the run; overrides such as a larger ``epochs`` apply).
    ``stop_after`` ends this call after that many epochs (the schedule still plans ``epochs``);
    ``stop_after_steps`` after that many optimiser steps, inside an epoch if need be (RUN/last then holds
    the step checkpoint that ``resume`` continues exactly; no validation at that point).
    Launched under torchrun, trains with DistributedDataParallel; only rank 0 writes.
    Returns the last epoch's metrics plus ``best_top1``, ``best_epoch`` (the epoch of RUN/best; 0: the
    transferred student: no KD epoch beat it by more than KEEP_TRANSFER_STANDARD_ERRORS), ``epochs_done``
    and ``run``.
    """
    if teacher == "none":
        teacher, overrides = None, {**overrides, "kd": "none"}
    given = {k: v for k, v in overrides.items() if v is not None}
    stage = Path(output) / TRANSFER_STAGE
    if resume and stage.is_dir() and not _has_checkpoint(Path(output)):
        # killed during the transfer stage: it resumes, then distillation starts (settings from run.json)
        run, state = Path(output), None
        settings = load_recipe({**json.loads((run / "run.json").read_text())["settings"], **given})
    else:
        if not resume and stage.exists():
            raise UsageError(f"{output} holds a distill run (in its transfer stage); pass --resume to continue "
                             f"it or choose another --output")
        run, state = open_run(output, resume, "distill")
        settings = load_recipe({**state["settings"], **given} if state is not None else recipe,
                               **({} if state is not None else given))
    if stop_after_steps is not None and (isinstance(stop_after_steps, bool) or not isinstance(stop_after_steps, int)
                                         or stop_after_steps < 1):
        raise UsageError(f"stop_after_steps must be a positive integer, got {stop_after_steps!r}")
    dist = Dist(device)
    try:
        return _run(student, dict(source or {}), data_dir, run, teacher, teacher_checkpoint, settings, state,
                    stop_after, stop_after_steps, dist, progress)
    finally:
        dist.close()


def _run(student_source, source, data_dir, run, teacher, teacher_checkpoint, settings, state, stop_after,
         stop_after_steps, dist, progress) -> Dict[str, Any]:

    s = settings
    world, accum = dist.world, s["accum_steps"]
    if s["batch_size"] % (world * accum):
        raise UsageError(f"batch_size {s['batch_size']} is not divisible by processes x accum_steps "
                         f"= {world} x {accum}")
    per_process = s["batch_size"] // (world * accum)
    random_seed(int(s["seed"]), dist.rank)

    # Everything that can fail on user input is checked before anything is written.
    autocast_dtype(s["amp"], dist.device)
    student = load_model(student_source, **source)
    original = recorded_original(student_source, student)
    train_dl, train_set = D.labeled_train_loader(data_dir, student, s, per_process, dist.rank, world)
    val_dl = D.val_loader(data_dir, student, batch_size=s["eval_batch_size"] or per_process,
                          workers=s["workers"], rank=dist.rank, world=world)
    check_classes(student, train_set, D.split_dir(data_dir, "train"))
    check_classes(student, val_dl.dataset, D.split_dir(data_dir, "val"))
    if train_set.classes != val_dl.dataset.classes:
        raise MixaError(f"train/ and val/ of {data_dir} have different class folders")
    if len(train_set) // world < per_process:
        raise MixaError(f"{len(train_set)} training images are fewer than one batch of {per_process} "
                        f"per process ({world} process(es)); lower --batch-size")
    t_model = build_teacher(teacher, original, teacher_checkpoint) if s["kd"] != "none" or teacher else None
    if t_model is not None:
        check_teacher(student, t_model)
        t_model.to(dist.device)
    steps_per_epoch = len(train_dl) // accum
    if steps_per_epoch < 1:
        raise MixaError(f"one epoch has {len(train_dl)} batches, fewer than accum_steps={accum}")
    if state is not None:
        load_last_weights(student, run, f"the student {student_source}")
    total = s["epochs"] * steps_per_epoch  # optimiser steps of KD
    s, transfer_auto = resolve_transfer_steps(s, student, t_model, data_dir, len(train_set), total * s["batch_size"],
                                              dist)
    settings = s
    lr = scaled_lr(s)
    warmup = warmup_steps(s, steps_per_epoch)
    if dist.main and state is None:
        for line in describe(s, steps_per_epoch, warmup, len(train_set)):
            tqdm.write(f"mixa distill: {line}")
    if dist.main:
        run.mkdir(parents=True, exist_ok=True)
        # (a resumed run keeps what its stages recorded: transfer_steps_auto, after_transfer, ...)
        recorded = json.loads((run / "run.json").read_text()) if (run / "run.json").is_file() else {}
        write_json(run / "run.json", {**recorded,
            "student": str(student_source), "data": str(data_dir), "teacher": None if teacher is None else str(teacher),
            "teacher_checkpoint": teacher_checkpoint, "settings": s, "processes": world,
            "per_process_batch": per_process, "lr_scaled": lr, "steps_per_epoch": steps_per_epoch,
            **({"transfer_steps_auto": transfer_auto} if transfer_auto else {})})
    if dist.main and transfer_auto is not None:
        chose = _auto_choice(transfer_auto, s, lr)
        tqdm.write(f"mixa distill: the converted student agrees with the teacher on {transfer_auto['agreement_top1']:.1f}% "
                   f"of {transfer_auto['images']} training images: {chose} (transfer_steps auto)")
    best, best_epoch = -1.0, None  # best_epoch 0: the transferred student
    if state is None and s["stage_from_converted"]:
        best, best_epoch = _score_transferred(student, val_dl, t_model, run, s, dist, progress)["top1"], 0
    if state is None and s["transfer_steps"]:
        s = settings = _probe_transfer(student, student_source, source, data_dir, run, t_model, teacher_checkpoint, s,
                                       dist, progress)
    if state is None and s["transfer_steps"]:
        _transfer_stage(student, student_source, source, data_dir, run, t_model if t_model is not None else teacher,
                        teacher_checkpoint, s, dist, progress)
        if s["after_transfer_lr_scale"] == "auto" and t_model is not None:
            auto = resolve_lr_scale(student, t_model, data_dir, s, dist)
            s = settings = {**s, "after_transfer_lr_scale": auto["after_transfer_lr_scale"]}
            lr = scaled_lr(s)
            if dist.main:
                tqdm.write(f"mixa distill: after transfer the student agrees with the teacher on "
                           f"{auto['agreement_top1']:.1f}% of {auto['images']} training images: KD at lr x "
                           f"{s['after_transfer_lr_scale']:g} = {lr:.3g} (after_transfer_lr_scale auto)")
                info = json.loads((run / "run.json").read_text())
                write_json(run / "run.json", {**info, "settings": s, "lr_scaled": lr, "after_transfer_lr_scale_auto": auto})
        # The transferred student competes for RUN/best: KD that does not clearly beat it on val leaves it there.
        best, best_epoch = _score_transferred(student, val_dl, t_model, run, s, dist, progress)["top1"], 0
    # Training draws the same random numbers however its models were built (a teacher's random init, a
    # transfer stage): a run after a transfer stage is the run started from the transferred model.
    random_seed(int(s["seed"]), dist.rank)
    student.to(dist.device).train()
    mixup = D.mixup_fn(s, len(train_set.classes))

    stepper = DistillStep(student, t_model, stage_settings(s), dist.device, lr, total, warmup, ddp=dist.enabled)

    history: List[Dict[str, Any]] = []
    start_epoch = 0
    resume_batch, resume_sums = 0, None
    if state is not None:
        stepper.load_state_dict(state)
        start_epoch, best, history = int(state["epoch"]), float(state["best_top1"]), list(state["metrics"])
        best_epoch = state.get("best_epoch")
        resume_batch = int(state.get("batch", 0))  # > 0: the checkpoint was written inside an epoch
        partials = state.get("partial_sums") or []
        resume_sums = TrainSums.from_dict(partials[dist.rank]) if len(partials) == world else None
        rngs = state["rng"]
        if len(rngs) == world:
            set_rng_state(rngs[dist.rank])
        elif dist.main:
            tqdm.write(f"mixa distill: resuming with {world} processes instead of {len(rngs)}; "
                       f"random streams restart (the run is no longer bit-exact)")

    end_epoch = s["epochs"] if stop_after is None else min(s["epochs"], start_epoch + int(stop_after))
    stop_step = None if stop_after_steps is None else stepper.step + int(stop_after_steps)
    row: Dict[str, Any] = history[-1] if history else {}
    batches_per_epoch = len(train_dl)
    every = int(s.get("save_every_steps") or 0)

    def result(epochs_done: int) -> Dict[str, Any]:
        return {**row, "best_top1": best, "best_epoch": best_epoch, "epochs_done": epochs_done,
                "step": stepper.step, "run": str(run)}

    def train_state(**position) -> Dict[str, Any]:
        return {**position, "best_top1": best, "best_epoch": best_epoch, "metrics": history, "settings": s, **stepper.state_dict()}

    for epoch in range(start_epoch, end_epoch):
        first = resume_batch if epoch == start_epoch else 0
        D.set_train_epoch(train_dl, epoch, skip_batches=first)
        sums = resume_sums if first and resume_sums is not None else TrainSums()
        bar = tqdm(total=batches_per_epoch, initial=first, desc=f"epoch {epoch + 1}/{s['epochs']}",
                   disable=not (progress and dist.main), leave=False)
        t0, seen = time.perf_counter(), 0
        for batch, (images, target, skipped) in enumerate(train_dl, start=first):
            images, target = images.to(dist.device, non_blocking=True), target.to(dist.device, non_blocking=True)
            if mixup is not None:
                images, target = mixup(images, target)
            parts = stepper.forward_backward(images, target)
            loss = parts["loss"].item()
            if not math.isfinite(loss):
                raise MixaError(f"training loss became {loss} at epoch {epoch + 1}, step {stepper.step}; "
                                f"lower --lr or use --amp none")
            sums.add(loss=loss, ce=parts["ce"].item(), kd=parts["kd"].item(), hidden=parts["hidden"].item(), batches=1,
                     skipped=(skipped > 0).sum().item())
            seen += images.shape[0] * world
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{stepper.current_lr():.2e}",
                            img_s=f"{seen / (time.perf_counter() - t0):.1f}", refresh=False)
            stepped = (batch + 1) % accum == 0
            stopping = stop_step is not None and stepped and stepper.step >= stop_step
            if stepped and batch + 1 < batches_per_epoch and (stopping or every and stepper.step % every == 0):
                # A kill inside a long epoch loses at most `every` steps: RUN/last resumes here.
                rngs, partials = dist.gather(rng_state()), dist.gather(sums.as_dict())
                if dist.main:
                    save_checkpoint(run, "last", stepper.model, train_state(
                        epoch=epoch, batch=batch + 1, partial_sums=partials, rng=rngs))
                if stopping:
                    bar.close()
                    dist.barrier()
                    return result(epoch)
        bar.close()
        train_time = time.perf_counter() - t0
        sums = sums.reduced(dist)
        val = evaluate_loader(stepper.model, val_dl, t_model, dist.device, stepper.dtype, dist,
                              progress=progress and dist.main, desc="val")
        row = {"epoch": epoch + 1, "step": stepper.step, "train_loss": sums.loss / sums.batches,
               "train_ce": sums.ce / sums.batches, "train_kd": sums.kd / sums.batches,
               "train_hidden": sums.hidden / sums.batches, "lr": stepper.current_lr(),
               "images_per_s": seen / train_time, "val_top1": val["top1"], "val_top5": val["top5"],
               "val_loss": val["loss"], "agreement_top1": val.get("agreement_top1"), "mean_kl": val.get("mean_kl"),
               "skipped_images": int(sums.skipped) + val["skipped"], "skipped_train_images": int(sums.skipped),
               "skipped_val_images": val["skipped"], "epoch_time_s": train_time}
        if stepper.ema is not None:
            ema_val = evaluate_loader(stepper.ema.module, val_dl, None, dist.device, stepper.dtype, dist)
            row.update({"ema_val_top1": ema_val["top1"], "ema_val_top5": ema_val["top5"]})
        history.append(row)
        is_best = replaces_best(row["val_top1"], best, best_epoch, val["images"])
        if best_epoch == 0 and not is_best and row["val_top1"] > best and dist.main:
            tqdm.write(f"mixa distill: epoch {epoch + 1}: val top-1 {row['val_top1']:.2f} is within one standard "
                       f"error of the transferred student's {best:.2f}: RUN/best stays the transferred student")
        best = row["val_top1"] if is_best else best
        best_epoch = epoch + 1 if is_best else best_epoch
        rngs = dist.gather(rng_state())
        if dist.main:
            ckpt = train_state(epoch=epoch + 1, rng=rngs)
            save_checkpoint(run, "last", stepper.model, ckpt)
            if is_best:
                save_checkpoint(run, "best", stepper.model, ckpt)
            if stepper.ema is not None:
                save_checkpoint(run, "ema", stepper.ema.module, None)
            write_metrics(run, history)
            if progress:
                tqdm.write(f"epoch {epoch + 1}/{s['epochs']}: loss {row['train_loss']:.4f}  "
                           f"val top-1 {row['val_top1']:.2f}  top-5 {row['val_top5']:.2f}"
                           + (f"  agree {row['agreement_top1']:.2f}" if row["agreement_top1"] is not None else "")
                           + f"  lr {row['lr']:.2e}  {row['images_per_s']:.1f} img/s")
            if row["skipped_images"]:
                tqdm.write(f"mixa distill: epoch {epoch + 1}: {row['skipped_train_images']} unreadable training "
                           f"image(s) replaced by readable ones, {row['skipped_val_images']} unreadable val "
                           f"image(s) left out")
        dist.barrier()
        if stop_step is not None and stepper.step >= stop_step:
            end_epoch = epoch + 1
            break
    return result(end_epoch)
