"""Run directories of a study -> pandas tables (one reader per file of the run-directory contract).

A study directory holds ``runs/<run_id>/`` folders in the format of docs/architecture.md ("Run directory").
A run is a *result* only when its ``DONE`` marker exists; ``FAILED`` runs are listed with the first line of
their error, and anything else (running, killed, never started) is listed as incomplete.

Strictness: the files a result is made of (``config.yaml``, ``summary.json``, ``eval/<dataset>.json``) must be
present and well formed in a DONE run, otherwise ``StudyDataError`` names the file. Auxiliary files
(``history.csv``, confusion matrices, per-image scores) may be missing: their tables simply lack those rows,
and a warning is logged. Metric values are copied as the engine wrote them (fractions in [0, 1]).

Identity columns come from the run's ``config.yaml``: ``encoder`` is the study label ``tags["encoder"]``
(falling back to the encoder name), ``train_dataset`` the dataset's display name, ``regime`` the regime label with its depth (``last2``; ``RegimeConfig.label``).
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from encseg.atomic import read_json
from encseg.config import RunConfig
from encseg.engine.rundir import RunDir
from encseg.engine.schedule import world_size
from encseg.errors import EncsegError, MissingFileError

log = logging.getLogger(__name__)

RUNS_DIR = "runs"

IDENTITY_COLUMNS = ["run_id", "encoder", "encoder_name", "regime", "train_dataset", "fraction", "seed",
                    "subset_seed", "head"]
METRIC_COLUMNS = ["miou", "macc", "aacc", "fwiou"]
# summary.json fields copied into every result row (NaN where the engine wrote null or left the key out)
SUMMARY_FIELDS = ["epochs_to_converge", "steps_to_converge", "time_to_converge_s", "train_time_s", "steps",
                  "infer_ms_per_image", "infer_p90_ms", "images_per_s", "peak_mem_mb", "params_total",
                  "params_trainable", "params_encoder", "params_neck", "params_head", "gflops"]
# where and in which precision the latency was measured (engine/finalize.py); a summary written before the
# precision was recorded measured in fp32 (the engine then timed outside the training's autocast)
LATENCY_FIELDS = ["latency_device", "latency_precision"]
# convergence record of a run (docs/architecture.md "summary.json"); see ``convergence()``
CONVERGENCE_FIELDS = ["converged", "converged_iter", "iters_trained", "epochs_trained", "train_wall_s",
                      "budget", "max_iters", "criterion"]
RESULT_COLUMNS = [*IDENTITY_COLUMNS, "eval_dataset", "cross", *METRIC_COLUMNS, *SUMMARY_FIELDS, *LATENCY_FIELDS,
                  *CONVERGENCE_FIELDS, "eval_split", "eval_num_images", "eval_num_classes", "weights"]
FAILURE_COLUMNS = ["run_id", "encoder", "regime", "train_dataset", "fraction", "seed", "error"]
INCOMPLETE_COLUMNS = ["run_id", "encoder", "regime", "train_dataset", "fraction", "seed", "state", "reason"]


class StudyDataError(EncsegError, ValueError):
    """A DONE run whose contract files are missing or malformed; the message names the file and key."""


# ------------------------------------------------------------------------------------------- runs
def run_dirs(study_dir: str | Path) -> list[RunDir]:
    """Every run folder under ``<study_dir>/runs/`` (hidden folders skipped), sorted by run id."""
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        raise MissingFileError(f"study directory not found: {study_dir}")
    runs = study_dir / RUNS_DIR
    if not runs.is_dir():
        raise MissingFileError(f"study directory {study_dir} has no {RUNS_DIR}/ folder (has the study run?)")
    return [RunDir(p) for p in sorted(runs.iterdir()) if p.is_dir() and not p.name.startswith((".", "_"))]


def finished_runs(study_dir: str | Path) -> list[RunDir]:
    return [rd for rd in run_dirs(study_dir) if rd.is_done()]


def eval_files(rd: RunDir) -> list[Path]:
    """``eval/<dataset>.json`` files of a run, sorted by dataset name."""
    if not rd.eval_dir.is_dir():
        return []
    return sorted(p for p in rd.eval_dir.glob("*.json") if not p.name.startswith("."))


def _read(path: Path) -> Any:
    try:
        return read_json(path)
    except FileNotFoundError as e:
        raise StudyDataError(f"{path}: missing from a run marked DONE") from e


def _num(value: Any) -> float:
    """A JSON number as float; null/missing -> NaN."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"not a number: {value!r}")
    return float(value)


def identity(cfg: RunConfig, run_id: str) -> dict[str, Any]:
    """The columns that say which cell of the study a run is."""
    return {
        "run_id": run_id,
        "encoder": cfg.tags.get("encoder") or cfg.model.encoder.name,
        "encoder_name": cfg.model.encoder.name,
        "regime": cfg.model.regime.label,
        "train_dataset": cfg.data.dataset.display_name,
        "fraction": float(cfg.data.fraction),
        "seed": int(cfg.seed),
        "subset_seed": int(cfg.data.subset_seed),
        "head": cfg.model.head.type,
    }


def _loose_identity(rd: RunDir) -> tuple[dict[str, Any], str | None]:
    """Identity of a failed/incomplete run as far as its config allows; the reason when it does not."""
    try:
        ident = identity(rd.read_config(), rd.name)
    except (ValueError, FileNotFoundError) as e:  # a run that failed on its config still belongs in the list
        return {"run_id": rd.name}, str(e).splitlines()[0]
    return ident, None


# ---------------------------------------------------------------------------------------- results
def _metric(metrics: dict, key: str, path: Path) -> float:
    if key not in metrics:
        raise StudyDataError(f"{path}: metrics has no {key!r} (keys: {', '.join(sorted(metrics))})")
    try:
        return _num(metrics[key])
    except TypeError as e:
        raise StudyDataError(f"{path}: metrics.{key} {e}") from None


def _eval_record(path: Path) -> dict:
    ev = _read(path)
    if not isinstance(ev, dict) or not isinstance(ev.get("metrics"), dict):
        raise StudyDataError(f"{path}: expected a mapping with a 'metrics' mapping")
    return ev


def _summary(rd: RunDir) -> dict:
    summary = _read(rd.summary_path)
    if not isinstance(summary, dict):
        raise StudyDataError(f"{rd.summary_path}: expected a JSON mapping")
    out = {}
    for key in SUMMARY_FIELDS:
        try:
            out[key] = _num(summary.get(key))
        except TypeError as e:
            raise StudyDataError(f"{rd.summary_path}: {key} {e}") from None
    timed = summary.get("infer_ms_per_image") is not None
    out["latency_device"] = summary.get("latency_device") if timed else None
    out["latency_precision"] = (summary.get("latency_precision") or "32-true") if timed else None
    return out


def convergence(summary: dict, cfg: RunConfig, path: Path) -> dict[str, Any]:
    """The run's convergence record as result columns; ``path`` (its summary.json) names bad values.

    ``converged`` is True/False as the engine judged it, or None ("not recorded") for a summary written before
    the engine recorded it; such a run counts as unconverged wherever a claim depends on it. ``budget`` and
    ``max_iters`` fall back to the run's config. ``criterion`` is the criterion's settings as compact JSON.
    """
    converged = summary.get("converged")
    if converged is not None and not isinstance(converged, bool):
        raise StudyDataError(f"{path}: converged must be true, false or null, got {converged!r}")
    out: dict[str, Any] = {"converged": converged}
    for key in ("converged_iter", "iters_trained", "epochs_trained", "train_wall_s", "max_iters"):
        try:
            out[key] = _num(summary.get(key))
        except TypeError as e:
            raise StudyDataError(f"{path}: {key} {e}") from None
    if math.isnan(out["max_iters"]):
        out["max_iters"] = float(cfg.train.max_iters)
    out["budget"] = str(summary.get("budget") or cfg.train.budget)
    criterion = summary.get("criterion")
    if criterion is not None and not isinstance(criterion, dict):
        raise StudyDataError(f"{path}: criterion must be a mapping of the criterion's settings, got {criterion!r}")
    out["criterion"] = "" if criterion is None else json.dumps(criterion, sort_keys=True, separators=(",", ":"))
    return out


def _run_record(rd: RunDir, cfg: RunConfig) -> dict[str, Any]:
    """summary.json fields of a result row: ``SUMMARY_FIELDS`` and ``CONVERGENCE_FIELDS``.

    ``epochs_to_converge`` is kept only where the run converged: a value from an unconverged (or unrecorded)
    run is a fraction of a best that may still have been rising, not where training converged.
    """
    out = _summary(rd)
    out.update(convergence(_read(rd.summary_path), cfg, rd.summary_path))
    if out["converged"] is not True:
        out["epochs_to_converge"] = math.nan
    return out


def _is_cross(dataset: str, train_dataset: str, ev: dict) -> bool:
    return dataset != train_dataset or bool(ev.get("cross"))


def _done_with_config(study_dir: str | Path) -> list[tuple[RunDir, RunConfig]]:
    return [(rd, rd.read_config()) for rd in finished_runs(study_dir)]


def collect_results(study_dir: str | Path) -> pd.DataFrame:
    """One row per (DONE run x eval dataset), columns ``RESULT_COLUMNS``, sorted by the identity columns."""
    rows = []
    for rd, cfg in _done_with_config(study_dir):
        ident = identity(cfg, rd.name)
        summary = _run_record(rd, cfg)
        for path in eval_files(rd):
            ev = _eval_record(path)
            metrics = ev["metrics"]
            rows.append({
                **ident,
                "eval_dataset": path.stem,
                "cross": _is_cross(path.stem, ident["train_dataset"], ev),
                **{k: _metric(metrics, k, path) for k in METRIC_COLUMNS},
                **summary,
                "eval_split": ev.get("split"),
                "eval_num_images": ev.get("num_images"),
                "eval_num_classes": len(ev.get("classes") or metrics.get("per_class_iou") or []),
                "weights": cfg.model.encoder.weights,
            })
    df = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    df["cross"] = df["cross"].astype(bool)
    df["converged"] = df["converged"].astype("boolean")  # missing -> <NA>: convergence not recorded
    return df.sort_values(["train_dataset", "eval_dataset", "encoder", "regime", "fraction", "seed"],
                          kind="stable", ignore_index=True)


def collect_per_class(study_dir: str | Path) -> pd.DataFrame:
    """Long table ``run_id, encoder, regime, train_dataset, eval_dataset, cross, fraction, seed, class, iou``.

    ``iou`` is NaN for a class the engine reported as undefined (absent from prediction and ground truth).
    """
    cols = ["run_id", "encoder", "regime", "train_dataset", "eval_dataset", "cross", "fraction", "seed",
            "class", "iou"]
    rows = []
    for rd, cfg in _done_with_config(study_dir):
        ident = identity(cfg, rd.name)
        for path in eval_files(rd):
            ev = _eval_record(path)
            per_class = ev["metrics"].get("per_class_iou")
            if not isinstance(per_class, dict):
                log.warning("%s: no per_class_iou mapping; its per-class rows are left out", path)
                continue
            cross = _is_cross(path.stem, ident["train_dataset"], ev)
            for name, iou in per_class.items():
                rows.append({**{k: ident[k] for k in cols if k in ident}, "eval_dataset": path.stem,
                             "cross": cross, "class": str(name), "iou": _num(iou)})
    return pd.DataFrame(rows, columns=cols)


def image_area_reader(study_dir: str | Path) -> Callable[[str, str], tuple[np.ndarray, np.ndarray] | None]:
    """``read(run_id, eval_dataset)``: the run's per-image ``(intersection, union)`` on that dataset, or None.

    Reads ``eval/<dataset>_areas.npz`` on demand (a study's areas may not fit in memory at once) and keeps the
    last few. None where the run predates the file or is not a finished run; a malformed file raises
    ``StudyDataError`` naming it.
    """
    root = Path(study_dir) / RUNS_DIR

    @functools.lru_cache(maxsize=64)
    def read(run_id: str, dataset: str) -> tuple[np.ndarray, np.ndarray] | None:
        rd = RunDir(root / run_id)
        path = rd.image_areas_npz(dataset)
        if not rd.is_done() or not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as z:
            if "intersection" not in z or "union" not in z:
                raise StudyDataError(f"{path}: expected the arrays 'intersection' and 'union', got {list(z)}")
            inter, union = z["intersection"], z["union"]
        if inter.shape != union.shape or inter.ndim != 2:
            raise StudyDataError(f"{path}: intersection {inter.shape} and union {union.shape} must be equal "
                                 "(images, classes) arrays")
        return inter, union

    return read


def collect_histories(study_dir: str | Path) -> pd.DataFrame:
    """``history.csv`` of every DONE run stacked, with the identity columns in front (long format)."""
    frames = []
    for rd, cfg in _done_with_config(study_dir):
        if not rd.history_path.is_file():
            log.warning("%s: missing; the run is left out of the loss curves", rd.history_path)
            continue
        try:
            hist = pd.read_csv(rd.history_path)
        except (pd.errors.EmptyDataError, pd.errors.ParserError) as e:
            raise StudyDataError(f"{rd.history_path}: not a readable CSV: {e}") from e
        for key, value in reversed(list(identity(cfg, rd.name).items())):
            hist.insert(0, key, value)
        frames.append(hist)
    if not frames:
        return pd.DataFrame(columns=[*IDENTITY_COLUMNS, "step", "epoch", "time_s", "loss"])
    return pd.concat(frames, ignore_index=True)


def load_confusion(rd: RunDir | str | Path, dataset: str) -> tuple[np.ndarray, list[str]] | None:
    """The run's confusion matrix on ``dataset`` (rows = ground truth) and class names; None if not saved."""
    rd = rd if isinstance(rd, RunDir) else RunDir(rd)
    path = rd.confusion_npy(dataset)
    if not path.is_file():
        log.warning("%s: missing; no confusion matrix for this run", path)
        return None
    cm = np.load(path, allow_pickle=False)
    classes = _eval_record(rd.eval_json(dataset)).get("classes") or []
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or (classes and len(classes) != cm.shape[0]):
        raise StudyDataError(f"{path}: shape {cm.shape} is not a square matrix over the {len(classes)} "
                             f"classes listed in {rd.eval_json(dataset)}")
    return cm, [str(c) for c in classes] or [str(i) for i in range(cm.shape[0])]


def collect_confusions(study_dir: str | Path, pairs: list[tuple[str, str]]
                       ) -> dict[tuple[str, str], tuple[np.ndarray, list[str]]]:
    """Confusion matrices for ``(run_id, eval_dataset)`` pairs; pairs without a saved matrix are left out."""
    root = Path(study_dir) / RUNS_DIR
    out = {}
    for run_id, dataset in pairs:
        got = load_confusion(root / run_id, dataset)
        if got is not None:
            out[(run_id, dataset)] = got
    return out


# --------------------------------------------------------------------------------- failures, state
def collect_failures(study_dir: str | Path) -> pd.DataFrame:
    """Runs with a ``FAILED`` marker and no ``DONE``: identity (as far as known), the error's first line."""
    rows = []
    for rd in run_dirs(study_dir):
        if rd.state() != "failed":
            continue
        ident, _ = _loose_identity(rd)
        rows.append({**ident, "error": rd.failure_line()})
    return pd.DataFrame(rows, columns=FAILURE_COLUMNS)


def collect_incomplete(study_dir: str | Path) -> pd.DataFrame:
    """Runs neither finished nor failed (running, killed, not started), and DONE runs without evals."""
    rows = []
    for rd in run_dirs(study_dir):
        state = rd.state()
        if state == "failed":
            continue
        if state == "done":
            if eval_files(rd):
                continue
            reason = "DONE but no eval/<dataset>.json"
        else:
            reason = "no DONE or FAILED marker (still running, killed, or not started)"
        ident, note = _loose_identity(rd)
        rows.append({**ident, "state": state, "reason": reason if note is None else f"{reason}; {note}"})
    return pd.DataFrame(rows, columns=INCOMPLETE_COLUMNS)


# ---------------------------------------------------------------------------------------- protocol
def _find_normalisation(obj: Any) -> tuple[list[float], list[float]] | None:
    """First mapping (depth-first) that holds both ``mean`` and ``std`` as 3 numbers."""
    if isinstance(obj, dict):
        mean, std = obj.get("mean"), obj.get("std")
        if (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == 3
                and all(isinstance(v, (int, float)) for v in [*mean, *std])):
            return [float(v) for v in mean], [float(v) for v in std]
        for value in obj.values():
            found = _find_normalisation(value)
            if found is not None:
                return found
    return None


def _registry_normalisation(encoder_name: str) -> tuple[list[float], list[float]] | None:
    """The zoo entry's mean/std, for runs whose directory does not record them; None for unknown names."""
    from encseg.models.encoders import get_spec  # imports torch and timm: only when needed

    try:
        spec = get_spec(encoder_name)
    except ValueError:  # not in the zoo and not a timm ViT (e.g. a test architecture)
        return None
    return [float(v) for v in spec.mean], [float(v) for v in spec.std]


def architecture(encoder: Any) -> str:
    """The encoder the run built, in words: its ViT shape after ``timm_kwargs``, and the timm entry it came from.

    ``encoder`` is the run's ``EncoderConfig``. A zoo name such as ``random_vitb16`` with ``timm_kwargs`` builds
    another network than its name says (the demo's tiny positive control); the numbers here are the built ones.
    """
    from encseg.models.encoders import get_spec  # imports torch and timm: only when needed

    kwargs = dict(getattr(encoder, "timm_kwargs", None) or {})
    try:
        spec = get_spec(encoder.name)
    except ValueError:  # not in the zoo and not a timm ViT
        return encoder.name + (f" with {kwargs}" if kwargs else "")
    shape = [f"patch {kwargs.get('patch_size', spec.patch)}", f"width {kwargs.get('embed_dim', spec.embed_dim)}",
             f"depth {kwargs.get('depth', spec.depth)}"]
    if "num_heads" in kwargs:
        shape.append(f"{kwargs['num_heads']} heads")
    extra = ", ".join(f"{k}={v}" for k, v in sorted(kwargs.items()))
    return f"ViT, {', '.join(shape)} (timm {spec.arch}" + (f" with {extra})" if extra else ")")


def collect_protocol(study_dir: str | Path) -> pd.DataFrame:
    """One row per DONE run with the settings a reader needs to interpret its numbers.

    Evaluation settings come from the eval json ``protocol`` of the run's own dataset (else its first eval);
    the encoder normalisation from whichever of eval json / summary.json / model.json / env.json records it.
    """
    rows = []
    for rd, cfg in _done_with_config(study_dir):
        ident = identity(cfg, rd.name)
        evals = {p.stem: p for p in eval_files(rd)}
        own = evals.get(ident["train_dataset"]) or next(iter(evals.values()), None)
        ev = _eval_record(own) if own is not None else {}
        proto = ev.get("protocol") if isinstance(ev.get("protocol"), dict) else {}
        norm = None
        for source in [ev, rd.summary_path, rd.path / "model.json", rd.env_path]:
            if isinstance(source, Path):
                source = read_json(source) if source.is_file() else None
            norm = _find_normalisation(source)
            if norm is not None:
                break
        source = "run directory"
        if norm is None:
            norm, source = _registry_normalisation(cfg.model.encoder.name), "encoder registry"
        t, d = cfg.train, cfg.data
        rows.append({
            **ident,
            "weights": cfg.model.encoder.weights,
            "architecture": architecture(cfg.model.encoder),
            "norm_mean": None if norm is None else norm[0],
            "norm_std": None if norm is None else norm[1],
            "norm_source": None if norm is None else source,
            "eval_mode": proto.get("mode", cfg.eval.mode),
            "eval_crop": proto.get("crop"),
            "eval_stride": proto.get("stride"),
            "eval_flip": proto.get("flip", cfg.eval.flip),
            "eval_scales": proto.get("scales", list(cfg.eval.scales)),
            "eval_size": proto.get("eval_size", d.eval_size),
            "eval_split": ev.get("split"),
            "budget": t.budget,
            "max_iters": t.max_iters,
            "max_epochs": t.max_epochs,
            "batch_size": d.batch_size,
            "crop_size": d.crop_size,
            "lr": t.lr,
            "weight_decay": t.weight_decay,
            "encoder_lr_mult": cfg.model.regime.lr_mult,
            "layer_decay": cfg.model.regime.layer_decay,
            "converge_target": cfg.eval.converge_target,
        })
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------- compute used
COMPUTE_COLUMNS = ["run_id", "train_dataset", "fraction", "budget", "converged", "gpus", "iters_trained",
                   "fixed_iters", "train_wall_s", "fixed_wall_s", "gpu_hours", "fixed_gpu_hours"]


def compute_used(study_dir: str | Path) -> pd.DataFrame:
    """One row per finished run: the iterations and GPU-hours it used, and what the fixed schedule would have.

    The fixed schedule of a ``converge`` run is its ``max_iters`` cap (the published schedule in the shipped
    studies), costed at the run's own measured seconds per iteration (``train_wall_s / iters_trained``); a
    run on a fixed budget used its fixed schedule. Runs that did not record ``iters_trained`` fall back to
    ``steps`` and ``train_time_s`` of their summary.json.
    """
    rows = []
    for rd in finished_runs(study_dir):
        cfg = rd.read_config()
        summary = read_json(rd.summary_path)
        rec = convergence(summary, cfg, rd.summary_path)
        iters = rec["iters_trained"] if not math.isnan(rec["iters_trained"]) else float(summary.get("steps") or 0)
        wall = rec["train_wall_s"]
        if math.isnan(wall):
            wall = float(summary.get("train_time_s") or math.nan)
        fixed = rec["max_iters"] if rec["budget"] == "converge" else iters
        fixed_wall = fixed * wall / iters if iters > 0 else math.nan
        gpus = world_size(cfg.train)
        rows.append({"run_id": rd.name, "train_dataset": cfg.data.dataset.display_name,
                     "fraction": float(cfg.data.fraction), "budget": rec["budget"], "converged": rec["converged"],
                     "gpus": gpus, "iters_trained": iters, "fixed_iters": fixed, "train_wall_s": wall,
                     "fixed_wall_s": fixed_wall, "gpu_hours": wall * gpus / 3600.0,
                     "fixed_gpu_hours": fixed_wall * gpus / 3600.0})
    return pd.DataFrame(rows, columns=COMPUTE_COLUMNS)
