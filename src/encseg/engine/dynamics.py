"""Training dynamics from ``history.csv``: the best and final validation mIoU, and when a target was reached.

Whether and when a run converged is the dev-curve criterion's (``engine.convergence``), not this module's.

Definitions (validation rows are the rows whose ``val_miou`` is not empty, ordered by ``step``; when a resumed
run logged the same step twice, the last row wins):

- ``steps_to_target``: the ``step`` of the first validation whose mIoU is ``>= target`` (``eval.converge_target``);
  the validation schedule bounds the resolution. None when the target was never reached.
- ``epochs_to_target``: ``step / steps_per_epoch`` when ``steps_per_epoch`` is given (fractional), else the
  ``epoch`` column of that row as logged; ``time_to_target_s``: its ``time_s`` (training wall time).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

__all__ = ["curve_summary", "validation_rows"]


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


def curve_summary(history: pd.DataFrame, target: float | None = None,
                  steps_per_epoch: float | None = None) -> dict[str, Any]:
    """Best and final validation of one run's history, and the first reach of ``target``; JSON-ready values.

    Keys: ``num_validations, best_miou, best_step, best_epoch, final_miou, final_step, final_epoch, target,
    steps_to_target, epochs_to_target, time_to_target_s``. Without any validation row every value is None.
    """
    if steps_per_epoch is not None and steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
    val = validation_rows(history)
    out: dict[str, Any] = {"num_validations": len(val), "target": target}
    keys = ("best_miou", "best_step", "best_epoch", "final_miou", "final_step", "final_epoch", "steps_to_target",
            "epochs_to_target", "time_to_target_s")
    out.update(dict.fromkeys(keys))
    if val.empty:
        return out
    best = val.iloc[int(val["val_miou"].to_numpy().argmax())]  # the first occurrence of the best score
    last = val.iloc[-1]
    out.update({
        "best_miou": float(best["val_miou"]), "best_step": _int(best["step"]),
        "best_epoch": _epoch(best, steps_per_epoch), "final_miou": float(last["val_miou"]),
        "final_step": _int(last["step"]), "final_epoch": _epoch(last, steps_per_epoch),
    })
    if target is not None:
        tgt = _first_reaching(val, target, steps_per_epoch)
        out.update({"steps_to_target": tgt["step"], "epochs_to_target": tgt["epoch"],
                    "time_to_target_s": tgt["time_s"]})
    return out
