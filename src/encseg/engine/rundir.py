"""Run directories: layout, run ids, atomic file writes, environment record, DONE/FAILED markers.

Every file a study reads is written atomically: the bytes go to a temporary file in the *same* directory,
are fsynced, and the temporary file is renamed over the target with ``os.replace``. A reader therefore sees
either the old file or the complete new one, never a truncated file, even when the process is killed.

Layout (see docs/architecture.md): ``config.yaml``, ``env.json``, ``subset.txt``, ``history.csv``,
``checkpoints/{last,best}.ckpt``, ``model.safetensors`` + ``model.json``, ``eval/<dataset>.json``,
``eval/<dataset>_confusion.npy``, ``plots/``, ``summary.json``, and ``DONE`` (written last) or ``FAILED``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import platform
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import numpy as np

from encseg.config import ConfigError, RunConfig, dump_config, load_run_config

__all__ = [
    "RunDir", "run_id", "atomic_write_text", "atomic_write_bytes", "atomic_write_json", "atomic_save_npy",
    "atomic_save_fig", "read_json", "to_jsonable", "write_env", "finish_env", "git_commit",
]

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")
# read once: mkstemp creates files 0600, which would hide results from the rest of a shared group
_UMASK = os.umask(0)
os.umask(_UMASK)


# ------------------------------------------------------------------------------------------ atomic
def _atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
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
    return _atomic_write(path, lambda f: f.write(data))


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
    return _atomic_write(path, lambda f: np.save(f, arr, allow_pickle=False))


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
        raise FileNotFoundError(f"no such file: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from e


# ------------------------------------------------------------------------------------------ run id
def _safe(part: str) -> str:
    return _SAFE.sub("-", part).strip("-") or "x"


def fraction_tag(fraction: float) -> str:
    """``1.0 -> f100``, ``0.1 -> f010``, ``0.005 -> f000.5``, ``0.125 -> f012.5``: percent, 3 integer digits."""
    pct = round(fraction * 100.0, 4)
    whole = int(pct)
    decimals = f"{pct - whole:.4f}"[2:].rstrip("0")
    return f"f{whole:03d}" + (f".{decimals}" if decimals else "")


def run_id(cfg: RunConfig) -> str:
    """The run directory name: ``cfg.name`` if set, else derived from what distinguishes runs in a study.

    ``<dataset>__<encoder>__<regime>[__<head>]__f<percent>[__ss<subset_seed>]__s<seed>``, e.g.
    ``synth_a__pretrained_b__finetune__f010__s0``. The encoder part is the study label ``tags.encoder`` when
    present, else the encoder name; the regime is ``frozen``, ``finetune`` or ``last<N>``; the head appears only
    when it is not Mask2Former. Characters outside ``[A-Za-z0-9_.-]`` become ``-``.
    """
    if cfg.name is not None:
        if _SAFE.search(cfg.name) or cfg.name in (".", ".."):
            raise ConfigError(f"name {cfg.name!r}: a run name may only use the characters [A-Za-z0-9_.-]")
        return cfg.name
    parts = [
        cfg.data.dataset.display_name,
        cfg.tags.get("encoder") or cfg.model.encoder.name,
        cfg.model.regime.label,
    ]
    if cfg.model.head.type != "mask2former":
        parts.append(cfg.model.head.type)
    parts.append(fraction_tag(cfg.data.fraction))
    if cfg.data.subset_seed != 0:
        parts.append(f"ss{cfg.data.subset_seed}")
    parts.append(f"s{cfg.seed}")
    return "__".join(_safe(p) for p in parts)


def resolve_runs_root(cfg: RunConfig, runs_root: str | Path) -> RunConfig:
    """Substitute ``{runs_root}`` in dataset roots (the smoke/demo configs keep their data under it)."""
    data = cfg.model_dump(mode="json")
    for ds in [data["data"]["dataset"], *data["eval"]["datasets"]]:
        ds["root"] = str(ds["root"]).replace("{runs_root}", str(runs_root))
    return RunConfig.model_validate(data)


def config_diff(old: RunConfig, new: RunConfig) -> list[str]:
    """Dotted keys whose values differ between two configs, sorted."""
    return sorted(_diff(old.model_dump(mode="json"), new.model_dump(mode="json")))


def _diff(a: Any, b: Any, prefix: str = ""):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in set(a) | set(b):
            yield from _diff(a.get(k), b.get(k), f"{prefix}{k}.")
    elif a != b:
        yield prefix.rstrip(".")


# ------------------------------------------------------------------------------------------ RunDir
class RunDir:
    """Paths and markers of one run directory. Nothing is created until something is written."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def for_config(cls, runs_root: str | Path, cfg: RunConfig) -> RunDir:
        return cls(Path(runs_root) / run_id(cfg))

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __truediv__(self, other: str) -> Path:
        return self.path / other

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    # files and folders
    config_path = property(lambda self: self.path / "config.yaml")
    env_path = property(lambda self: self.path / "env.json")
    subset_path = property(lambda self: self.path / "subset.txt")
    history_path = property(lambda self: self.path / "history.csv")
    checkpoints = property(lambda self: self.path / "checkpoints")
    last_ckpt = property(lambda self: self.path / "checkpoints" / "last.ckpt")
    best_ckpt = property(lambda self: self.path / "checkpoints" / "best.ckpt")
    model_dir = property(lambda self: self.path)  # model.safetensors + model.json live in the run dir itself
    eval_dir = property(lambda self: self.path / "eval")
    plots_dir = property(lambda self: self.path / "plots")
    summary_path = property(lambda self: self.path / "summary.json")
    done_path = property(lambda self: self.path / "DONE")
    failed_path = property(lambda self: self.path / "FAILED")

    def eval_json(self, dataset_name: str) -> Path:
        return self.eval_dir / f"{_checked_dataset_name(dataset_name)}.json"

    def confusion_npy(self, dataset_name: str) -> Path:
        return self.eval_dir / f"{_checked_dataset_name(dataset_name)}_confusion.npy"

    def plot_path(self, stem: str) -> Path:
        return self.plots_dir / f"{_checked_dataset_name(stem)}.png"

    # markers
    def is_done(self) -> bool:
        return self.done_path.is_file()

    def mark_done(self) -> None:
        """Call after every other file is written: DONE is the study's signal that the run is complete."""
        self.clear_failed()
        atomic_write_text(self.done_path, f"{_now_iso()}\n")

    def mark_failed(self, exc: BaseException) -> None:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        atomic_write_text(self.failed_path, f"{_now_iso()}\n{type(exc).__name__}: {exc}\n\n{tb}")

    def clear_failed(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.failed_path.unlink()

    def state(self) -> str:
        """``done`` (DONE exists), ``failed`` (FAILED exists), ``partial`` (anything else there), ``new``."""
        if self.done_path.is_file():
            return "done"
        if self.failed_path.is_file():
            return "failed"
        if self.path.is_dir() and any(self.path.iterdir()):
            return "partial"
        return "new"

    # config
    def write_config(self, cfg: RunConfig) -> Path:
        return atomic_write_text(self.config_path, dump_config(cfg))

    def read_config(self) -> RunConfig:
        if not self.config_path.is_file():
            raise FileNotFoundError(f"run directory {self.path} has no config.yaml")
        return load_run_config(self.config_path)


def _checked_dataset_name(name: str) -> str:
    if not name or _SAFE.search(name) or name in (".", ".."):
        raise ValueError(f"dataset/file name {name!r} may only use the characters [A-Za-z0-9_.-]")
    return name


def _now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------- environment
_PACKAGES = ("torch", "torchvision", "timm", "transformers", "lightning", "torchmetrics", "numpy", "encseg")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def git_commit(path: str | Path | None = None) -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the git checkout that holds the encseg sources, or None.

    None when the package is not inside a git work tree that tracks it (e.g. installed from a wheel into a
    venv that itself sits in some other repository), when git is missing, or on any git error.
    """
    pkg = Path(path) if path is not None else Path(__file__).resolve().parents[1]
    try:
        def git(*args: str) -> str:
            # --no-optional-locks: `status` must not refresh the index, which could collide with a concurrent
            # commit in the same checkout
            return subprocess.run(["git", "--no-optional-locks", "-C", str(pkg), *args], capture_output=True,
                                  text=True, timeout=10, check=True).stdout.strip()

        git("ls-files", "--error-unmatch", "__init__.py")
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "."))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def _cuda_info() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {"available": False, "version": None, "gpu_count": 0, "gpu_names": []}
    available = torch.cuda.is_available()
    count = torch.cuda.device_count() if available else 0
    return {
        "available": available,
        "torch_build": torch.__version__,  # e.g. 2.14.1+cu130: which CUDA the wheel was built for
        "version": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if available else None,
        "gpu_count": count,
        "gpu_names": [torch.cuda.get_device_name(i) for i in range(count)],
    }


def write_env(rundir: RunDir | str | Path, argv: Sequence[str], extra: dict[str, Any] | None = None) -> dict:
    """Write ``env.json``: versions, device, git commit, host, command line and start time of this session.

    When the run directory already has an ``env.json`` (a resumed run), the earlier sessions are kept under
    ``previous_sessions`` so the record shows every process that worked on the run.
    """
    rd = rundir if isinstance(rundir, RunDir) else RunDir(rundir)
    previous: list[dict] = []
    if rd.env_path.is_file():
        try:
            old = read_json(rd.env_path)
            previous = list(old.pop("previous_sessions", [])) + [old]
        except ValueError:
            previous = []  # a damaged record must not stop a resumed run
    cuda = _cuda_info()
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "versions": {name: _version(name) for name in _PACKAGES},
        "cuda": cuda,
        "gpu_name": cuda["gpu_names"][0] if cuda["gpu_names"] else None,
        "gpu_count": cuda["gpu_count"],
        "git": git_commit(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "cwd": os.getcwd(),
        "argv": list(argv),
        "command": shlex.join(list(argv)),
        "start_time": _now_iso(),
        "start_unix": time.time(),
        "end_time": None,
        "duration_s": None,
    }
    git = env["git"]
    env["git_commit"] = git["commit"] if git else None
    if extra:
        env.update(extra)
    if previous:
        env["previous_sessions"] = previous
    atomic_write_json(rd.env_path, env)
    return env


def finish_env(rundir: RunDir | str | Path) -> dict:
    """Add the end time and the duration of the current session to ``env.json``."""
    rd = rundir if isinstance(rundir, RunDir) else RunDir(rundir)
    env = read_json(rd.env_path)
    now = time.time()
    env["end_time"] = _now_iso()
    env["duration_s"] = now - env["start_unix"] if env.get("start_unix") is not None else None
    atomic_write_json(rd.env_path, env)
    return env
