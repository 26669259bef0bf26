"""The table's machine-readable view: CSV rows of the main table and of the claims.

Raw numbers, one line per table row (or per claim), in the same order as the Markdown; the
columns are listed once, in ``CSV_FIELDS`` and ``CLAIM_FIELDS`` (docs/table.md documents them).
"""

from __future__ import annotations

from collections.abc import Callable

from stnrepro.results import digits_layout
from stnrepro.results.aggregate import attention_lines
from stnrepro.results.digits import DigitTable
from stnrepro.results.environment import describe
from stnrepro.results.model import (
    ATTENTION_METRICS,
    AttentionLine,
    CellStats,
    Claim,
    TableData,
    TableRow,
)

CsvValue = str | int | float | None
_Get = Callable[[TableData, TableRow], CsvValue]


def _stat(get: Callable[[TableRow, CellStats], CsvValue]) -> _Get:
    """A CSV field of the row's stats (empty for prior work, which has none)."""
    return lambda table, row: None if row.stats is None else get(row, row.stats)


# The CSV columns, in order (docs/table.md documents them); floats are written with 4 decimals.
CSV_FIELDS: tuple[tuple[str, _Get], ...] = (
    ("row", lambda t, r: r.label),
    ("group", lambda t, r: r.group),
    ("image_size", lambda t, r: r.image_size),
    ("paper_image_size", lambda t, r: r.paper_image_size),
    ("num_transformers", lambda t, r: r.num_transformers),
    ("paper_top1", lambda t, r: r.paper_value),
    ("ours_mean", _stat(lambda r, s: s.mean)),
    ("ours_std", _stat(lambda r, s: s.std)),
    ("n", _stat(lambda r, s: s.n)),
    ("failed", _stat(lambda r, s: s.failed)),
    ("unfinished", _stat(lambda r, s: s.unfinished)),
    ("duplicates", _stat(lambda r, s: s.duplicates)),
    ("delta", lambda t, r: t.delta(r)),
    # The environments of the row's used runs (" | " between several), and what differs.
    ("environment", _stat(lambda r, s: " | ".join(sorted({describe(x) for x in s.runs})))),
    ("environment_differs", _stat(lambda r, s: "; ".join(r.env_differs))),
    ("ci_lo", _stat(lambda r, s: s.interval[0] if s.interval else None)),
    ("ci_hi", _stat(lambda r, s: s.interval[1] if s.interval else None)),
)
CSV_COLUMNS = tuple(name for name, _ in CSV_FIELDS)
_ATTENTION_PARTS = ("mean", "std", "n")


def attention_columns(table: TableData) -> tuple[str, ...]:
    """The CSV columns appended with attention, for i < the table's max num_transformers."""
    return tuple(
        f"st{i}_{key}_{part}"
        for i in range(table.max_transformers)
        for key, *_ in ATTENTION_METRICS
        for part in _ATTENTION_PARTS
    )


def csv_rows(
    table: TableData | DigitTable, attention: bool | None = None
) -> tuple[tuple[str, ...], list[list[CsvValue]]]:
    """Header and rows of the CSV; ``attention`` (default ``table.attention``) adds st{i}_*.

    The digit table (Table 1) has its own columns (``digits_layout.CSV_FIELDS``)."""
    if isinstance(table, DigitTable):
        return digits_layout.csv_rows(table)
    with_attention = table.attention if attention is None else attention
    by_row: dict[int, dict[int, AttentionLine]] = {}
    if with_attention:
        for line in attention_lines(table):
            if line.transformer is not None:
                by_row.setdefault(id(line.row), {})[line.transformer] = line
    header = CSV_COLUMNS + (attention_columns(table) if with_attention else ())
    rows: list[list[CsvValue]] = []
    for row in table.rows:
        values = [get(table, row) for _, get in CSV_FIELDS]
        if with_attention:
            lines = by_row.get(id(row), {})
            for i in range(table.max_transformers):
                att = lines.get(i)
                for stats in att.stats if att else (None,) * len(ATTENTION_METRICS):
                    values += (None,) * 3 if stats is None else (stats.mean, stats.std, stats.n)
        rows.append(values)
    return header, rows


# The claims CSV (``<name>_claims.csv``): one line per comparison "model_b over model_a",
# differences (model_b - model_a) in pp, floats with 4 decimals like the table CSV.
CLAIM_FIELDS: tuple[tuple[str, Callable[[Claim], CsvValue]], ...] = (
    ("comparison", lambda c: c.label),
    ("model_a", lambda c: c.a.label),
    ("model_b", lambda c: c.b.label),
    ("paper_delta", lambda c: c.paper_delta),
    ("paper_resolution", lambda c: c.paper_resolution),
    ("delta", lambda c: c.delta),
    ("ci_lo", lambda c: c.lo),
    ("ci_hi", lambda c: c.hi),
    ("verdict", lambda c: c.verdict),
    ("resolution", lambda c: c.resolution),
    ("missing_predictions", lambda c: " ".join(c.missing) or None),
)
CLAIM_COLUMNS = tuple(name for name, _ in CLAIM_FIELDS)


def claims_csv_rows(
    table: TableData | DigitTable,
) -> tuple[tuple[str, ...], list[list[CsvValue]]]:
    """Header and rows of the claims CSV (no rows when the table has no claims); the digit
    table's claims are in error (``digits_layout.CLAIM_FIELDS``)."""
    if isinstance(table, DigitTable):
        return digits_layout.claims_csv_rows(table)
    return CLAIM_COLUMNS, [[get(c) for _, get in CLAIM_FIELDS] for c in table.claims or ()]
