"""Strict configs: typos name the closest key, overrides parse as YAML, nested sections validate."""

import pytest

from encseg.config import ConfigError, load_run_config, parse_overrides

BASE = {"data": {"dataset": {"root": "/data/x"}}}


def test_overrides_are_nested_and_typed():
    assert parse_overrides(["train.lr=1e-3", "model.encoder.taps=[2, 5]", "data.eval_size=null"]) == {
        "train": {"lr": 1e-3}, "model": {"encoder": {"taps": [2, 5]}}, "data": {"eval_size": None}}
    cfg = load_run_config(data=BASE, overrides=["train.lr=0.5", "model.regime.mode=frozen"])
    assert cfg.train.lr == 0.5 and cfg.model.regime.mode == "frozen"


@pytest.mark.parametrize("override, message", [
    ("model.encodr.name=x", r"unknown key 'model\.encodr' \(did you mean 'encoder'\?\)"),
    ("model.head.num_querys=5", r"did you mean 'num_queries'"),
    ("train.lr=-1", r"train\.lr"),
    ("model.head.hidden_dim=100", r"divisible by 32"),
    ("model.regime.mode=last_n", r"last_n must be >= 1"),
    ("trainlr", r"key\.path=value"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_run_config(data=BASE, overrides=[override])


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_run_config(tmp_path / "nope.yaml")
