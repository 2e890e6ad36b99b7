"""``last_n`` runs of different depths stay apart: the regime label carries the depth everywhere."""

import pytest
from _fake_runs import FakeEval, make_config, write_run

from encseg.config import RegimeConfig
from encseg.engine.rundir import run_id
from encseg.study.aggregate import collect_results
from encseg.study.stats import summarize


def _last(depth: int, seed: int):
    cfg = make_config("pretrained_b", seed=seed)
    regime = RegimeConfig(mode="last_n", last_n=depth)
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"regime": regime})})


def test_last2_and_last4_are_separate_rows_with_their_depth(tmp_path):
    runs = tmp_path / "runs"
    for seed in (0, 1):
        write_run(runs, make_config("random", seed=seed), evals={"synth_a": FakeEval(0.30)})
        write_run(runs, _last(2, seed), evals={"synth_a": FakeEval(0.40)})
        write_run(runs, _last(4, seed), evals={"synth_a": FakeEval(0.60)})
    df = collect_results(tmp_path)
    assert set(df["regime"]) == {"finetune", "last2", "last4"}
    assert all(f"__{r}__" in rid for r, rid in zip(df["regime"], df["run_id"], strict=True))
    summary = summarize(df, baseline="random").set_index(["encoder", "regime"])
    assert summary.loc[("pretrained_b", "last2"), "miou_mean"] == pytest.approx(0.40)
    assert summary.loc[("pretrained_b", "last4"), "miou_mean"] == pytest.approx(0.60)
    assert summary.loc[("pretrained_b", "last4"), "gain_miou"] == pytest.approx(0.30)


def test_one_label_rule():
    from encseg.config import regime_label

    assert regime_label("last_n", 3) == RegimeConfig(mode="last_n", last_n=3).label == "last3"
    assert RegimeConfig(mode="frozen").label == "frozen"
    assert "__last3__" in run_id(_last(3, 0))
