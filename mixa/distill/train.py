"""The distillation loop: student from a saved mixa model, frozen teacher, AdamW + cosine, run state.

A run directory holds:
    RUN/run.json          the resolved settings and inputs (written at the start)
    RUN/last/             saved model (model.safetensors + config.json) + train_state.pt, every epoch
    RUN/best/             the same, for the epoch with the best val top-1
    RUN/ema/              saved model of the EMA weights (when ema is on)
    RUN/metrics.jsonl     one row per epoch (also RUN/metrics.csv)
Each checkpoint directory is written complete under a temporary name and then renamed into place, so a
kill at any moment leaves the previous ``last`` (or, in the instant between two renames, ``.last.old``,
which ``--resume`` picks up).
"""
from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch import nn

from .. import io as mio
from ..data import data_config
from ..errors import MixaError, UsageError
from . import data as D
from .losses import agreement, cross_entropy, distillation_loss, topk_correct
from .recipes import load_recipe

STATE_NAME = "train_state.pt"
STATE_VERSION = 1


# ----------------------------------------------------------------------------------------------------
# schedule and optimiser

def lr_at(step: int, total_steps: int, warmup_steps: int, lr: float, min_lr: float, warmup_lr: float) -> float:
    """Linear warm-up from ``warmup_lr`` to ``lr`` over ``warmup_steps``, then cosine down to ``min_lr``
    at ``total_steps``. ``step`` counts optimiser steps from 0."""
    if step < warmup_steps:
        return warmup_lr + (lr - warmup_lr) * step / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def no_decay(name: str, param: nn.Parameter, skip: set) -> bool:
    """Norm weights, biases, position embeddings, tokens and MixAttention's gate/LePE take no decay."""
    leaf = name.rsplit(".", 1)[-1]
    return (param.ndim <= 1 or name in skip or leaf in skip or name.endswith(".bias")
            or ".gate." in name or ".lepe." in name or "pos_embed" in name or "token" in leaf
            or "relative_position_bias_table" in name)


def param_groups(model: nn.Module, weight_decay: float) -> List[Dict[str, Any]]:
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, plain = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (plain if no_decay(name, param, skip) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


# ----------------------------------------------------------------------------------------------------
# processes, devices, precision

class Dist:
    """Rank and world from torchrun's environment; one process when not launched by torchrun."""

    def __init__(self, device: Optional[str] = None):
        import torch.distributed as tdist

        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device is None:
            device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.owns_group = False
        if self.world > 1 and not tdist.is_initialized():
            tdist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")
            self.owns_group = True
        self.enabled = self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, values: List[float]) -> List[float]:
        if not self.enabled:
            return list(values)
        import torch.distributed as tdist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        tdist.all_reduce(t)
        return t.tolist()

    def gather(self, obj) -> list:
        if not self.enabled:
            return [obj]
        import torch.distributed as tdist

        out = [None] * self.world
        tdist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as tdist

            tdist.barrier()

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as tdist

            tdist.destroy_process_group()


def autocast_dtype(amp: str, device: torch.device) -> Optional[torch.dtype]:
    if device.type == "cuda":
        if amp == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp]
    if amp == "fp16":
        raise UsageError("fp16 autocast needs a CUDA device; use --amp bf16 or --amp none on CPU")
    return torch.bfloat16 if amp == "bf16" else None


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# ----------------------------------------------------------------------------------------------------
# models

def load_student(student) -> nn.Module:
    """A saved mixa model directory (or an nn.Module, used as is)."""
    if isinstance(student, nn.Module):
        return student
    path = Path(student)
    mio.read_config(path)  # clear error for anything that is not a saved mixa model
    return mio.load(path)


def build_teacher(teacher, student_cfg: Optional[Dict[str, Any]], checkpoint: Optional[str] = None) -> nn.Module:
    """The frozen teacher. ``None``/"auto": the original model recorded in the student's config
    (timm pretrained weights or its checkpoint, its timm kwargs; the input size stays the student's).
    A saved mixa directory, a timm name/alias (pretrained, or ``checkpoint``) or an nn.Module also work."""
    from ..models import create_model

    if isinstance(teacher, nn.Module):
        model = teacher
    elif teacher is None or teacher == "auto":
        base = (student_cfg or {}).get("base")
        if not isinstance(base, dict) or not base.get("model"):
            raise MixaError("the student's config records no base model; pass --teacher NAME|DIR")
        ckpt = checkpoint or base.get("checkpoint")
        if ckpt is None and not base.get("pretrained", True) and os.environ.get("RANK", "0") == "0":
            import sys

            print(f"mixa: warning: the student was converted from a randomly initialised {base['model']}; "
                  f"the default teacher has random weights (pass --teacher or --teacher-checkpoint)", file=sys.stderr)
        model = create_model(base["model"], pretrained=bool(base.get("pretrained", True)) and ckpt is None,
                             checkpoint=ckpt, **dict(base.get("kwargs") or {}))
    elif Path(str(teacher)).is_dir():
        model = load_student(teacher)
    else:
        if os.sep in str(teacher) or str(teacher).startswith("."):
            raise MixaError(f"teacher not found: {teacher} (not a saved mixa model directory)")
        model = create_model(str(teacher), pretrained=checkpoint is None, checkpoint=checkpoint)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def _renormalizer(student: nn.Module, teacher: nn.Module):
    """Map student-normalised images to the teacher's normalisation (identity when they agree)."""
    s, t = data_config(student), data_config(teacher)
    if tuple(s["mean"]) == tuple(t["mean"]) and tuple(s["std"]) == tuple(t["std"]):
        return None
    ms, ss, mt, st = (torch.tensor(v).view(1, -1, 1, 1) for v in (s["mean"], s["std"], t["mean"], t["std"]))
    return lambda x: (x * ss.to(x) + ms.to(x) - mt.to(x)) / st.to(x)


# ----------------------------------------------------------------------------------------------------
# one optimiser step (also what tools/bench_distill.py times)

class DistillStep:
    """Forward/backward of the student on a batch, the teacher's logits on the same batch, AdamW with
    the per-iteration schedule, clipping, accumulation, AMP and EMA."""

    def __init__(self, student: nn.Module, teacher: Optional[nn.Module], settings: Dict[str, Any],
                 device: torch.device, lr: float, total_steps: int, warmup_steps: int, ddp: bool = False):
        self.settings = settings
        self.device = device
        self.lr, self.total_steps, self.warmup_steps = lr, total_steps, warmup_steps
        self.model = unwrap(student)
        if hasattr(self.model, "set_distilled_training"):  # two-head DeiT: (cls, dist) logits in training
            self.model.set_distilled_training(True)
        self.teacher = teacher
        self.to_teacher = _renormalizer(self.model, teacher) if teacher is not None else None
        self.net = student
        if ddp:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.net = DDP(self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.dtype = autocast_dtype(settings["amp"], device)
        self.optimizer = torch.optim.AdamW(param_groups(self.model, settings["weight_decay"]), lr=lr,
                                           betas=tuple(settings["betas"]), eps=settings["eps"])
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == torch.float16 else None
        self.ema = None
        if settings["ema"]:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=settings["ema_decay"])
        self.step = 0
        self._micro = 0

    def current_lr(self) -> float:
        s = self.settings
        return lr_at(self.step, self.total_steps, self.warmup_steps, self.lr, s["min_lr"], s["warmup_lr"])

    def forward_backward(self, images: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        """One micro-batch; the optimiser steps after ``accum_steps`` of them."""
        s = self.settings
        accum = s["accum_steps"]
        last = (self._micro + 1) % accum == 0
        sync = contextlib.nullcontext() if last or not hasattr(self.net, "no_sync") else self.net.no_sync()
        teacher_logits = None
        if self.teacher is not None and s["kd"] != "none":
            with torch.no_grad(), autocast(self.device, self.dtype):
                x_t = self.to_teacher(images) if self.to_teacher is not None else images
                teacher_logits = self.teacher(x_t).float()
        with sync:
            with autocast(self.device, self.dtype):
                output = self.net(images)
            parts = distillation_loss(output, target, teacher_logits, kd=s["kd"], weight=s["kd_weight"],
                                      temperature=s["kd_temperature"],
                                      smoothing=s["smoothing"] if target.dim() == 1 else 0.0)
            loss = parts["loss"] / accum
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
            else:
                loss.backward()
        self._micro += 1
        if last:
            self._optimizer_step()
        return parts

    def _optimizer_step(self) -> None:
        lr = self.current_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.settings["clip_grad"]:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(self.settings["clip_grad"]))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.model, step=self.step)

    def state_dict(self) -> Dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "step": self.step,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "ema": self.ema.module.state_dict() if self.ema is not None else None}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema"):
            self.ema.module.load_state_dict(state["ema"])


# ----------------------------------------------------------------------------------------------------
# evaluation

@torch.no_grad()
def evaluate_loader(model: nn.Module, loader, teacher: Optional[nn.Module] = None, device=None,
                    dtype: Optional[torch.dtype] = None, dist: Optional[Dist] = None,
                    progress: bool = False, desc: str = "eval") -> Dict[str, Any]:
    """top-1/top-5/CE loss, and with a teacher the top-1 agreement and mean KL(teacher || student)."""
    from tqdm import tqdm

    device = device or torch.device("cpu")
    was_training = model.training
    model.eval()
    to_teacher = _renormalizer(unwrap(model), teacher) if teacher is not None else None
    sums = [0.0] * 7  # n, top1, top5, loss, match, kl, skipped
    for images, target, skipped in tqdm(loader, desc=desc, disable=not progress, leave=False):
        images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
        with autocast(device, dtype):
            logits = model(images).float()
        hits = topk_correct(logits, target)
        sums[0] += target.numel()
        sums[1] += hits[1].item()
        sums[2] += hits[5].item()
        sums[3] += cross_entropy(logits, target).item() * target.numel()
        sums[6] += skipped.sum().item()
        if teacher is not None:
            with autocast(device, dtype):
                t_logits = teacher(to_teacher(images) if to_teacher else images).float()
            agree = agreement(logits, t_logits)
            sums[4] += agree["match"].item()
            sums[5] += agree["kl"].item()
    model.train(was_training)
    if dist is not None:
        sums = dist.sum(sums)
    n = max(sums[0], 1.0)
    result = {"images": int(sums[0]), "top1": 100.0 * sums[1] / n, "top5": 100.0 * sums[2] / n,
              "loss": sums[3] / n, "skipped": int(sums[6])}
    if teacher is not None:
        result.update({"agreement_top1": 100.0 * sums[4] / n, "mean_kl": sums[5] / n})
    return result


def _check_classes(model: nn.Module, dataset, where: Path) -> None:
    n = getattr(unwrap(model), "num_classes", None)
    if n is not None and n != len(dataset.classes):
        raise MixaError(f"{where} has {len(dataset.classes)} class folders but the model has {n} classes")


def evaluate(model, data_dir, teacher=None, *, teacher_checkpoint: Optional[str] = None, batch_size: int = 64,
             workers: int = 4, max_batches: Optional[int] = None, amp: str = "none", device: Optional[str] = None,
             progress: bool = True) -> Dict[str, Any]:
    """Evaluate a saved mixa model (directory) or a module on ``data_dir/val`` (or a class-folder dir).

    ``teacher``: None (no agreement), "auto" (the original recorded in the model's config), a timm
    name/alias, a saved model directory or a module. Returns top1, top5 (percent), loss, images,
    skipped, and with a teacher agreement_top1 (percent) and mean_kl.
    """
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = mio.read_config(model) if not isinstance(model, nn.Module) else None
    net = load_student(model)
    loader = D.val_loader(data_dir, net, batch_size=batch_size, workers=workers, max_batches=max_batches)
    _check_classes(net, loader.dataset, D.split_dir(data_dir, "val"))
    t = build_teacher(teacher, cfg, teacher_checkpoint) if teacher is not None else None
    if t is not None:
        _check_teacher(net, t)
        t.to(dev)
    net.to(dev)
    return evaluate_loader(net, loader, t, dev, autocast_dtype(amp, dev), progress=progress)


def _check_teacher(student: nn.Module, teacher: nn.Module) -> None:
    s, t = getattr(unwrap(student), "num_classes", None), getattr(teacher, "num_classes", None)
    if s is not None and t is not None and s != t:
        raise MixaError(f"the teacher predicts {t} classes but the student {s}; pass a teacher with {s} classes")


# ----------------------------------------------------------------------------------------------------
# run directory

def _rng_state() -> Dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos),
                                                    int(has_gauss), float(gauss)),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def save_checkpoint(run: Path, name: str, model: nn.Module, state: Optional[Dict[str, Any]]) -> Path:
    """Write ``run/name`` as a complete saved-model directory (+ train state), switched in by renames."""
    final, old = run / name, run / f".{name}.old"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp.", dir=run))
    try:
        mio.save(model, tmp)
        if state is not None:
            torch.save(state, tmp / STATE_NAME)
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    return final


def recover_checkpoint(run: Path, name: str) -> Path:
    """``run/name``, restored from ``.name.old`` if a kill fell between the two renames."""
    final, old = run / name, run / f".{name}.old"
    if not final.exists() and old.exists():
        os.replace(old, final)
    for stray in run.glob(f".{name}.tmp.*"):
        shutil.rmtree(stray, ignore_errors=True)
    return final


def load_train_state(directory: Path) -> Dict[str, Any]:
    path = directory / STATE_NAME
    if not path.is_file():
        raise MixaError(f"{directory} has no {STATE_NAME}; cannot resume from it")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise MixaError(f"cannot read {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise MixaError(f"{path} is not a mixa training state (version {STATE_VERSION})")
    return state


def _write_metrics(run: Path, rows: List[Dict[str, Any]]) -> None:
    with mio.atomic_path(run / "metrics.jsonl") as tmp:
        import json

        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    keys: List[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    with mio.atomic_path(run / "metrics.csv") as tmp:
        tmp.write_text(buf.getvalue())


# ----------------------------------------------------------------------------------------------------
# the run

def distill(student_dir, data_dir, output, teacher=None, recipe=None, *, teacher_checkpoint: Optional[str] = None,
            resume: bool = False, stop_after: Optional[int] = None, device: Optional[str] = None,
            progress: bool = True, **overrides) -> Dict[str, Any]:
    """Fine-tune the saved mixa model ``student_dir`` on ``data_dir`` (train/ and val/ class folders)
    with knowledge distillation from ``teacher`` (default: the original model in the student's config).

    ``recipe`` is a name in recipes/, a YAML path or a dict; ``overrides`` are recipe settings
    (epochs, batch_size, lr, seed, workers, amp, kd, kd_weight, kd_temperature, ema, ...). ``resume``
    continues ``output`` exactly (settings from the run; overrides such as a larger ``epochs`` apply).
    ``stop_after`` ends this call after that many epochs (the schedule still plans ``epochs``).
    Launched under torchrun, trains with DistributedDataParallel; only rank 0 writes.
    Returns the last epoch's metrics plus ``best_top1``, ``epochs_done`` and ``run``.
    """
    from tqdm import tqdm

    run = Path(output)
    if run.exists() and not run.is_dir():
        raise UsageError(f"--output {run} exists and is not a directory")
    state = None
    if resume:
        if not run.is_dir():
            raise UsageError(f"nothing to resume: {run} does not exist")
        last = recover_checkpoint(run, "last") if os.access(run, os.W_OK) else run / "last"
        if not last.is_dir():
            raise UsageError(f"nothing to resume: {run} has no last/ checkpoint")
        state = load_train_state(last)
        settings = dict(state["settings"])
        settings.update({k: v for k, v in overrides.items() if v is not None})
        settings = load_recipe(settings)
    else:
        if (run / "last").exists() or (run / ".last.old").exists():
            raise UsageError(f"{run} already holds a run; pass --resume to continue it or choose another --output")
        settings = load_recipe(recipe, **overrides)

    dist = Dist(device)
    try:
        return _run(student_dir, data_dir, run, teacher, teacher_checkpoint, settings, state, stop_after,
                    dist, progress, tqdm)
    finally:
        dist.close()


def _run(student_dir, data_dir, run: Path, teacher, teacher_checkpoint, settings, state, stop_after, dist,
         progress, tqdm) -> Dict[str, Any]:
    s = settings
    world, accum = dist.world, s["accum_steps"]
    if s["batch_size"] % (world * accum):
        raise UsageError(f"batch_size {s['batch_size']} is not divisible by processes x accum_steps "
                         f"= {world} x {accum}")
    per_process = s["batch_size"] // (world * accum)
    lr = s["lr"] * (s["batch_size"] / s["lr_base_batch"] if s["lr_base_batch"] else 1.0)
    _seed_everything(int(s["seed"]) + dist.rank)

    # Everything that can fail on user input is checked before anything is written.
    student_cfg = mio.read_config(student_dir) if not isinstance(student_dir, nn.Module) else None
    student = load_student(student_dir)
    train_dl, train_set = D.train_loader(data_dir, student, s, per_process, dist.rank, world)
    val_dl = D.val_loader(data_dir, student, batch_size=s["eval_batch_size"] or per_process,
                           workers=s["workers"], rank=dist.rank, world=world)
    _check_classes(student, train_set, D.split_dir(data_dir, "train"))
    _check_classes(student, val_dl.dataset, D.split_dir(data_dir, "val"))
    if train_set.classes != val_dl.dataset.classes:
        raise MixaError(f"train/ and val/ of {data_dir} have different class folders")
    if len(train_set) // world < per_process:
        raise MixaError(f"{len(train_set)} training images are fewer than one batch of {per_process} "
                        f"per process ({world} process(es)); lower --batch-size")
    t_model = build_teacher(teacher, student_cfg, teacher_checkpoint) if s["kd"] != "none" or teacher else None
    if t_model is not None:
        _check_teacher(student, t_model)
        t_model.to(dist.device)
    if state is not None:
        from safetensors.torch import load_file

        try:
            student.load_state_dict(load_file(str(run / "last" / mio.WEIGHTS_NAME)), strict=True)
        except RuntimeError as err:
            raise MixaError(f"{run}/last does not match the student {student_dir}: "
                            f"{str(err).splitlines()[0]}") from None
    student.to(dist.device).train()
    mixup = D.mixup_fn(s, len(train_set.classes))

    steps_per_epoch = len(train_dl) // accum
    if steps_per_epoch < 1:
        raise MixaError(f"one epoch has {len(train_dl)} batches, fewer than accum_steps={accum}")
    total, warmup = s["epochs"] * steps_per_epoch, s["warmup_epochs"] * steps_per_epoch
    stepper = DistillStep(student, t_model, s, dist.device, lr, total, warmup, ddp=dist.enabled)

    history: List[Dict[str, Any]] = []
    start_epoch, best = 0, -1.0
    resume_batch, resume_sums = 0, None
    if state is not None:
        stepper.load_state_dict(state)
        start_epoch, best, history = int(state["epoch"]), float(state["best_top1"]), list(state["metrics"])
        resume_batch = int(state.get("batch", 0))  # > 0: the checkpoint was written inside an epoch
        partials = state.get("partial_sums") or []
        resume_sums = partials[dist.rank] if len(partials) == world else None
        rngs = state["rng"]
        if len(rngs) == world:
            _set_rng_state(rngs[dist.rank])
        elif dist.main:
            tqdm.write(f"mixa distill: resuming with {world} processes instead of {len(rngs)}; "
                       f"random streams restart (the run is no longer bit-exact)")
    if dist.main:
        run.mkdir(parents=True, exist_ok=True)
        mio.write_json(run / "run.json", {
            "student": str(student_dir), "data": str(data_dir), "teacher": None if teacher is None else str(teacher),
            "teacher_checkpoint": teacher_checkpoint, "settings": s, "processes": world,
            "per_process_batch": per_process, "lr_scaled": lr, "steps_per_epoch": steps_per_epoch})

    end_epoch = s["epochs"] if stop_after is None else min(s["epochs"], start_epoch + int(stop_after))
    row: Dict[str, Any] = history[-1] if history else {}
    batches_per_epoch = len(train_dl)
    every = int(s.get("save_every_steps") or 0)
    for epoch in range(start_epoch, end_epoch):
        first = resume_batch if epoch == start_epoch else 0
        D.set_train_epoch(train_dl, epoch, skip_batches=first)
        sums = list(resume_sums) if first and resume_sums else [0.0] * 5  # loss, ce, kd, batches, skipped
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
            sums = [a + b for a, b in zip(sums, (loss, parts["ce"].item(), parts["kd"].item(), 1,
                                                 skipped.sum().item()))]
            seen += images.shape[0] * world
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{stepper.current_lr():.2e}",
                            img_s=f"{seen / (time.perf_counter() - t0):.1f}", refresh=False)
            stepped = (batch + 1) % accum == 0
            if every and stepped and stepper.step % every == 0 and batch + 1 < batches_per_epoch:
                # A kill inside a long epoch loses at most `every` steps: RUN/last resumes here.
                rngs, partials = dist.gather(_rng_state()), dist.gather(sums)
                if dist.main:
                    save_checkpoint(run, "last", stepper.model, {
                        "version": STATE_VERSION, "epoch": epoch, "batch": batch + 1, "partial_sums": partials,
                        "best_top1": best, "metrics": history, "settings": s, "rng": rngs, **stepper.state_dict()})
        bar.close()
        train_time = time.perf_counter() - t0
        sums = dist.sum(sums)
        val = evaluate_loader(stepper.model, val_dl, t_model, dist.device, stepper.dtype, dist,
                              progress=progress and dist.main, desc="val")
        row = {"epoch": epoch + 1, "step": stepper.step, "train_loss": sums[0] / sums[3],
               "train_ce": sums[1] / sums[3], "train_kd": sums[2] / sums[3], "lr": stepper.current_lr(),
               "images_per_s": seen / train_time, "val_top1": val["top1"], "val_top5": val["top5"],
               "val_loss": val["loss"], "agreement_top1": val.get("agreement_top1"), "mean_kl": val.get("mean_kl"),
               "skipped_images": int(sums[4]) + val["skipped"], "epoch_time_s": train_time}
        if stepper.ema is not None:
            ema_val = evaluate_loader(stepper.ema.module, val_dl, None, dist.device, stepper.dtype, dist)
            row.update({"ema_val_top1": ema_val["top1"], "ema_val_top5": ema_val["top5"]})
        history.append(row)
        is_best = row["val_top1"] > best
        best = max(best, row["val_top1"])
        rngs = dist.gather(_rng_state())
        if dist.main:
            ckpt = {"version": STATE_VERSION, "epoch": epoch + 1, "best_top1": best, "metrics": history,
                    "settings": s, "rng": rngs, **stepper.state_dict()}
            save_checkpoint(run, "last", stepper.model, ckpt)
            if is_best:
                save_checkpoint(run, "best", stepper.model, ckpt)
            if stepper.ema is not None:
                save_checkpoint(run, "ema", stepper.ema.module, None)
            _write_metrics(run, history)
            if progress:
                tqdm.write(f"epoch {epoch + 1}/{s['epochs']}: loss {row['train_loss']:.4f}  "
                           f"val top-1 {row['val_top1']:.2f}  top-5 {row['val_top5']:.2f}"
                           + (f"  agree {row['agreement_top1']:.2f}" if row["agreement_top1"] is not None else "")
                           + f"  lr {row['lr']:.2e}  {row['images_per_s']:.1f} img/s")
            if row["skipped_images"]:
                tqdm.write(f"mixa distill: {row['skipped_images']} unreadable image(s) skipped in epoch {epoch + 1}")
        dist.barrier()
    return {**row, "best_top1": best, "epochs_done": end_epoch, "run": str(run)}
