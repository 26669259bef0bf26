"""Runs in one table cell must be the same experiment up to the seed (docs/table.md).

A cell's mean ± std is over seeds only: runs that also differ in any other run-defining key
(``stnrepro.records.definition``, kept in each record's ``config``) are different
experiments, and averaging them, or dropping one as a "duplicate" of the same seed, would
make the table lie. Such a cell is refused, naming the keys and values; ``--split-by KEY``
(``split``) makes one table per value instead. Records without ``config`` (older ones) can
only be compared on their cell keys, as before; the table says how many there were.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence

from stnrepro.records.schema import RunRecord
from stnrepro.results.model import TableError, plural, show

# The run-defining keys that may differ within a cell: the seed is what is averaged over, and
# data.seed (the data pipeline's seed, ``${seed}`` in the data configs) follows it.
AVERAGED_KEYS = ("seed", "data.seed")
_UNSET = "<unset>"


def _value(record: RunRecord, key: str) -> str:
    assert record.config is not None
    return show(record.config[key]) if key in record.config else _UNSET


def check_cell(name: str, runs: Sequence[RunRecord]) -> int:
    """Refuse the finished ``runs`` of cell ``name`` unless only their seeds differ.

    Returns how many of them have no ``config`` (compared on the cell keys only).
    """
    finished = [r for r in runs if r.finished]
    known = [r for r in finished if r.config is not None]
    keys = sorted({k for r in known for k in r.config or {}} - set(AVERAGED_KEYS))
    differing = []
    for key in keys:
        values = sorted({_value(r, key) for r in known})
        if len(values) > 1:
            differing.append((key, values))
    if differing:
        what = ", ".join(f"{key} ({', '.join(values)})" for key, values in differing[:4])
        more = f" (+{len(differing) - 4} more keys)" if len(differing) > 4 else ""
        split = " ".join(f"--split-by {key}" for key, _ in differing[:4])
        raise TableError(
            f"cell {name}: runs differ in {what}{more}; split the table with {split} or pick runs"
        )
    return len(finished) - len(known)


def no_config_note(n: int) -> str | None:
    """The header note for records without ``config``, or None when every run has one."""
    if not n:
        return None
    return (
        f"{plural(n, 'run')} without a recorded config (older records): compared on the cell "
        "keys only, other settings could differ"
    )


def split(records: Sequence[RunRecord], keys: Sequence[str]) -> list[tuple[str, list[RunRecord]]]:
    """Group ``records`` by their config values of ``keys``: ``[(suffix, records)]``.

    ``suffix`` is ``-key=value`` per key (made safe for a file name), sorted by value; a
    record without ``config`` cannot be placed and is refused, naming it.
    """
    if not keys:
        return [("", list(records))]
    groups: dict[tuple[str, ...], list[RunRecord]] = defaultdict(list)
    for r in records:
        if r.config is None:
            raise TableError(
                f"{r.source}: record has no config (written before records kept it), so "
                f"--split-by {keys[0]} cannot place it; move it elsewhere or drop --split-by"
            )
        groups[tuple(_value(r, k) for k in keys)].append(r)
    for i, key in enumerate(keys):
        if all(values[i] == _UNSET for values in groups):
            raise TableError(f"--split-by {key}: no run has this config key")
    out = []
    named: dict[str, tuple[str, ...]] = {}
    for values in sorted(groups):
        suffix = "".join(f"-{k}={v}" for k, v in zip(keys, values, strict=True))
        safe = re.sub(r"[^A-Za-z0-9_.=+-]+", "_", suffix)
        if safe in named:  # two values, one file name: the second table would replace the first
            raise TableError(
                f"--split-by {', '.join(keys)}: the values {', '.join(named[safe])} and "
                f"{', '.join(values)} both give the file name suffix {safe!r}; split by "
                "another key, or put the runs under separate directories"
            )
        named[safe] = values
        out.append((safe, groups[values]))
    return out
