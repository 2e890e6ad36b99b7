"""Run directories: layout, run ids, config identity, DONE/FAILED markers.

File writes go through ``encseg.atomic`` (complete file or old file, never a truncated one); the environment
record (``env.json``) is ``engine.runenv``.

Layout (see docs/architecture.md): ``config.yaml``, ``env.json``, ``subset.txt``, ``history.csv``,
``checkpoints/{last,best}.ckpt``, ``model.safetensors`` + ``model.json``, ``eval/<dataset>.json``,
``eval/<dataset>_confusion.npy``, ``plots/``, ``summary.json``, and ``DONE`` (written last) or ``FAILED``.
"""

from __future__ import annotations

import contextlib
import os
import re
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from encseg.atomic import atomic_write_text
from encseg.config import ConfigError, RunConfig
from encseg.config_io import dump_config, load_run_config
from encseg.engine.schedule import world_size
from encseg.errors import InputError, MissingFileError

__all__ = ["RunDir", "run_id", "fraction_tag", "resolve_runs_root", "config_diff", "result_diff", "now_iso"]

# Settings that change how a run is executed or logged, not what it computes: a run directory whose stored
# config differs from a new one only here holds the same run, finished or not (a resume, a study's reuse).
# ``eval.val_loss`` adds the dev loss to history.csv from a forked RNG: the training is the same with or without it.
OPERATIONAL_KEYS = ("logging", "data.num_workers", "data.check", "train.log_every", "train.checkpoint_every",
                    "train.compile", "eval.val_loss")
# How one global batch is split over processes and accumulated micro-batches: operational while the global batch
# stays the same (the train sampler then gives each optimiser step the same images); ``train`` also requires the
# same step schedule.
BATCH_SPLIT_KEYS = ("train.devices", "train.num_nodes", "data.batch_size", "train.accumulate")

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


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


def global_batch(cfg: RunConfig) -> int:
    """Images per optimiser step over all processes."""
    return world_size(cfg.train) * cfg.data.batch_size * cfg.train.accumulate


def result_diff(old: RunConfig, new: RunConfig) -> list[str]:
    """The keys of ``config_diff`` that change what a run computes: all but ``OPERATIONAL_KEYS``, and but
    ``BATCH_SPLIT_KEYS`` when the global batch is unchanged."""
    diffs = [k for k in config_diff(old, new) if not any(k == o or k.startswith(o + ".") for o in
                                                           OPERATIONAL_KEYS)]
    if global_batch(old) == global_batch(new):
        diffs = [k for k in diffs if k not in BATCH_SPLIT_KEYS]
    return diffs


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
    eval_dir = property(lambda self: self.path / "eval")
    plots_dir = property(lambda self: self.path / "plots")
    summary_path = property(lambda self: self.path / "summary.json")
    done_path = property(lambda self: self.path / "DONE")
    failed_path = property(lambda self: self.path / "FAILED")

    def eval_json(self, dataset_name: str) -> Path:
        return self.eval_dir / f"{_checked_dataset_name(dataset_name)}.json"

    def confusion_npy(self, dataset_name: str) -> Path:
        return self.eval_dir / f"{_checked_dataset_name(dataset_name)}_confusion.npy"

    def image_areas_npz(self, dataset_name: str) -> Path:
        return self.eval_dir / f"{_checked_dataset_name(dataset_name)}_areas.npz"

    # markers
    def is_done(self) -> bool:
        return self.done_path.is_file()

    def mark_done(self) -> None:
        """Call after every other file is written: DONE is the study's signal that the run is complete."""
        self.clear_failed()
        atomic_write_text(self.done_path, f"{now_iso()}\n")

    def mark_failed(self, exc: BaseException) -> None:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        atomic_write_text(self.failed_path, f"{now_iso()}\n{type(exc).__name__}: {exc}\n\n{tb}")

    def failure_line(self) -> str:
        """The error line of the ``FAILED`` marker: the first line after its timestamp (``Type: message``); the
        last line of a bare traceback (it names the exception there)."""
        if not self.failed_path.is_file():
            return "no FAILED record"
        lines = [ln.strip() for ln in self.failed_path.read_text(errors="replace").splitlines() if ln.strip()]
        if lines and _is_timestamp(lines[0]):
            lines = lines[1:]
        if not lines:
            return "(FAILED marker without a message)"
        if lines[0].startswith("Traceback (most recent call last)"):
            return lines[-1]
        return lines[0]

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
            raise MissingFileError(f"run directory {self.path} has no config.yaml")
        return load_run_config(self.config_path, stored=True)


def _checked_dataset_name(name: str) -> str:
    if not name or _SAFE.search(name) or name in (".", ".."):
        raise InputError(f"dataset/file name {name!r} may only use the characters [A-Za-z0-9_.-]")
    return name


def _is_timestamp(line: str) -> bool:
    try:
        datetime.fromisoformat(line)
    except ValueError:
        return False
    return True


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")
