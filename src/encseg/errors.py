"""The base of every error that describes the user's input (a config key, a file, a name) rather than a bug.

``encseg`` on the command line prints these as one line and exits with code 2; any other exception keeps its
traceback, because it is a defect to report, not a mistake to correct.
"""

from __future__ import annotations


class EncsegError(Exception):
    """A problem with what the user gave encseg; the message names the file, key or value and what to do."""


class InputError(EncsegError, ValueError):
    """A value the user gave (command-line option, file content) that encseg cannot use."""


class MissingFileError(EncsegError, FileNotFoundError):
    """A file or folder the user named, or that a run needs, does not exist; the message names it."""
