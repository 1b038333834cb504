"""Building the base timm models: short aliases, pretrained weights, local checkpoints, offline errors."""
from __future__ import annotations

import contextlib
import importlib
import os
import socket
from pathlib import Path
from typing import Any, Dict, Optional
from urllib.parse import urlparse

import timm
import torch
from huggingface_hub import constants as hub_constants
from safetensors.torch import load_file

from ..errors import MixaError, UsageError

ALIASES = {
    "deit_t": "deit_tiny_patch16_224",
    "deit_s": "deit_small_patch16_224",
    "deit_b": "deit_base_patch16_224",
    "swin_t": "swin_tiny_patch4_window7_224",
    "swin_s": "swin_small_patch4_window7_224",
    "swin_b": "swin_base_patch4_window7_224",
}


def resolve_name(name: str) -> str:
    """Alias -> timm name; a clear error for names timm does not know."""
    full = ALIASES.get(name, name)
    if not timm.is_model(full):
        hint = ", ".join(ALIASES)
        raise UsageError(f"unknown model {name!r} (aliases: {hint}; or any timm DeiT/ViT/Swin name)")
    return full


def load_state_dict_file(path: os.PathLike | str) -> Dict[str, Any]:
    """Read a local checkpoint without unpickling code: .safetensors, or .pth/.pth.tar/.bin with
    ``torch.load(weights_only=True)``. Unwraps the usual ``{"model": ...}`` / ``{"state_dict": ...}``
    wrappers and DDP's ``module.`` prefix."""
    path = Path(path)
    if not path.is_file():
        raise MixaError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # never fall back to full unpickling, whatever torch suggests
        raise MixaError(f"cannot read checkpoint {path}: {_why_unreadable(err)}") from None
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MixaError(f"{path} does not hold a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _why_unreadable(err: Exception) -> str:
    text = str(err)
    if "Weights only load failed" in text or "weights_only" in text:
        return ("it holds pickled Python objects besides tensors, and mixa never unpickles code from a file; "
                "re-save it as .safetensors (or a state dict of tensors) where you trust its source")
    return (text.splitlines() or [type(err).__name__])[0][:200] or "truncated or corrupt file"


def _filter_for(model) -> Optional[Any]:
    """timm's own checkpoint adapter for the model's family (resizes pos-embeds, rel-pos tables, ...)."""
    module = importlib.import_module(type(model).__module__)
    return getattr(module, "checkpoint_filter_fn", None)


def load_checkpoint_into(model, path: os.PathLike | str) -> None:
    """Load a timm-compatible checkpoint into ``model`` strictly, adapting with timm's filter.

    A classifier head of another size is dropped (the head stays freshly initialised) when the model
    was built with a different ``num_classes``.
    """
    state = load_state_dict_file(path)
    adapt = _filter_for(model)
    if adapt is not None:
        try:
            state = adapt(state, model)
        except Exception as err:
            raise MixaError(f"checkpoint {path} does not fit {type(model).__name__}: {err}") from None
    own = model.state_dict()
    for key in [k for k in state if k in own and state[k].shape != own[k].shape]:
        if key.startswith(("head.", "head_dist.", "fc.", "classifier.")):
            del state[key]
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(("head.", "head_dist.", "fc.", "classifier."))]
    if missing or unexpected:
        raise MixaError(f"checkpoint {path} does not match {type(model).__name__}: "
                        f"{len(missing)} missing keys (e.g. {missing[:2]}), "
                        f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})")


def _hub_reachable(timeout: float = 3.0) -> bool:
    host = urlparse(hub_constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _local_cache_only_when_offline():
    """Without a route to the hub, ask huggingface_hub for its local cache only: a cached download still
    loads, and a missing one fails at once instead of after a minute of retries."""
    previous = hub_constants.HF_HUB_OFFLINE
    if not previous and not _hub_reachable():
        hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = previous


def create_model(name: str, *, pretrained: bool = True, checkpoint: Optional[str] = None,
                 num_classes: Optional[int] = None, **kwargs):
    """A timm model by name or alias, with weights from ``checkpoint``, the hub, or random init.

    Offline, a hub download ends in a MixaError that says what to do instead.
    """
    full = resolve_name(name)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    try:
        model = timm.create_model(full, pretrained=False, **kwargs)
    except (TypeError, ValueError, AssertionError) as err:
        raise UsageError(f"cannot build {full} with {kwargs}: {err}") from None
    if checkpoint is not None:
        load_checkpoint_into(model, checkpoint)
    elif pretrained:
        try:
            with _local_cache_only_when_offline():
                pretrained_model = timm.create_model(full, pretrained=True, **kwargs)
        except Exception as err:
            reason = (str(err).split(". ")[0] or type(err).__name__)[:120]
            raise MixaError(f"could not get pretrained weights for {full} ({reason}); offline? "
                            f"pass --checkpoint PATH (a local .pth/.safetensors) or --no-pretrained") from None
        model = pretrained_model
    # timm leaves pretrained_cfg at the default resolution when img_size is overridden; the data pipeline
    # (resolve_data_config) must follow the model's real input size.
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img_size is not None:
        model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, *tuple(img_size))}
    # Where the weights came from: mixa.save records it as the original of a conversion (the teacher).
    model.mixa_source = {"checkpoint": str(Path(checkpoint).resolve()) if checkpoint is not None else None,
                         "pretrained": bool(pretrained and checkpoint is None)}
    return model.eval()

