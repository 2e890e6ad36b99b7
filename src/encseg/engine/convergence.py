"""The convergence criterion on the dev curve, and the learning-rate schedule of ``train.budget: converge``.

Pure functions over a small state; no Lightning here (the callback that feeds it is
``engine.callbacks.ConvergeStop``), so the same rule decides a live run, replays a recorded curve, and fills
``converged`` for fixed budgets.

Rule, applied at every dev validation (step ``s``, dev mIoU ``m``, dev loss ``l``):

- an *improvement* is ``m > best_m + min_delta`` (the best only moves on an improvement, so slow creep
  accumulates until it counts); with ``loss_min_delta`` set, ``l < best_l * (1 - loss_min_delta)`` is one too;
- after ``patience`` validations in a row without one, once ``s >= min_iters`` and once the curve has left its
  initial level (``best_m >= first_m + min_rise``, ``first_m`` the first finite dev mIoU), the plateau is
  declared at ``s`` (``converged_iter``). The rise guard is there because a Mask2Former trained from a random
  encoder sits for hundreds of steps at a flat mIoU before its queries specialise: a plateau at the level the
  curve started from is that phase, not convergence. (An earlier rule kept the run going on the dev loss
  instead, which needs the Mask2Former loss at every validation; replayed on the demo's recorded dev curves the
  mIoU rule fires at the same step in 11 of 12 cells and one validation earlier in the 12th, see
  docs/recipes.md "The convergence rule".) An overfitting run fails it (mIoU flat or falling after its peak).
- ``budget: converge``: the LR is warmed up, then constant; once the plateau is declared it decays linearly to
  0 over ``anneal_fraction`` of the steps so far (a whole number of validation intervals, at least one), and
  the run stops at the validation that ends the decay, or at ``max_iters``, whichever comes first.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any

from encseg.config import TrainConfig

PHASES = ("train", "anneal", "done")


@dataclass(frozen=True)
class Criterion:
    patience: int = 5
    min_delta: float = 0.005
    loss_min_delta: float | None = None
    min_rise: float = 0.05
    anneal_fraction: float = 0.2
    min_iters: int = 0
    max_iters: int = 160_000
    val_every: int = 5000

    @classmethod
    def from_config(cls, train: TrainConfig, val_every: int | None = None) -> Criterion:
        """``val_every`` in steps (for epoch budgets the caller converts epochs to steps)."""
        c = train.converge
        return cls(patience=c.patience, min_delta=c.min_delta, loss_min_delta=c.loss_min_delta,
                   min_rise=c.min_rise, anneal_fraction=c.anneal_fraction, min_iters=train.min_iters,
                   max_iters=train.max_iters, val_every=val_every or train.val_every)

    @property
    def uses_loss(self) -> bool:
        """Whether the rule reads the dev loss (validation then computes it, from its inference forward)."""
        return self.loss_min_delta is not None

    def describe(self) -> str:
        return "dev mIoU + dev loss" if self.uses_loss else "dev mIoU"

    def anneal_length(self, step: int) -> int:
        intervals = max(1, math.ceil(self.anneal_fraction * step / max(1, self.val_every)))
        return intervals * self.val_every


@dataclass(frozen=True)
class State:
    phase: str = "train"  # train: constant LR; anneal: plateau declared, LR decaying; done: stop
    best_miou: float | None = None
    best_step: int | None = None
    best_loss: float | None = None
    first_miou: float | None = None  # the first finite dev mIoU: the level the curve must rise from
    stalled: int = 0  # validations in a row without an improvement
    fired_at: int | None = None  # the step where the plateau was declared
    anneal_end: int | None = None
    validations: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> State:
        state = cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
        if state.phase not in PHASES:
            raise ValueError(f"convergence state has an unknown phase {state.phase!r}")
        return state


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(float(x))


def observe(state: State, crit: Criterion, step: int, miou: float | None, loss: float | None) -> State:
    """The state after one dev validation at ``step`` (see the module docstring)."""
    if state.phase != "train":
        done = state.phase == "done" or step >= state.anneal_end
        return replace(state, phase="done" if done else "anneal", validations=state.validations + 1)
    better_miou = _finite(miou) and (state.best_miou is None or miou > state.best_miou + crit.min_delta)
    better_loss = crit.loss_min_delta is not None and _finite(loss) and (
        state.best_loss is None or loss < state.best_loss * (1.0 - crit.loss_min_delta))
    new = replace(state, validations=state.validations + 1,
                  stalled=0 if (better_miou or better_loss) else state.stalled + 1)
    if state.first_miou is None and _finite(miou):
        new = replace(new, first_miou=float(miou))
    if better_miou:
        new = replace(new, best_miou=float(miou), best_step=int(step))
    if better_loss:
        new = replace(new, best_loss=float(loss))
    if new.stalled >= crit.patience and step >= crit.min_iters and _left_initial_level(new, crit):
        end = min(step + crit.anneal_length(step), crit.max_iters)
        new = replace(new, phase="anneal" if end > step else "done", fired_at=int(step), anneal_end=int(end))
    return new


def _left_initial_level(state: State, crit: Criterion) -> bool:
    """The rise guard: a curve that never had a finite mIoU (all NaN) cannot rise, and may not block a stop."""
    if crit.min_rise <= 0 or state.first_miou is None:
        return True
    return state.best_miou is not None and state.best_miou >= state.first_miou + crit.min_rise - 1e-12


def should_stop(state: State, step: int) -> bool:
    return state.phase == "done" or (state.phase == "anneal" and step >= state.anneal_end)


def lr_factor(step: int, state: State, warmup: int = 0, warmup_ratio: float = 1e-6) -> float:
    """LR multiplier of ``budget: converge``: linear warm-up, constant, then a linear decay to 0 over the anneal."""
    k = warmup_ratio + (1.0 - warmup_ratio) * step / warmup if warmup > 0 and step < warmup else 1.0
    if state.fired_at is None or state.anneal_end is None:
        return k
    length = max(1, state.anneal_end - state.fired_at)
    return k * min(1.0, max(0.0, (state.anneal_end - step) / length))


def replay(points: Iterable[tuple[int, float | None, float | None]], crit: Criterion) -> State:
    """The criterion over a recorded dev curve ``[(step, miou, loss), ...]`` (sorted by step); stops observing
    once the plateau is declared, as a live run would."""
    state = State()
    for step, miou, loss in points:
        if state.fired_at is not None:
            break
        state = observe(state, crit, int(step), miou, loss)
    return state


def record(state: State, crit: Criterion, budget: str, steps: int, steps_per_epoch: int, wall_s: float,
           cap: int) -> dict[str, Any]:
    """The convergence fields of ``summary.json`` (see docs/architecture.md, CONTRACT of issue 10).

    ``cap`` is the schedule length (fixed budgets) or the step cap (converge), in steps."""
    spe = max(1, steps_per_epoch)
    fired = state.fired_at
    if budget == "converge":
        stopped_by = "criterion" if fired is not None and steps >= (state.anneal_end or 0) else "max_iters"
    else:
        stopped_by = "schedule"
    return {
        "converged": fired is not None, "converged_iter": fired,
        "epochs_to_converge": None if fired is None else fired / spe,
        "iters_trained": int(steps), "epochs_trained": steps / spe, "train_wall_s": float(wall_s),
        "budget": budget, "max_iters": int(cap),
        "criterion": {"metric": crit.describe(), **asdict(crit), "fired_at": fired,
                      "anneal_end": state.anneal_end, "best_dev_miou": state.best_miou,
                      "best_dev_step": state.best_step, "stopped_by": stopped_by},
    }
