"""Strict configs: typos name the closest key, overrides parse as YAML, nested sections validate."""

import pytest

from encseg.config import ConfigError
from encseg.config_io import load_run_config, parse_overrides

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


@pytest.mark.parametrize("override, value", [
    ("logging.progress_bar=off", "off"),  # a string field keeps the YAML 1.1 word
    ("logging.progress_bar=on", "on"),
    ("data.flip=off", False),  # a bool field reads it as YAML does
    ("data.photometric=yes", True),
    ("tags.note=no", "no"),  # dict[str, str] values are strings
    ("train.precision=32", "32"),  # a Literal of strings
    ("train.devices=auto", "auto"),
    ("train.devices=2", 2),
    ("model.encoder.weights=none", "none"),
])
def test_override_values_are_read_against_the_field_type(override, value):
    got = load_run_config(data=BASE, overrides=[override]).model_dump()
    for part in override.split("=")[0].split("."):
        got = got[part]
    assert got == value and type(got) is type(value)


def test_a_word_that_fits_no_field_type_is_quoted_as_written():
    with pytest.raises(ConfigError, match=r"logging\.progress_bar: Input should be 'auto', 'on' or 'off' \(got 'yes'\)"):
        load_run_config(data=BASE, overrides=["logging.progress_bar=yes"])


def test_a_retired_key_is_refused_with_its_reason_but_dropped_from_a_stored_config(tmp_path):
    import yaml

    data = {**BASE, "eval": {"converge_fraction": 0.9}}
    with pytest.raises(ConfigError, match=r"'eval\.converge_fraction' no longer exists: .*criterion.*remove it"):
        load_run_config(data=data)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    assert load_run_config(path, stored=True).eval.converge_target is None  # an earlier run's file still reads


def test_a_dinov2_run_stored_before_feature_norm_reads_as_raw_and_differs_from_the_new_default(tmp_path):
    import yaml

    from encseg.config_io import dump_config
    from encseg.engine.rundir import result_diff

    old = {**BASE, "model": {"encoder": {"name": "dinov2_vitb14", "weights": "none"}}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(old))  # an earlier version's file: no feature_norm key; it tapped raw outputs
    stored = load_run_config(path, stored=True)
    assert stored.model.encoder.feature_norm is False
    new = load_run_config(data=old)  # the same study today: DINOv2's protocol (None: the entry's normed taps)
    assert new.model.encoder.feature_norm is None
    assert "model.encoder.feature_norm" in result_diff(stored, new)  # not reused as a normed run
    # a file this version writes carries the key, so it reads back as written; other encoders are untouched
    path.write_text(dump_config(new))
    assert load_run_config(path, stored=True).model.encoder.feature_norm is None
    path.write_text(yaml.safe_dump({**BASE, "model": {"encoder": {"name": "mae_vitb16", "weights": "none"}}}))
    assert load_run_config(path, stored=True).model.encoder.feature_norm is None
