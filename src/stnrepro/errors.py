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
