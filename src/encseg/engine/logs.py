"""Where a run's output goes: everything into ``<run>/train.log``, only progress lines to the console.

- ``run_log(path)`` is entered by ``train()`` for the whole run: the root logger gains a file handler on
  ``train.log`` (appended, so a resumed run keeps the log of its earlier attempts), Lightning's loggers are
  sent there instead of to their own console handler (the "GPU available: False" banner), and Python
  warnings (third-party deprecation notices) are logged there instead of printed.
- Progress (one record every ``log_every`` steps, one per validation) is logged on ``PROGRESS``; the record
  carries its numbers as attributes (``step``, ``total``, ``loss``, ``eta_s``...), so a console can draw a
  bar from them while the file keeps the text line. Whoever owns the console attaches a handler to it:
  ``console_handler()`` for ``encseg train``, the study's live view for ``encseg study run``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

PROGRESS = "encseg.progress"
LOG_NAME = "train.log"
# loggers that Lightning gives their own stderr handler when it is imported before logging is configured
_FRAMEWORK_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextlib.contextmanager
def run_log(path: Path) -> Iterator[logging.Handler]:
    """Append every log record, framework banner and warning raised inside the block to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter(_FORMAT))
    root = logging.getLogger()
    saved_level = root.level
    saved = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).propagate)
             for name in _FRAMEWORK_LOGGERS}
    for name in _FRAMEWORK_LOGGERS:  # their records now travel to the root logger, i.e. to train.log
        lg = logging.getLogger(name)
        for h in lg.handlers[:]:
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                lg.removeHandler(h)
        lg.propagate = True
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    encseg = logging.getLogger("encseg")
    saved_encseg = encseg.level
    if encseg.level == logging.NOTSET:
        encseg.setLevel(logging.INFO)
    logging.captureWarnings(True)
    try:
        yield handler
    finally:
        logging.captureWarnings(False)
        root.removeHandler(handler)
        handler.close()
        root.setLevel(saved_level)
        encseg.setLevel(saved_encseg)
        for name, (handlers, propagate) in saved.items():
            lg = logging.getLogger(name)
            lg.handlers[:] = handlers
            lg.propagate = propagate


class _LinesToLog(io.TextIOBase):
    """A text stream whose complete lines become INFO records of ``logger`` (stray prints of a run)."""

    def __init__(self, logger: logging.Logger):
        self.logger = logger
        self._buf = ""
        self._busy = False

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        if self._busy:  # a handler that itself prints must not loop back here
            return len(text)
        self._buf += text.replace("\r", "\n")
        *lines, self._buf = self._buf.split("\n")
        self._busy = True
        try:
            for line in lines:
                if line.strip():
                    self.logger.info(line)
        finally:
            self._busy = False
        return len(text)

    def flush(self) -> None:
        pass


@contextlib.contextmanager
def output_to_log(name: str = "encseg.output") -> Iterator[None]:
    """Inside the block, ``print`` to stdout/stderr becomes log records (so they land in ``train.log``)."""
    stream = _LinesToLog(logging.getLogger(name))
    with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
        yield


def console_handler(stream=None) -> logging.Handler:
    """Plain console lines for ``encseg train``: the run's own messages and progress, nothing else."""
    h = logging.StreamHandler(stream or sys.stderr)
    h.setFormatter(logging.Formatter("%(message)s"))
    h.addFilter(lambda r: r.name == "encseg" or r.name.startswith("encseg."))
    h.addFilter(lambda r: r.name != "encseg.output")
    h.addFilter(lambda r: getattr(r, "console", True))  # progress records that a tqdm bar already shows
    return h
