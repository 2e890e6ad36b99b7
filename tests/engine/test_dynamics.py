import io
import math

import pandas as pd
import pytest

from encseg.engine.dynamics import curve_summary

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


def test_best_and_final_validation():
    r = curve_summary(history())
    assert r["num_validations"] == 5
    assert r["best_miou"] == 0.62 and r["best_step"] == 400 and r["best_epoch"] == 1
    assert r["final_miou"] == 0.60 and r["final_step"] == 500 and r["final_epoch"] == 2
    assert r["steps_to_target"] is None and r["target"] is None
    assert curve_summary(history(), steps_per_epoch=200)["final_epoch"] == 2.5


def test_absolute_target_reached_and_not_reached():
    r = curve_summary(history(), target=0.55)
    assert (r["steps_to_target"], r["epochs_to_target"], r["time_to_target_s"]) == (300, 1, 75)
    r = curve_summary(history(), target=0.55, steps_per_epoch=200)
    assert r["epochs_to_target"] == 1.5
    r = curve_summary(history(), target=0.7)
    assert r["steps_to_target"] is None and r["epochs_to_target"] is None and r["time_to_target_s"] is None


def test_resumed_run_duplicate_validation_keeps_last_and_sorts():
    h = history()
    dup = pd.DataFrame([{"step": 300, "epoch": 1, "time_s": 80, "val_miou": 0.61}])
    r = curve_summary(pd.concat([h.iloc[::-1], dup], ignore_index=True), target=0.605)
    assert r["num_validations"] == 5
    # the re-logged 0.61 at step 300 replaces 0.58 and is the first to reach the target
    assert r["steps_to_target"] == 300 and r["time_to_target_s"] == 80


def test_no_validation_rows_gives_none():
    h = history()
    h["val_miou"] = math.nan
    r = curve_summary(h, target=0.5)
    assert r["num_validations"] == 0 and r["best_miou"] is None and r["steps_to_target"] is None
    assert curve_summary(h.drop(columns=["val_miou"]))["best_miou"] is None


def test_bad_input():
    with pytest.raises(ValueError, match="'step'"):
        curve_summary(pd.DataFrame({"val_miou": [0.1]}))
    with pytest.raises(ValueError, match="steps_per_epoch"):
        curve_summary(history(), steps_per_epoch=0)
