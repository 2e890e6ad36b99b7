"""``env.json``: the versions, device, git commit, host and command line of every session that worked on a run."""

from __future__ import annotations

import os
import platform
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from encseg.atomic import atomic_write_json, read_json
from encseg.engine.rundir import RunDir, now_iso

__all__ = ["write_env", "finish_env", "git_commit"]

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
        "start_time": now_iso(),
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
    env["end_time"] = now_iso()
    env["duration_s"] = now - env["start_unix"] if env.get("start_unix") is not None else None
    atomic_write_json(rd.env_path, env)
    return env
