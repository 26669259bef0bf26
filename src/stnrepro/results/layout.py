"""What the table shows: ``TableData`` laid out as sections of display rows, and CSV rows.

A ``Section`` is a title, notes (the facts a reader needs before trusting the numbers),
column specs and row groups of cell values; the renderers (``stnrepro.results.render``) print
every section with the same code, so a new column is one ``Column`` in its section's list
and a new section is one more function in ``sections``. Cell values stay structured
(``MeanStd``, ``Signed``, ``None`` for "no value") until rendering, because each format
writes ± and the dash differently. The CSV is the machine-readable view: raw numbers, one
line per table row, its columns listed once in ``CSV_FIELDS``.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from stnrepro.results.aggregate import attention_lines, attention_prefix
from stnrepro.results.agreement import no_config_note
from stnrepro.results.environment import describe
from stnrepro.results.model import (
    ATTENTION_METRICS,
    GROUP_EXTRA,
    AttentionLine,
    AttentionStats,
    TableData,
    TableRow,
    plural,
    show,
)

# Marks a row whose runs come from different environments (a header note says how).
DIFFERS_MARK = "†"
# The dataset the paper's numbers are about; other datasets get a warning line.
PAPER_DATASET = "cub"
EXTRA_TITLE = "Extra cells (not in the paper)"
# Caption row shown above a row group (groups without one follow on directly).
GROUP_CAPTIONS = {GROUP_EXTRA: EXTRA_TITLE}
_STAGE_WORDS = {"test": "test set", "val": "validation set", "train": "training set"}


@dataclass(frozen=True)
class MeanStd:
    """``mean ± std`` with ``digits`` decimals; std omitted when None, ``(n=k)`` when set."""

    mean: float | None
    std: float | None
    digits: int
    n: int | None = None


@dataclass(frozen=True)
class Signed:
    """A difference shown with its sign, rounded to 1 decimal (e.g. ``+0.2``)."""

    value: float


# A display cell: text, a count, a statistic, a signed difference, or None (no value: a dash).
Value = str | int | MeanStd | Signed | None


@dataclass(frozen=True)
class Column:
    """One column: its header, the raw LaTeX header and a short terminal header.

    ``latex`` defaults to ``title`` escaped; ``short`` (to fit 80 columns) to ``title``.
    """

    title: str
    latex: str | None = None
    short: str | None = None


@dataclass(frozen=True)
class RowGroup:
    """Consecutive rows of one kind, with an optional caption row above them."""

    caption: str | None
    rows: tuple[tuple[Value, ...], ...]


@dataclass(frozen=True)
class Section:
    """A titled table with notes; ``empty`` is said instead when there are no rows."""

    title: str
    notes: tuple[str, ...]
    columns: tuple[Column, ...]
    groups: tuple[RowGroup, ...]
    empty: str = ""


def _grouped(items: Sequence[tuple[TableRow, tuple[Value, ...]]]) -> tuple[RowGroup, ...]:
    """Split display rows into groups where the underlying table row's group changes."""
    return tuple(
        RowGroup(GROUP_CAPTIONS.get(group), tuple(cells for _, cells in members))
        for group, members in itertools.groupby(items, key=lambda item: item[0].group)
    )


# --------------------------------------------------------------------------- main table


def header_lines(table: TableData) -> list[str]:
    """The facts a reader needs before trusting the numbers (plain text, no markup)."""
    pretrained = "yes" if table.pretrained else "no"
    lines = [f"Dataset: {table.dataset}; backbone: {table.backbone}; pretrained: {pretrained}"]
    if table.dataset != PAPER_DATASET:
        lines.append(
            f"Note: the paper's numbers are for {PAPER_DATASET}; these runs use "
            f"{table.dataset}, so the comparison is not a reproduction check"
        )
    if table.has_st:
        crop = show(table.crop_size) + (" px" if table.crop_size is not None else "")
        lines.append(f"ST runs: crop {crop}, transform {show(table.transform)}")
    if table.mapped:
        ours = "/".join(str(s) for s, _ in table.size_map)
        paper = "/".join(str(p) for _, p in table.size_map)
        verb = "stands" if len(table.size_map) == 1 else "stand"
        lines.append(f"Input sizes: input {ours} px {verb} in for the paper's {paper} px")
    else:
        lines.append("Input sizes: as in the paper")
    unit = " in %" if table.percent else ""
    metric = (
        f"Metric: {table.metric}{unit}, mean ± sample std (n-1) over seeds, std omitted when n = 1"
    )
    if table.compare_to_paper:
        metric += "; Δ = ours - paper, in percentage points"
    else:
        metric += "; the paper reports top-1 accuracy only, so there is no Δ"
    lines.append(metric)
    lines.append(
        f"Runs: {table.n_used} used; excluded: {table.n_failed} failed, "
        f"{table.n_unfinished} unfinished; "
        f"{plural(table.n_duplicates, 'duplicate')} dropped "
        "(older finished reruns of a seed)"
    )
    lines.append("Column 'failed' counts a row's failed and unfinished runs (excluded)")
    lines += table.environments
    if (note := no_config_note(table.n_no_config)) is not None:
        lines.append(note)
    for row in table.rows:
        if row.env_differs:
            lines.append(
                f"{DIFFERS_MARK} {row.label}: its runs come from different environments, "
                f"they differ in {', '.join(row.env_differs)}"
            )
    return lines


def row_label(row: TableRow) -> str:
    """The row's label, marked when its runs come from different environments."""
    return f"{row.label} {DIFFERS_MARK}" if row.env_differs else row.label


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def tex_escape(text: str) -> str:
    """Plain text made safe for LaTeX (labels, metric names)."""
    return re.sub(r"[\\&%$#_{}~^]", lambda m: _LATEX_SPECIAL[m.group()], text)


def main_columns(table: TableData) -> tuple[Column, ...]:
    unit = " (%)" if table.percent else ""
    short_unit = " %" if table.percent else ""
    return (
        Column("Method"),
        Column("Paper top-1 (%)", short="Paper %"),
        Column(
            f"Ours {table.metric}{unit}",
            latex=rf"Ours \texttt{{{tex_escape(table.metric)}}}{tex_escape(unit)}",
            short=f"Ours{short_unit}",
        ),
        Column("Δ (pp)", latex=r"$\Delta$ (pp)", short="Δ pp"),
        Column("n", latex="$n$"),
        Column("failed"),
    )


def main_cells(table: TableData, row: TableRow) -> tuple[Value, ...]:
    """One row's cells, in ``main_columns`` order."""
    s = row.stats
    paper = None if row.paper_value is None else MeanStd(row.paper_value, None, 1)
    if s is None:  # prior work: the paper's number only
        return (row.label, paper, None, None, None, None)
    delta = table.delta(row)
    return (
        row_label(row),
        paper,
        MeanStd(s.mean, s.std, table.digits),
        None if delta is None else Signed(delta),
        s.n,
        s.excluded,
    )


def main_section(table: TableData) -> Section:
    return Section(
        title=f"Comparison with {table.paper_source}",
        notes=tuple(header_lines(table)),
        columns=main_columns(table),
        groups=_grouped([(row, main_cells(table, row)) for row in table.rows]),
    )


# --------------------------------------------------------------------------- attention


def attention_title(table: TableData) -> str:
    """``Where the transformers look (test set)``; the stage follows the table metric."""
    stage = attention_prefix(table.metric).rstrip("/")
    where = _STAGE_WORDS.get(stage, f"{stage} metrics" if stage else "")
    return "Where the transformers look" + (f" ({where})" if where else "")


def attention_header_lines(table: TableData) -> list[str]:
    """What the attention numbers are and how they were counted (plain text, no markup)."""
    p = attention_prefix(table.metric)
    return [
        f"Per transformer i of each ST row, from the runs the row's accuracy uses: "
        f"{p}st{{i}}/iou (mean IoU of its crop with the bird box), "
        f"{p}st{{i}}/hit_center (bird-box centre inside the crop), "
        f"{p}st{{i}}/hit_head and hit_body (visible head / body part points inside the crop), "
        "in %",
        "Mean ± sample std (n-1) over runs, std omitted for a single value; only non-null "
        "values count (null = nothing could be counted; missing metrics are skipped too): "
        "a cell from fewer runs than the row's n says (n=k), — when there is none",
        "CNN rows have no transformers and are not listed",
    ]


def _attention_value(stats: AttentionStats) -> MeanStd:
    n = None if stats.n == stats.n_runs else stats.n
    return MeanStd(stats.mean, stats.std, 1, n)


def attention_cells(line: AttentionLine) -> tuple[Value, ...]:
    """One attention line's cells: method, transformer, the ATTENTION_METRICS, n."""
    if line.transformer is None:  # an ST row without used runs
        return (line.row.label, None, *[None] * len(ATTENTION_METRICS), line.n_runs)
    return (
        line.row.label,
        f"st{line.transformer}",
        *(_attention_value(s) for s in line.stats),
        line.n_runs,
    )


def attention_section(table: TableData) -> Section:
    columns = (
        Column("Method"),
        Column("ST"),
        *(Column(title, short=short) for _, title, short in ATTENTION_METRICS),
        Column("n", latex="$n$"),
    )
    lines = attention_lines(table)
    return Section(
        title=attention_title(table),
        notes=tuple(attention_header_lines(table)),
        columns=columns,
        groups=_grouped([(line.row, attention_cells(line)) for line in lines]),
        empty="No ST rows in this table.",
    )


def sections(table: TableData, attention: bool | None = None) -> list[Section]:
    """The sections every human-readable format shows, in order.

    ``attention`` (default: ``table.attention``) adds "Where the transformers look".
    """
    out = [main_section(table)]
    if table.attention if attention is None else attention:
        out.append(attention_section(table))
    return out


# --------------------------------------------------------------------------- CSV

CsvValue = str | int | float | None
_Get = Callable[[TableData, TableRow], CsvValue]


def _stat(get: Callable[[TableRow], CsvValue]) -> _Get:
    """A CSV field of the row's stats (empty for prior work, which has none)."""
    return lambda table, row: None if row.stats is None else get(row)


# The CSV columns, in order (README documents them); floats are written with 4 decimals.
CSV_FIELDS: tuple[tuple[str, _Get], ...] = (
    ("row", lambda t, r: r.label),
    ("group", lambda t, r: r.group),
    ("image_size", lambda t, r: r.image_size),
    ("paper_image_size", lambda t, r: r.paper_image_size),
    ("num_transformers", lambda t, r: r.num_transformers),
    ("paper_top1", lambda t, r: r.paper_value),
    ("ours_mean", _stat(lambda r: r.stats.mean)),
    ("ours_std", _stat(lambda r: r.stats.std)),
    ("n", _stat(lambda r: r.stats.n)),
    ("failed", _stat(lambda r: r.stats.failed)),
    ("unfinished", _stat(lambda r: r.stats.unfinished)),
    ("duplicates", _stat(lambda r: r.stats.duplicates)),
    ("delta", lambda t, r: t.delta(r)),
    # The environments of the row's used runs (" | " between several), and what differs.
    ("environment", _stat(lambda r: " | ".join(sorted({describe(x) for x in r.stats.runs})))),
    ("environment_differs", _stat(lambda r: "; ".join(r.env_differs))),
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
    table: TableData, attention: bool | None = None
) -> tuple[tuple[str, ...], list[list[CsvValue]]]:
    """Header and rows of the CSV; ``attention`` (default ``table.attention``) adds st{i}_*."""
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
                line = lines.get(i)
                for stats in line.stats if line else (None,) * len(ATTENTION_METRICS):
                    values += (None,) * 3 if stats is None else (stats.mean, stats.std, stats.n)
        rows.append(values)
    return header, rows
