"""Saved-model directories and atomic file writes.

A saved mixa model is a directory with ``model.safetensors`` and ``config.json``. The config records
everything that rebuilds the exact module tree without network: the base timm name and kwargs, the
kind and options of every attention layer, patch/window size, selection scores, the source of the
weights and the mixa version. Plain timm models can be saved the same way (``layers`` all softmax).
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, Union

from .errors import MixaError

PathLike = Union[str, os.PathLike]
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "mixa-model/1"


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path`` (atomic on POSIX).

    A crash leaves the previous file intact and at most a stray ``.tmp`` file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_config(directory: PathLike) -> Dict[str, Any]:
    """The config of a saved model directory, with clear errors for anything else."""
    directory = Path(directory)
    cfg_path = directory / CONFIG_NAME
    if not directory.is_dir():
        raise MixaError(f"{directory} is not a directory (expected a saved mixa model)")
    if not cfg_path.is_file() or not (directory / WEIGHTS_NAME).is_file():
        raise MixaError(f"{directory} is not a mixa model directory (needs {CONFIG_NAME} and {WEIGHTS_NAME})")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as err:
        raise MixaError(f"cannot read {cfg_path}: {err}") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise MixaError(f"{cfg_path} is not a mixa model config (format {FORMAT!r} expected)")
    return cfg


def is_model_dir(path: PathLike) -> bool:
    path = Path(path)
    return (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file()


def save(model, directory: PathLike) -> Path:
    """Write ``model`` (a converted or plain timm model) to ``directory``; both files atomically.

    The weights are written first and the config last, so a directory with a config is always complete.
    """
    from safetensors.torch import save_file

    from .conversion import model_config

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = model_config(model)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT})
    write_json(directory / CONFIG_NAME, cfg)
    return directory


def load(directory: PathLike, device: str = "cpu"):
    """Rebuild a saved model exactly (architecture from config.json, weights from model.safetensors)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .conversion import build_from_config

    cfg = read_config(directory)
    model = build_from_config(cfg)
    try:
        state = load_file(str(Path(directory) / WEIGHTS_NAME), device=device)
    except (SafetensorError, OSError) as err:
        raise MixaError(f"cannot read {Path(directory) / WEIGHTS_NAME}: {err}") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise MixaError(f"{directory}: weights do not match its config "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.to(device).eval()
