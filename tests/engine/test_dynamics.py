import io
import math

import pandas as pd
import pytest

from encseg.engine.dynamics import convergence

# train rows every 50 steps, validation every 100 steps (200 steps per epoch), like history.csv
CSV = """step,epoch,time_s,lr,loss,loss_ce,val_miou,val_macc,val_loss
50,0,10,1e-4,2.0,1.0,,,
100,0,20,1e-4,1.8,0.9,,,
100,0,25,,,,0.20,0.30,1.5
200,0,45,1e-4,1.5,0.7,,,
200,0,50,,,,0.50,0.55,1.2
300,1,70,1e-4,1.2,0.6,,,
300,1,75,,,,0.58,0.6,1.1
400,1,95,1e-4,1.0,0.5,,,
400,1,100,,,,0.62,0.7,1.0
500,2,125,,,,0.60,0.7,1.0
"""


def history() -> pd.DataFrame:
    return pd.read_csv(io.StringIO(CSV))


def test_steps_epochs_time_to_95_percent_of_best():
    r = convergence(history())
    assert r["num_validations"] == 5
    assert r["best_miou"] == 0.62 and r["best_step"] == 400 and r["best_epoch"] == 1
    # 0.95 * 0.62 = 0.589: 0.58 at step 300 is short, 0.62 at step 400 is the first to reach it
    assert r["threshold"] == pytest.approx(0.589)
    assert (r["steps_to_converge"], r["epochs_to_converge"], r["time_to_converge_s"]) == (400, 1, 100)
    assert r["final_miou"] == 0.60 and r["final_step"] == 500
    assert r["best_is_last"] is False and r["final_within_fraction"] is True
    assert r["steps_to_target"] is None and r["target"] is None


def test_lower_fraction_and_fractional_epochs():
    r = convergence(history(), fraction=0.8, steps_per_epoch=200)
    # 0.8 * 0.62 = 0.496: first reached by 0.50 at step 200 = 1.0 epochs
    assert r["steps_to_converge"] == 200 and r["epochs_to_converge"] == 1.0 and r["time_to_converge_s"] == 50
    r = convergence(history(), fraction=0.9, steps_per_epoch=200)
    assert r["steps_to_converge"] == 300 and r["epochs_to_converge"] == 1.5
    assert r["final_epoch"] == 2.5


def test_absolute_target_reached_and_not_reached():
    r = convergence(history(), target=0.55)
    assert (r["steps_to_target"], r["epochs_to_target"], r["time_to_target_s"]) == (300, 1, 75)
    r = convergence(history(), target=0.7)
    assert r["steps_to_target"] is None and r["epochs_to_target"] is None and r["time_to_target_s"] is None


def test_still_improving_and_degraded_flags():
    h = history()
    h.loc[h["step"] == 500, "val_miou"] = 0.7
    r = convergence(h)
    assert r["best_is_last"] is True and r["best_step"] == 500
    h.loc[h["step"] == 500, "val_miou"] = 0.3
    r = convergence(h)
    assert r["best_is_last"] is False and r["final_within_fraction"] is False


def test_resumed_run_duplicate_validation_keeps_last_and_sorts():
    h = history()
    dup = pd.DataFrame([{"step": 300, "epoch": 1, "time_s": 80, "val_miou": 0.61}])
    r = convergence(pd.concat([h.iloc[::-1], dup], ignore_index=True))
    assert r["num_validations"] == 5
    # the re-logged 0.61 at step 300 replaces 0.58 and now reaches 0.95 * 0.62
    assert r["steps_to_converge"] == 300 and r["time_to_converge_s"] == 80


def test_no_validation_rows_gives_none():
    h = history()
    h["val_miou"] = math.nan
    r = convergence(h)
    assert r["num_validations"] == 0 and r["best_miou"] is None and r["steps_to_converge"] is None
    assert convergence(h.drop(columns=["val_miou"]))["best_miou"] is None


def test_bad_input():
    with pytest.raises(ValueError, match="'step'"):
        convergence(pd.DataFrame({"val_miou": [0.1]}))
    with pytest.raises(ValueError, match="fraction"):
        convergence(history(), fraction=1.5)
