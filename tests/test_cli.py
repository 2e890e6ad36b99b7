"""The ``encseg`` command line: light commands end to end, and one clear error line (exit 2) for bad input.

Commands run in-process through ``encseg.cli.main``; one subprocess checks the installed console script.
``eval`` and ``predict`` on a trained run are in tests/engine/test_evaluate.py and test_predict.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from encseg.cli import main
from encseg.config_io import load_run_config
from encseg.models.encoders import get_spec, list_encoders

sys.path.insert(0, str(Path(__file__).parent / "engine"))
from _tiny import tiny_config  # noqa: E402


@pytest.fixture
def run_yaml(tmp_path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tmp_path / "data")))
    return path


def test_print_config_round_trips_with_overrides(run_yaml, capsys):
    assert main(["train", str(run_yaml), "train.lr=0.01", "model.head.num_queries=5", "--print-config"]) == 0
    printed = capsys.readouterr().out
    back = load_run_config(data=yaml.safe_load(printed))
    assert back == load_run_config(run_yaml, ["train.lr=0.01", "model.head.num_queries=5"])
    assert back.train.lr == 0.01 and back.model.head.num_queries == 5
    assert not (run_yaml.parent / "runs").exists()  # printing trains nothing


def test_typo_in_an_override_exits_2_naming_the_key(run_yaml, capsys):
    assert main(["train", str(run_yaml), "train.lrr=0.01", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("encseg: error:") and "lrr" in err and "Traceback" not in err


def test_missing_config_file_exits_2_naming_it(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    assert main(["train", str(missing), "--print-config"]) == 2
    assert str(missing) in capsys.readouterr().err


def test_encoders_lists_every_family(capsys):
    assert main(["encoders"]) == 0
    out = capsys.readouterr().out
    names = list_encoders()
    families = {get_spec(n).family for n in names}
    assert {"clip", "dinov2", "mae", "random"} <= families
    for name in names:
        assert name in out
    rows = [line.split() for line in out.splitlines()]
    assert families <= {r[1] for r in rows if len(r) > 1}


def test_data_synth_then_check_passes_and_a_corrupt_mask_is_named(tmp_path, capsys):
    root = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(root), "--classes", "3", "--train", "2", "--val", "2",
                 "--size", "32"]) == 0
    assert main(["data", "check", str(root)]) == 0
    assert "OK" in capsys.readouterr().out

    mask = sorted((root / "annotations" / "val").glob("*.png"))[1]
    labels = np.array(Image.open(mask))
    labels[0, :4] = 7  # not one of the 3 classes, not ignore
    Image.fromarray(labels.astype(np.uint8), mode="L").save(mask)
    assert main(["data", "check", str(root)]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and mask.name in out and "7" in out


def test_inspect_writes_shapes_and_pictures(tmp_path):
    out = tmp_path / "inspect"
    assert main(["inspect", "--encoder", "random_vitb16", "--weights", "none", "--timm-kwargs",
                 "{embed_dim: 64, depth: 2, num_heads: 2, patch_size: 8}", "--size", "64", "--out", str(out)]) == 0
    shapes = json.loads((out / "shapes.json").read_text())
    assert shapes["embed_dim"] == 64 and shapes["patch_size"] == 8 and shapes["depth"] == 2
    assert all(t[-2:] == [8, 8] for t in shapes["taps"])
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert len(pngs) == len(shapes["taps"]) and all(Image.open(out / p).size[0] > 0 for p in pngs)


def test_inspect_with_an_unknown_encoder_or_timm_kwarg_exits_2(tmp_path, capsys):
    assert main(["inspect", "--encoder", "no_such_vit", "--weights", "none", "--out", str(tmp_path)]) == 2
    assert "no_such_vit" in capsys.readouterr().err
    assert main(["inspect", "--encoder", "random_vitb16", "--weights", "none", "--timm-kwargs", "{embed_dimm: 64}",
                 "--out", str(tmp_path)]) == 2
    assert "embed_dimm" in capsys.readouterr().err


@pytest.mark.slow
def test_console_script_reports_errors_with_exit_code_2(tmp_path):
    script = Path(sys.executable).with_name("encseg")
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "encseg.cli"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([*cmd, "eval", str(tmp_path / "no_run"), "--dataset", str(tmp_path / "d.yaml")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("encseg: error:") and "no_run" in proc.stderr


def test_options_and_overrides_in_any_order(run_yaml, tmp_path, capsys):
    argv = ["train", "--runs-root", str(tmp_path / "r"), str(run_yaml), "train.lr=0.01", "--print-config",
            "model.head.num_queries=5"]
    assert main(argv) == 0
    back = load_run_config(data=yaml.safe_load(capsys.readouterr().out))
    assert back.train.lr == 0.01 and back.model.head.num_queries == 5


def test_every_subcommand_help_explains_each_argument_with_an_example(capsys):
    from encseg.cli import _LEAVES, build_parser

    leaves = getattr(build_parser(), _LEAVES)
    assert {" ".join(p) for p in leaves} >= {"train", "eval", "predict", "study run", "study report", "data synth"}
    for path, parser in leaves.items():
        with pytest.raises(SystemExit):
            main([*path, "--help"])
        text = capsys.readouterr().out
        assert f"example:\n  encseg {' '.join(path)}" in text, path
        undocumented = [a.dest for a in parser._actions if not a.help]
        assert not undocumented, (path, undocumented)
