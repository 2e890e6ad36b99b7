"""A run's log: framework banners, warnings and prints go to train.log; the console gets progress only."""

from __future__ import annotations

import io
import logging
import warnings

from encseg.engine.logs import PROGRESS, console_handler, output_to_log, run_log


def test_banners_warnings_and_prints_go_to_the_file_and_progress_also_to_the_console(tmp_path):
    console = io.StringIO()
    lightning = logging.getLogger("lightning.pytorch")
    own = logging.StreamHandler(console)  # what Lightning installs at import when logging is unconfigured
    lightning.addHandler(own)
    root = logging.getLogger()
    shown = console_handler(console)
    root.addHandler(shown)
    try:
        with run_log(tmp_path / "train.log"):
            lightning.info("GPU available: False, used: False")
            warnings.warn("LeafSpec is deprecated", FutureWarning, stacklevel=1)
            with output_to_log():
                print("a stray print from a library")
            logging.getLogger(PROGRESS).info("step 5/10  loss 1.0")
            logging.getLogger(PROGRESS).info("bar shown instead", extra={"console": False})
        assert own in lightning.handlers  # restored after the run
    finally:
        lightning.removeHandler(own)
        root.removeHandler(shown)
    log = (tmp_path / "train.log").read_text()
    for text in ("GPU available", "LeafSpec is deprecated", "a stray print", "step 5/10", "bar shown instead"):
        assert text in log, text
    assert console.getvalue() == "step 5/10  loss 1.0\n"


class _Trainer:  # the attributes PlainProgress reads
    is_global_zero = True
    sanity_checking = False
    optimizers = [type("Opt", (), {"param_groups": [{"lr": 1e-3}]})()]
    global_step = 0


def _progress_lines(progress, steps, caplog):
    trainer = _Trainer()
    with caplog.at_level(logging.INFO, logger=PROGRESS):
        for step in steps:
            trainer.global_step = step
            progress.on_train_batch_end(trainer, None, {"terms": {"loss": 1.0}}, None, 0)
    return [r.getMessage() for r in caplog.records if r.name == PROGRESS]


def test_a_converge_run_shows_its_cap_as_a_bound_until_the_criterion_fires(caplog):
    from encseg.engine.callbacks import PlainProgress
    from encseg.engine.module import ValidationResult

    fired = {"end": None}
    progress = PlainProgress(25, 1500, ValidationResult(), stop_step=lambda: fired["end"])
    before = _progress_lines(progress, [25], caplog)
    fired["end"] = 650  # plateau declared: the anneal ends at step 650
    after = _progress_lines(progress, [600], caplog)[-1]
    assert "step 25/<=1500" in before[0] and "eta <=" in before[0]
    assert "step 600/650" in after and "<=" not in after
    trainer = _Trainer()
    trainer.global_step = 625
    with caplog.at_level(logging.INFO, logger=PROGRESS):
        progress.on_validation_end(trainer, None)
    val = [r for r in caplog.records if r.name == PROGRESS][-1]
    assert val.kind == "val" and val.total == 650  # the console's bar keeps the step lines' total
    fixed = _progress_lines(PlainProgress(25, 1500, ValidationResult()), [25], caplog)[-1]
    assert "step 25/1500" in fixed and "<=" not in fixed
