"""``one_line``: the single helper that turns any exception into its user-facing line."""

from __future__ import annotations

import pytest
from torch.utils.data import DataLoader, Dataset

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


class _Broken(Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int):
        raise DataError("img/0.jpg: cannot read image (truncated)")


def test_one_line_of_an_error_re_raised_from_a_dataloader_worker():
    with pytest.raises(DataError) as info:
        next(iter(DataLoader(_Broken(), num_workers=1)))
    assert "Original Traceback" in str(info.value)
    assert one_line(info.value) == "img/0.jpg: cannot read image (truncated)"
