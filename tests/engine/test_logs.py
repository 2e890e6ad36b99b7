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
