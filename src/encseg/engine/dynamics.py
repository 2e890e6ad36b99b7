"""Training dynamics from ``history.csv``: how fast a run gets close to its own best validation mIoU.

Definitions (validation rows are the rows whose ``val_miou`` is not empty, ordered by ``step``; when a resumed
run logged the same step twice, the last row wins):

- ``steps_to_converge``: the ``step`` of the first validation whose mIoU is ``>= fraction * best``, where
  ``best`` is the run's highest validation mIoU (default fraction 0.95). The validation schedule bounds the
  resolution: the true crossing lies between the previous validation and this one.
- ``epochs_to_converge``: ``step / steps_per_epoch`` when ``steps_per_epoch`` is given (fractional), else the
  ``epoch`` column of that row as logged.
- ``time_to_converge_s``: the ``time_s`` column of that row (training wall time since the start of the run).
- ``..._to_target``: the same for an absolute mIoU target; None when the target was never reached.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

__all__ = ["convergence", "validation_rows"]


def validation_rows(history: pd.DataFrame) -> pd.DataFrame:
    """The validation rows of a history table, sorted by step, one row per step (the last logged)."""
    if "step" not in history.columns:
        raise ValueError(f"history has no 'step' column (columns: {list(history.columns)})")
    if "val_miou" not in history.columns:
        return history.iloc[0:0]
    val = history[history["val_miou"].notna()]
    val = val.drop_duplicates(subset="step", keep="last")
    return val.sort_values("step", kind="stable").reset_index(drop=True)


def _num(v: Any) -> float | None:
    if v is None:
        return None
    v = float(v)
    return None if math.isnan(v) else v


def _int(v: Any) -> int | None:
    f = _num(v)
    return None if f is None else int(f)


def _first_reaching(val: pd.DataFrame, threshold: float, steps_per_epoch: float | None) -> dict[str, Any]:
    hit = val[val["val_miou"] >= threshold]
    if hit.empty:
        return {"step": None, "epoch": None, "time_s": None}
    row = hit.iloc[0]
    return {"step": _int(row["step"]), "epoch": _epoch(row, steps_per_epoch),
            "time_s": _num(row["time_s"]) if "time_s" in row.index else None}


def _epoch(row: pd.Series, steps_per_epoch: float | None) -> float | None:
    if steps_per_epoch:
        return float(row["step"]) / float(steps_per_epoch)
    return _num(row["epoch"]) if "epoch" in row.index else None


def convergence(history: pd.DataFrame, fraction: float = 0.95, target: float | None = None,
                steps_per_epoch: float | None = None) -> dict[str, Any]:
    """Convergence summary of one run's history (see the module docstring); JSON-ready values.

    Keys: ``num_validations, best_miou, best_step, best_epoch, final_miou, final_step, final_epoch, fraction,
    threshold, steps_to_converge, epochs_to_converge, time_to_converge_s, target, steps_to_target,
    epochs_to_target, time_to_target_s, best_is_last`` (the best score is the last validation: the run was
    still improving when it stopped) and ``final_within_fraction`` (the final score is still within
    ``fraction`` of the best: it did not degrade). Without any validation row every value is None.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if steps_per_epoch is not None and steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
    val = validation_rows(history)
    out: dict[str, Any] = {"num_validations": len(val), "fraction": fraction, "target": target}
    keys = ("best_miou", "best_step", "best_epoch", "final_miou", "final_step", "final_epoch", "threshold",
            "steps_to_converge", "epochs_to_converge", "time_to_converge_s", "steps_to_target",
            "epochs_to_target", "time_to_target_s", "best_is_last", "final_within_fraction")
    out.update(dict.fromkeys(keys))
    if val.empty:
        return out

    best_pos = int(val["val_miou"].to_numpy().argmax())  # the first occurrence of the best score
    best, last = val.iloc[best_pos], val.iloc[-1]
    best_miou = float(best["val_miou"])
    threshold = fraction * best_miou
    conv = _first_reaching(val, threshold, steps_per_epoch)
    out.update({
        "best_miou": best_miou, "best_step": _int(best["step"]), "best_epoch": _epoch(best, steps_per_epoch),
        "final_miou": float(last["val_miou"]), "final_step": _int(last["step"]),
        "final_epoch": _epoch(last, steps_per_epoch), "threshold": threshold,
        "steps_to_converge": conv["step"], "epochs_to_converge": conv["epoch"],
        "time_to_converge_s": conv["time_s"],
        "best_is_last": best_pos == len(val) - 1,
        "final_within_fraction": bool(float(last["val_miou"]) >= threshold),
    })
    if target is not None:
        tgt = _first_reaching(val, target, steps_per_epoch)
        out.update({"steps_to_target": tgt["step"], "epochs_to_target": tgt["epoch"],
                    "time_to_target_s": tgt["time_s"]})
    return out
