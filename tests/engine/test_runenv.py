"""env.json: every session that worked on a run, with versions, device, git commit and command line."""

from importlib import metadata
from pathlib import Path

import pytest
import torch

from encseg.atomic import read_json
from encseg.engine import runenv
from encseg.engine.rundir import RunDir
from encseg.engine.runenv import finish_env, write_env


def test_write_env_and_finish(tmp_path: Path):
    rd = RunDir(tmp_path / "run")
    env = write_env(rd, ["encseg", "train", "a b.yaml"], extra={"rank": 0})
    on_disk = read_json(rd.env_path)
    assert on_disk["command"] == "encseg train 'a b.yaml'"
    assert on_disk["versions"]["torch"] == metadata.version("torch")
    for key in ("timm", "transformers", "lightning", "torchmetrics", "numpy", "encseg"):
        assert on_disk["versions"][key], key
    assert on_disk["cuda"]["available"] == torch.cuda.is_available()
    assert on_disk["host"] and on_disk["python"] and on_disk["start_time"] and on_disk["rank"] == 0
    assert on_disk["end_time"] is None and env["start_unix"] == on_disk["start_unix"]
    # this checkout is a git repository that tracks the package
    assert on_disk["git"] is None or len(on_disk["git_commit"]) == 40

    done = finish_env(rd)
    assert done["end_time"] and done["duration_s"] >= 0
    # a resumed run keeps the earlier session
    again = write_env(rd, ["encseg", "train", "resume"])
    assert again["previous_sessions"][0]["command"] == "encseg train 'a b.yaml'"
    assert again["previous_sessions"][0]["end_time"] == done["end_time"]


def test_git_commit_outside_a_checkout_is_none(tmp_path: Path):
    assert runenv.git_commit(tmp_path) is None


def test_git_commit_of_this_checkout():
    src = Path(runenv.__file__).resolve().parents[1]
    info = runenv.git_commit()
    if not (src.parents[1] / ".git").exists():
        pytest.skip("the sources are not a git checkout here")
    assert info is not None and len(info["commit"]) == 40 and isinstance(info["dirty"], bool)
