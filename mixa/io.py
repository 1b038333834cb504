"""Atomic file writes: a killed run never leaves a half-written file where a complete one is expected.

Every file mixa writes goes through ``atomic_path`` (a temporary file beside the target, renamed over it on
success). Temporary files are created private (0600) by ``tempfile``; the finished file gets the
permissions a plain ``open(path, "w")`` would have given it (0666 minus the umask), and a temporary
directory made with ``make_temp_dir`` gets 0777 minus the umask once it is renamed into place.
The saved-model format lives in ``mixa.saved``.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Union

from .errors import MixaError

PathLike = Union[str, os.PathLike]


# errors that say the place cannot take a write, whatever is written
_WRITE_ERRNOS = {errno.EROFS, errno.ENOSPC, errno.EDQUOT}


def os_error_message(err: OSError, path: Union[PathLike, None] = None) -> str:
    """One line for an OSError on ``path`` (default: the error's own file name), as the user reads it:
    ``cannot write out/run: read-only file system``."""
    path = path if path is not None else err.filename
    why = _why(err)
    if path is None:
        return why
    if err.errno in _WRITE_ERRNOS:
        return f"cannot write {path}: {why}"
    return f"{path}: {why}"


def _why(err: OSError) -> str:
    why = err.strerror or type(err).__name__
    return why[:1].lower() + why[1:]


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


def normal_permissions(path: PathLike) -> None:
    """The mode ``open()`` / ``mkdir()`` would have given ``path`` under the current umask."""
    mode = 0o777 if Path(path).is_dir() else 0o666
    os.chmod(path, mode & ~_umask())


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path`` (atomic on POSIX).

    A crash leaves the previous file intact and at most a stray ``.tmp`` file. A target that exists but is
    not a regular file (``/dev/null``, ``/dev/stdout``, a FIFO) is written in place: renaming over it
    would replace the device.
    """
    path = Path(path)
    if path.exists() and not path.is_file() and not path.is_dir():
        yield path
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:  # name the file the user asked for, not our temporary one
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise MixaError(f"cannot write {path}: {blocker} is not a directory") from None
        raise MixaError(f"cannot write {path}: {_why(err)}") from None
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        normal_permissions(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def make_temp_dir(parent: PathLike, prefix: str) -> Path:
    """A temporary directory inside ``parent`` with normal permissions (to be renamed into place)."""
    try:
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    except OSError as err:  # name the directory the user gave, not the temporary one
        raise MixaError(f"cannot write {parent}: {_why(err)}") from None
    normal_permissions(path)
    return path


def write_text(path: PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_figure(fig, path: PathLike, dpi: int = 120) -> None:
    """A matplotlib figure written atomically, in the format its suffix names (.png when it has none)."""
    suffix = os.path.splitext(str(path))[1].lstrip(".") or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=suffix, dpi=dpi)
