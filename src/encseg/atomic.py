"""Atomic file writes and the JSON rules of every file a run or a study writes.

Every file a study reads is written atomically: the bytes go to a temporary file in the *same* directory,
are fsynced, the temporary file is renamed over the target with ``os.replace`` and the directory is fsynced.
A reader therefore sees either the old file or the complete new one, never a truncated file, even when the
process is killed; a failed write leaves no temporary file behind.

The temporary file is created with mode 0666 and the process umask applies, so results have the same
permissions as any other file the user creates (``tempfile.mkstemp`` would make them 0600).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import secrets
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import numpy as np

from encseg.errors import InputError, MissingFileError

__all__ = [
    "atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_save_npy",
    "atomic_save_npz", "atomic_save_fig", "read_json", "to_jsonable",
]


def _create_temp(path: Path) -> tuple[int, Path]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary file next to {path}")


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(f)`` on a temporary binary file next to ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); not possible on every OS/filesystem, hence best effort."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(obj: Any, _where: str = "$") -> Any:
    """Plain JSON values: NaN/inf -> None, numpy/torch scalars and arrays -> numbers/lists, Path -> str."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item(), _where)
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v, f"{_where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, f"{_where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, datetime):
        return obj.isoformat()
    if hasattr(obj, "tolist"):  # numpy arrays, torch tensors
        return to_jsonable(obj.tolist(), _where)
    raise TypeError(f"cannot write {type(obj).__name__} at {_where} as JSON")


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """JSON with NaN and +-inf written as ``null`` (strict JSON has no NaN), indented, keys in given order."""
    text = json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n"
    return atomic_write_text(path, text)


def atomic_save_npy(path: str | Path, array: np.ndarray) -> Path:
    arr = np.asarray(array)
    return atomic_write(path, lambda f: np.save(f, arr, allow_pickle=False))


def atomic_save_npz(path: str | Path, **arrays: np.ndarray) -> Path:
    """Several named arrays in one compressed ``.npz`` (read back with ``np.load(path, allow_pickle=False)``)."""
    arrs = {k: np.asarray(v) for k, v in arrays.items()}
    return atomic_write(path, lambda f: np.savez_compressed(f, **arrs))


def atomic_save_fig(path: str | Path, fig: Any, **savefig_kwargs: Any) -> Path:
    """Save a matplotlib figure; the format follows the file suffix (``.png``, ``.pdf``, ``.svg``)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, **savefig_kwargs)
    return atomic_write_bytes(path, buf.getvalue())


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no such file: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON: {e}") from e
