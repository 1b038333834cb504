"""One optimiser step of distillation (also what benchmarks/bench_distill.py times)."""
from __future__ import annotations

import contextlib
from typing import Any, Dict, List, Optional

import torch
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ..models.attention_layers import attention_layers
from .losses import distillation_loss
from .optim import clipped_step, create_optimizer, create_scheduler, param_groups
from .precision import autocast, autocast_dtype
from .teacher import renormalizer, unwrap


class BlockStates:
    """The output of every block that holds an attention layer (the attention layer's parent), recorded
    by forward hooks while ``recording`` is on (not during validation), in forward order."""
    def __init__(self, model: nn.Module):
        paths = [path.rsplit(".", 1)[0] for path, _ in attention_layers(model) if "." in path]
        self.states: List[torch.Tensor] = []
        self.recording = False
        for path in paths:
            model.get_submodule(path).register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        if self.recording:
            self.states.append(output[0] if isinstance(output, (tuple, list)) else output)

    @contextlib.contextmanager
    def record(self):
        self.states, self.recording = [], True
        try:
            yield self.states
        finally:
            self.recording = False


class DistillStep:
    """Forward/backward of the student on a batch, the teacher's logits on the same batch, AdamW with
    the per-iteration schedule, clipping, accumulation, AMP and EMA."""
    def __init__(self, student: nn.Module, teacher: Optional[nn.Module], settings: Dict[str, Any],
                 device: torch.device, lr: float, total_steps: int, warmup_steps: int, ddp: bool = False):
        self.settings = settings
        self.device = device
        self.model = unwrap(student)
        if hasattr(self.model, "set_distilled_training"):  # two-head DeiT: (cls, dist) logits in training
            self.model.set_distilled_training(True)
        self.teacher = teacher
        self.to_teacher = renormalizer(self.model, teacher) if teacher is not None else None
        self.net = student
        if ddp:

            self.net = DDP(self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.dtype = autocast_dtype(settings["amp"], device)
        self.optimizer = create_optimizer(param_groups(self.model, settings["weight_decay"]), lr, settings)
        self.scheduler = create_scheduler(self.optimizer, total_steps, warmup_steps, settings)
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == torch.float16 else None
        self.ema = None
        if settings["ema"]:

            self.ema = ModelEmaV3(self.model, decay=settings["ema_decay"])
        self.step = 0
        self._micro = 0
        self.hidden = None  # (student, teacher) block recorders when hidden states are matched
        if settings.get("hidden_weight") and teacher is not None and settings["kd"] != "none":
            self.hidden = (BlockStates(self.model), BlockStates(teacher))

    def current_lr(self) -> float:
        """The learning rate of the latest optimiser step (the warm-up start before the first)."""
        return self.optimizer.param_groups[0]["lr"]

    def forward_backward(self, images: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        """One micro-batch; the optimiser steps after ``accum_steps`` of them."""
        s = self.settings
        accum = s["accum_steps"]
        last = (self._micro + 1) % accum == 0
        sync = contextlib.nullcontext() if last or not hasattr(self.net, "no_sync") else self.net.no_sync()
        teacher_logits, hidden = None, None
        record_s, record_t = ((h.record() for h in self.hidden) if self.hidden is not None
                              else (contextlib.nullcontext([]), contextlib.nullcontext([])))
        if self.teacher is not None and s["kd"] != "none":
            with torch.no_grad(), autocast(self.device, self.dtype), record_t as t_states:
                x_t = self.to_teacher(images) if self.to_teacher is not None else images
                teacher_logits = self.teacher(x_t).float()
        with sync:
            with autocast(self.device, self.dtype), record_s as s_states:
                output = self.net(images)
            if self.hidden is not None:
                hidden = (s_states, t_states)
            parts = distillation_loss(output, target, teacher_logits, kd=s["kd"], weight=s["kd_weight"],
                                      temperature=s["kd_temperature"],
                                      smoothing=s["smoothing"] if target.dim() == 1 else 0.0,
                                      hidden=hidden, hidden_weight=s.get("hidden_weight", 0.0))
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
        self.scheduler.step_update(self.step)
        clipped_step(self.optimizer, self.model.parameters(), self.settings["clip_grad"], self.scaler)
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
