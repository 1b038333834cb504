"""Layer-wise attention transfer, teacher-forced: every replaced (linear) attention layer learns to give the
output of the softmax layer it replaced, *given the same input* -- the reference model's activation at that
layer. One forward pass of the reference serves every layer; the layers never see each other's outputs, so
they learn independently (and in parallel).

Loss: the relative squared error ||y - t||^2 / ||t||^2 of each layer's output y against the reference's t
(sums over the batch), added over layers. Why not plain MSE: attention outputs grow with depth and differ
by orders of magnitude between layers; the relative error weighs every layer alike, is comparable across
layers and models (``--select transfer`` ranks layers by it) and reads as "fraction of the output not
reproduced". Each layer's parameters receive gradients from its own term only, and AdamW's per-parameter
normalisation makes the optimisation insensitive to that per-layer scale; the normalisation is what makes
the numbers meaningful.

With the ``block`` target (mixa.transfer.settings.TARGETS) the unit that learns is the whole block holding a
replaced layer, and what it matches is the original block's residual update, output - input: the input is
common to both and would dominate a relative error of the outputs themselves.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ..distill.optim import clipped_step, create_optimizer, create_scheduler, param_groups
from ..distill.precision import autocast, autocast_dtype
from ..errors import MixaError
from .settings import train_parts

# (positional args, keyword args, output) of one reference layer for one batch
Activation = Tuple[Tuple[Any, ...], Dict[str, Any], Tensor]


def relative_error(output: Tensor, target: Tensor) -> Tensor:
    """||output - target||^2 / ||target||^2 over the whole batch, in fp32."""
    output, target = output.float(), target.float()
    return (output - target).pow(2).sum() / target.pow(2).sum().clamp_min(1e-12)


def _detached(value):
    if isinstance(value, Tensor):
        return value.detach()
    if isinstance(value, (tuple, list)):
        return type(value)(_detached(v) for v in value)
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return value


@torch.no_grad()
def capture(reference: nn.Module, paths: List[str], images: Tensor) -> Dict[str, Activation]:
    """Run ``reference`` once on ``images`` and return each layer's inputs and output at ``paths``."""
    captured: Dict[str, Activation] = {}
    handles = []
    for path in paths:
        def hook(module, args, kwargs, output, path=path):
            captured[path] = (_detached(args), _detached(kwargs), output.detach())

        handles.append(reference.get_submodule(path).register_forward_hook(hook, with_kwargs=True))
    try:
        reference(images)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def parent_path(path: str) -> str:
    """The module holding ``path`` (blocks.3.attn -> blocks.3; layers.0.blocks.1.attn -> layers.0.blocks.1)."""
    return path.rsplit(".", 1)[0] if "." in path else ""


def transfer_units(model: nn.Module, layers: Dict[str, nn.Module], target: str = "attention") -> Dict[str, nn.Module]:
    """What learns and is matched for ``target``: the replaced ``layers`` themselves, or the blocks of
    ``model`` that hold them (each once, in order)."""
    if target == "attention":
        return dict(layers)
    paths = dict.fromkeys(parent_path(path) for path in layers)
    if "" in paths:
        raise MixaError("target block needs attention layers inside blocks; this model has one at its top level")
    return {path: model.get_submodule(path) for path in paths}


def set_trainable(layers: Dict[str, nn.Module], train="all") -> None:
    """Only the named parts (mixa.transfer.settings.TRAIN_PARTS) of every layer learn; the rest is frozen.
    A part a layer does not have (rala's LePE in a relu layer) is skipped; ``all`` trains every parameter
    of the layers (q/k norms included, where a model has them)."""
    parts = train_parts(train)
    for layer in layers.values():
        layer.requires_grad_(train == "all")
        for part in parts:
            module = getattr(layer, part, None)
            if isinstance(module, nn.Module):
                module.requires_grad_(True)
    if not any(p.requires_grad for layer in layers.values() for p in layer.parameters()):
        raise MixaError(f"train={train!r} leaves no parameter to learn in these layers")


def check_reference(reference: nn.Module, paths: List[str]) -> None:
    """Every replaced layer's path must exist in the reference (the same architecture)."""
    for path in paths:
        try:
            reference.get_submodule(path)
        except AttributeError:
            raise MixaError(f"the reference model has no layer {path!r}: it is not the original of this "
                            f"student (pass the right --teacher)") from None


def unit_pair(unit: nn.Module, activation: Activation, residual: bool) -> Tuple[Tensor, Tensor]:
    """``unit``'s output on one captured (args, kwargs, target) and that target, in fp32; ``residual``: both
    as updates (minus the first input), what the block target compares."""
    args, kwargs, target = activation
    output, target = unit(*args, **kwargs).float(), target.float()
    if residual:
        output, target = output - args[0].float(), target - args[0].float()
    return output, target


def unit_error(unit: nn.Module, activation: Activation, residual: bool) -> Tensor:
    """The relative error of ``unit`` on one captured (args, kwargs, target) (``unit_pair``)."""
    return relative_error(*unit_pair(unit, activation, residual))


class LayerSet(nn.Module):
    """The units that learn: a student's replaced layers, or the blocks holding them (the same module objects:
    training them trains the student). ``forward(captured)`` returns each unit's relative error (of its
    residual update with ``residual``), in the order of ``paths``."""
    def __init__(self, layers: Dict[str, nn.Module], residual: bool = False):
        super().__init__()
        self.paths = list(layers)
        self.layers = nn.ModuleList(layers.values())
        self.residual = residual

    def forward(self, captured: Dict[str, Activation]) -> Tensor:
        return torch.stack([unit_error(layer, captured[path], self.residual)
                            for path, layer in zip(self.paths, self.layers)])


@torch.no_grad()
def capture_own(student: nn.Module, reference: nn.Module, paths: List[str], images: Tensor) -> Dict[str, Activation]:
    """Run ``student`` once on ``images``; for each layer at ``paths`` return its inputs there and, as the
    target, the reference's (softmax) layer applied to those same inputs."""
    captured = capture(student, paths, images)
    return {path: (args, kwargs, reference.get_submodule(path)(*args, **kwargs).detach())
            for path, (args, kwargs, _) in captured.items()}


class TransferStep:
    """One optimiser step of transfer: the inputs and targets of every layer, each layer on its inputs,
    AdamW with timm's per-step cosine schedule, clipping, AMP; under torchrun the layers' gradients are
    averaged by DistributedDataParallel.

    ``settings["inputs"]``: ``teacher`` -- one forward of the reference gives every layer's input and target
    (teacher-forced); ``student`` -- one forward of ``student`` (no gradient) gives every layer's own input
    as the layers before it (already being trained) make it, and the target is the reference layer on that
    input. ``settings["train"]``: which parts of each layer learn (mixa.transfer.settings.TRAIN_PARTS).
    ``settings["target"]``: ``block`` trains and matches the blocks of ``student`` that hold ``layers``
    instead (``units``: what learns, path -> module)."""
    def __init__(self, reference: nn.Module, layers: Dict[str, nn.Module], settings: Dict[str, Any],
                 device: torch.device, lr: float, total_steps: int, warmup_steps: int, ddp: bool = False,
                 to_reference: Optional[Callable[[Tensor], Tensor]] = None, student: Optional[nn.Module] = None):
        self.reference, self.settings, self.device = reference, settings, device
        self.to_reference = to_reference
        self.inputs = settings.get("inputs", "teacher")
        target = settings.get("target", "attention")
        if (self.inputs == "student" or target == "block") and student is None:
            raise ValueError("inputs='student' and target='block' need the student model")
        self.student = student
        self.units = transfer_units(student, layers, target)
        set_trainable(self.units, settings.get("train", "all"))
        self.layer_set = LayerSet(self.units, residual=target == "block")
        self.net = self.layer_set
        if ddp:

            self.net = DDP(self.layer_set, device_ids=[device.index] if device.type == "cuda" else None)
        self.dtype = autocast_dtype(settings["amp"], device)
        self.optimizer = create_optimizer(param_groups(self.layer_set, settings["weight_decay"]), lr, settings)
        self.scheduler = create_scheduler(self.optimizer, total_steps, warmup_steps, settings)
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == torch.float16 else None
        self.step = 0

    def targets(self, images: Tensor) -> Dict[str, Activation]:
        with autocast(self.device, self.dtype):
            if self.inputs == "student":
                mode = self.student.training
                self.student.eval()
                try:
                    return capture_own(self.student, self.reference, self.layer_set.paths, images)
                finally:
                    self.student.train(mode)
            x = self.to_reference(images) if self.to_reference is not None else images
            return capture(self.reference, self.layer_set.paths, x)

    def forward_backward(self, images: Tensor) -> Tensor:
        """One batch, one optimiser step; returns each layer's relative error (detached)."""
        captured = self.targets(images)
        self.layer_set.train()
        with autocast(self.device, self.dtype):
            errors = self.net(captured)
        loss = errors.sum()
        self.scheduler.step_update(self.step)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        clipped_step(self.optimizer, self.layer_set.parameters(), self.settings["clip_grad"], self.scaler)
        self.step += 1
        return errors.detach()

    def current_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> Dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "step": self.step,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


@torch.no_grad()
def layer_errors(reference: nn.Module, layers: Dict[str, nn.Module], batches,
                 to_reference: Optional[Callable[[Tensor], Tensor]] = None, device=None,
                 dtype: Optional[torch.dtype] = None, dist=None, residual: bool = False) -> Dict[str, float]:
    """Each layer's relative error over all ``batches`` (tensors or (images, ...) tuples): the sums of
    squared errors and of squared targets over every image (and every process, with ``dist``), then
    their ratio. ``residual``: of each unit's update, output - input (the block target)."""
    device = device or torch.device("cpu")
    paths = list(layers)
    err = torch.zeros(len(paths), dtype=torch.float64)
    ref = torch.zeros(len(paths), dtype=torch.float64)
    modes = {path: layer.training for path, layer in layers.items()}
    for layer in layers.values():
        layer.eval()
    try:
        for batch in batches:
            if batch is None:
                continue
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            images = images.to(device)
            with autocast(device, dtype):
                captured = capture(reference, paths, to_reference(images) if to_reference else images)
                for i, path in enumerate(paths):
                    out, target = unit_pair(layers[path], captured[path], residual)
                    err[i] += (out - target).pow(2).sum().item()
                    ref[i] += target.pow(2).sum().item()
    finally:
        for path, layer in layers.items():
            layer.train(modes[path])
    sums = err.tolist() + ref.tolist()
    if dist is not None:
        sums = dist.sum(sums)
    return {path: sums[i] / max(sums[len(paths) + i], 1e-12) for i, path in enumerate(paths)}
