"""Errors that mean "your input is wrong", reported to the user as one line, never a traceback."""

from __future__ import annotations


class StnreproError(ValueError):
    """Base class: the message names the key/file/value and what was expected."""


class ConfigError(StnreproError):
    """A config value is invalid (message: ``key=value: expected ...``)."""


class DataError(StnreproError):
    """A dataset file or image is missing or malformed (``path:line: ... expected ...``)."""


class WeightsUnavailableError(StnreproError):
    """Pretrained weights were requested but cannot be loaded."""


def one_line(exc: BaseException) -> str:
    """The user-facing line of an error, also when a DataLoader worker re-raised it.

    PyTorch re-raises worker exceptions with the worker's traceback in the message; the
    original ``module.Class: message`` line is its last line.
    """
    text = str(exc).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(text.split())
