"""``one_line``: the single helper that turns any exception into its user-facing line."""

from __future__ import annotations

import pytest
from torch._utils import ExceptionWrapper

from stnrepro.errors import DataError, one_line


@pytest.mark.parametrize(
    "exc,expected",
    [
        (DataError("a.jpg: cannot read image (truncated)"), "a.jpg: cannot read image (truncated)"),
        (RuntimeError("first line\n  detail that follows\n"), "first line"),
        (ValueError("  spaced\t out  "), "spaced out"),
        (KeyError(), "KeyError"),
        (OSError(), "OSError"),
    ],
)
def test_one_line_is_the_first_line_or_the_class_name(exc, expected):
    assert one_line(exc) == expected


def test_one_line_of_an_error_re_raised_from_a_dataloader_worker():
    """The exception as a DataLoader's main process re-raises a worker's: torch's own
    ExceptionWrapper, as its worker loop builds it. (A real worker's failure costs torch a
    5 s join timeout when the loader is collected; the CLI test of a truncated image has one.)"""
    try:
        raise DataError("img/0.jpg: cannot read image (truncated)")
    except DataError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(DataError) as info:
        wrapped.reraise()
    assert "Original Traceback" in str(info.value)
    assert one_line(info.value) == "img/0.jpg: cannot read image (truncated)"
