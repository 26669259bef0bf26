"""Errors that mean "your input is wrong", reported to the user as one line, never a traceback."""

from __future__ import annotations

import errno

#: Errors of the storage rather than of the input (full, over quota, read-only, failing): a
#: command they stop has failed (exit status 1), it was not given bad input (2).
STORAGE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})


class StnreproError(ValueError):
    """Base class: the message names the key/file/value and what was expected."""


class ConfigError(StnreproError):
    """A config value is invalid (message: ``key=value: expected ...``)."""


class DataError(StnreproError):
    """A dataset file or image is missing or malformed (``path:line: ... expected ...``)."""


class WeightsUnavailableError(StnreproError):
    """Pretrained weights were requested but cannot be loaded."""


class ServiceError(StnreproError):
    """A service the run needs (W&B online) cannot be reached: a failure (exit status 1),
    not bad input; the message says how to go on without it."""


def exit_status(exc: BaseException) -> int:
    """The status a command ends with for ``exc``: 1 for a failure (a service that cannot be
    reached, the storage), 2 for bad input (every other error of ours, other OS errors)."""
    if isinstance(exc, ServiceError):
        return 1
    if isinstance(exc, OSError) and exc.errno in STORAGE_ERRORS:
        return 1
    return 2


def one_line(exc: BaseException) -> str:
    """The user-facing line of an error: the first line of its message, whitespace collapsed.

    The one helper for "say what went wrong in one line" (CLI errors, run records, the reason
    in parentheses of a wrapped error). An exception without a message gives its class name.
    PyTorch re-raises DataLoader worker exceptions with the worker's traceback in the message;
    there the original ``module.Class: message`` line is the last line, and its message is
    returned.
    """
    text = str(exc).strip()
    lines = text.splitlines()
    if "Original Traceback" in text:
        last = lines[-1]
        lines = [last.split(": ", 1)[1] if ": " in last else last]
    return " ".join(lines[0].split()) if lines else type(exc).__name__
