"""The convergence criterion (engine/convergence.py) on recorded and shaped dev curves, without Lightning."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from encseg.engine.convergence import Criterion, State, lr_factor, observe, record, replay, should_stop

DEMO = Criterion(patience=4, min_delta=0.005, anneal_fraction=0.2, max_iters=1500, val_every=50)
WITH_LOSS = replace(DEMO, loss_min_delta=0.01)  # the rule before issue 20: the dev loss also counts
NO_GUARD = replace(DEMO, min_rise=0.0)

# recorded on main's demo (random encoder, 100 % of style A, 300-step poly schedule), dev mIoU at steps 50..300
MAIN_DEMO_RANDOM_100 = {0: [0.20, 0.22, 0.23, 0.24, 0.30, 0.33], 1: [0.18, 0.21, 0.22, 0.23, 0.23, 0.24]}

# recorded on the demo of 2026-12-07 (/work/baseline/demo: converge budget, validation every 25 steps, the live rule
# was WITH_LOSS and fired at 800 and 550): dev mIoU and dev loss up to the end of each run's anneal
DEMO_RANDOM_100_S1 = (
    [0.1729, 0.1812, 0.1795, 0.1959, 0.1987, 0.2065, 0.2299, 0.2573, 0.2921, 0.3121, 0.3548, 0.3528, 0.4300, 0.4892,
     0.5097, 0.5340, 0.4717, 0.5410, 0.5756, 0.5899, 0.5616, 0.5888, 0.5901, 0.5963, 0.5933, 0.5885, 0.6049, 0.6155,
     0.6138, 0.6042, 0.6016, 0.6122, 0.6162, 0.6254, 0.6224, 0.6230, 0.6339, 0.6355, 0.6329],
    [16.45, 14.12, 13.12, 12.53, 12.60, 12.10, 12.00, 12.09, 11.65, 11.38, 10.93, 10.99, 10.42, 10.03, 9.72, 9.38,
     10.34, 9.62, 8.91, 9.02, 9.32, 8.84, 8.96, 8.78, 8.86, 8.89, 8.79, 8.49, 8.79, 8.68, 8.59, 8.61, 8.60, 8.53, 8.42,
     8.37, 8.31, 8.33, 8.51])
DEMO_RANDOM_30_S1 = (
    [0.1439, 0.1755, 0.1852, 0.2275, 0.2847, 0.3205, 0.3624, 0.3808, 0.3866, 0.4072, 0.4212, 0.4267, 0.4390, 0.4453,
     0.4684, 0.4492, 0.5020, 0.5060, 0.5033, 0.4670, 0.4886, 0.4873, 0.4734, 0.4833, 0.4882, 0.4982, 0.4997],
    [16.36, 14.30, 13.34, 12.78, 12.07, 11.42, 11.41, 11.37, 11.38, 11.05, 11.08, 11.27, 11.67, 11.16, 11.37, 11.78,
     11.23, 10.74, 11.53, 11.60, 11.46, 11.37, 12.05, 12.08, 12.58, 12.64, 12.96])


def _curve(mious, losses=None, every=50):
    losses = losses or [None] * len(mious)
    return [(every * (i + 1), m, loss) for i, (m, loss) in enumerate(zip(mious, losses, strict=True))]


@pytest.mark.parametrize("seed", [0, 1])
def test_recorded_random_init_plateau_of_the_old_demo_is_not_a_stop(seed):
    state = replay(_curve(MAIN_DEMO_RANDOM_100[seed]), DEMO)
    assert state.fired_at is None and state.phase == "train"


@pytest.mark.parametrize("curve,with_loss,miou_rule", [(DEMO_RANDOM_100_S1, 800, 800), (DEMO_RANDOM_30_S1, 550, 525)])
def test_the_miou_rule_stops_the_recorded_demo_curves_where_the_loss_rule_did_or_one_validation_earlier(
        curve, with_loss, miou_rule):
    points = _curve(*curve, every=25)
    assert replay(points, replace(WITH_LOSS, val_every=25)).fired_at == with_loss
    assert replay(points, replace(DEMO, val_every=25)).fired_at == miou_rule
    # the random encoder's long climb is not taken for a plateau: it stops far later than the pretrained cells
    assert miou_rule >= 500


def test_a_flat_miou_at_the_initial_level_is_not_a_plateau_then_the_real_plateau_fires():
    # the random-init Mask2Former shape: mIoU flat for 300 steps while the loss falls, then a climb, then flat
    mious = [0.20, 0.21, 0.21, 0.21, 0.21, 0.21, 0.21, 0.30, 0.42, 0.53, 0.60, 0.62, 0.63, 0.63, 0.63, 0.63, 0.63]
    losses = [30.0, 27.0, 25.0, 23.5, 22.0, 21.0, 20.0, 18.0, 16.0, 14.0, 13.0, 12.6, 12.5, 12.5, 12.6, 12.5, 12.6]
    assert replay(_curve(mious), DEMO).fired_at == 850  # 4 validations after the last improvement (650: 0.63)
    assert replay(_curve(mious, losses), WITH_LOSS).fired_at == 850  # the dev loss keeps it going the same way
    assert replay(_curve(mious), NO_GUARD).fired_at == 300, "without a guard the same curve stops on the plateau"


def test_the_rise_guard_counts_from_the_first_finite_miou_and_a_dead_curve_still_stops():
    late_start = [math.nan, 0.40, 0.41, 0.41, 0.41, 0.41, 0.46, 0.46, 0.46, 0.46, 0.46]
    assert replay(_curve(late_start), DEMO).fired_at == 550  # first 0.40 at 100; 0.46 >= 0.45 at 350
    assert replay(_curve([math.nan] * 6), DEMO).fired_at == 200  # nothing to rise from: the plateau stands
    assert replay(_curve([0.5] * 30), DEMO).fired_at is None  # never left its level: trains to the cap


def replace_criterion(**kw) -> Criterion:
    return replace(DEMO, **kw)


def test_steady_rise_never_fires():
    mious = [0.1 + 0.01 * i for i in range(30)]
    losses = [30.0 - 0.1 * i for i in range(30)]
    assert replay(_curve(mious, losses), DEMO).fired_at is None


def test_overfitting_dip_fires_soon_after_the_peak():
    # 30 % prototype shape: flat from ~step 500, dev loss rising after it (overfitting)
    mious = [0.30, 0.40, 0.48, 0.53, 0.55, 0.56, 0.56, 0.55, 0.54, 0.54, 0.53, 0.52]
    losses = [20.0, 17.0, 15.0, 14.0, 13.5, 13.4, 13.6, 14.0, 14.5, 15.0, 15.5, 16.0]
    state = replay(_curve(mious, losses), DEMO)
    assert state.best_step == 300 and state.fired_at == 500  # 0.56 at 300 is within min_delta of 0.55
    assert state.anneal_end == 500 + 100  # 0.2 x 500 = 100 steps = 2 validation intervals


def test_min_iters_and_max_iters_bound_the_decision():
    flat = _curve([0.5] * 20, [10.0] * 20)
    assert replay(flat, replace_criterion(min_iters=700, min_rise=0.0)).fired_at == 700
    capped = replay(flat, replace_criterion(max_iters=260, min_rise=0.0))
    assert capped.fired_at == 250 and capped.anneal_end == 260


def test_nan_scores_count_as_no_improvement():
    state = replay(_curve([math.nan] * 6, [math.nan] * 6), DEMO)
    assert state.fired_at == 200 and state.best_miou is None


def test_schedule_warms_up_stays_constant_then_decays_to_zero_and_stops():
    state = State()
    assert lr_factor(0, state, warmup=20, warmup_ratio=0.0) == 0.0
    assert lr_factor(10, state, warmup=20, warmup_ratio=0.0) == 0.5
    assert lr_factor(5000, state, warmup=20) == 1.0  # no known length: constant until the plateau
    for step in (50, 100, 150, 200, 250):
        state = observe(state, NO_GUARD, step, 0.5, 10.0)
    # plateau after 4 validations without improvement; anneal 0.2 x 250 -> one validation interval
    assert state.phase == "anneal" and (state.fired_at, state.anneal_end) == (250, 300)
    assert lr_factor(250, state) == 1.0 and lr_factor(275, state) == 0.5 and lr_factor(299, state) == 0.02
    assert lr_factor(300, state) == 0.0
    assert not should_stop(state, 299) and should_stop(state, 300)
    assert observe(state, NO_GUARD, 300, 0.9, 1.0).phase == "done"


def test_state_round_trips_through_a_checkpoint_dict():
    state = replay(_curve([0.5] * 6, [10.0] * 6), DEMO)
    assert State.from_dict(state.to_dict()) == state
    with pytest.raises(ValueError, match="phase"):
        State.from_dict({**state.to_dict(), "phase": "sleeping"})


def test_record_fields_follow_the_contract():
    state = replay(_curve([0.5] * 6, [10.0] * 6), NO_GUARD)
    rec = record(state, DEMO, "converge", steps=300, steps_per_epoch=25, wall_s=12.5, cap=1500)
    assert rec["converged"] is True and rec["converged_iter"] == 250 and rec["epochs_to_converge"] == 10.0
    assert (rec["iters_trained"], rec["epochs_trained"], rec["train_wall_s"]) == (300, 12.0, 12.5)
    assert rec["budget"] == "converge" and rec["max_iters"] == 1500
    assert rec["criterion"]["patience"] == 4 and rec["criterion"]["stopped_by"] == "criterion"
    assert rec["criterion"]["metric"] == "dev mIoU" and rec["criterion"]["min_rise"] == 0.05
    assert record(state, WITH_LOSS, "converge", 300, 25, 1.0, 1500)["criterion"]["metric"] == "dev mIoU + dev loss"
    unconverged = record(State(), DEMO, "converge", steps=1500, steps_per_epoch=25, wall_s=1.0, cap=1500)
    assert unconverged["converged"] is False and unconverged["epochs_to_converge"] is None
    assert unconverged["criterion"]["stopped_by"] == "max_iters"


def test_fixed_budget_runs_get_the_same_criterion_replayed_on_their_dev_curve(tmp_path):
    import pandas as pd

    from encseg.config_io import load_run_config
    from encseg.engine.finalize import convergence_record

    cfg = load_run_config(data={"data": {"dataset": {"root": str(tmp_path)}},
                                "train": {"budget": "iters", "max_iters": 600, "val_every": 50,
                                          "converge": {"patience": 4}}})
    steps = [50 * (i + 1) for i in range(12)]
    train_rows = pd.DataFrame({"step": steps, "time_s": [float(s) for s in steps], "loss": [1.0] * 12})
    plateau = pd.DataFrame({"step": steps, "time_s": [float(s) + 0.5 for s in steps],
                            "val_miou": [0.3, 0.4, 0.5, 0.6] + [0.6] * 8, "val_loss": [9.0, 8.0, 7.0, 6.0] + [6.0] * 8})
    rec = convergence_record(cfg, None, pd.concat([train_rows, plateau]), steps=600, steps_per_epoch=25, wall_s=9.0)
    assert rec["converged"] is True and rec["converged_iter"] == 400 and rec["steps_to_converge"] == 400
    assert rec["epochs_to_converge"] == 16.0 and rec["time_to_converge_s"] == 400.5
    assert rec["budget"] == "iters" and rec["max_iters"] == 600 and rec["criterion"]["stopped_by"] == "schedule"
    rising = plateau.assign(val_miou=[0.05 * (i + 1) for i in range(12)])
    rec = convergence_record(cfg, None, pd.concat([train_rows, rising]), steps=600, steps_per_epoch=25, wall_s=9.0)
    assert rec["converged"] is False and rec["epochs_to_converge"] is None and rec["time_to_converge_s"] is None
