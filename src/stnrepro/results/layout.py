"""What the table shows: ``TableData`` laid out as sections of display rows, and CSV rows.

A ``Section`` is a title, notes (the facts a reader needs before trusting the numbers),
column specs and row groups of cell values; the renderers (``stnrepro.results.render``) print
every section with the same code, so a new column is one ``Column`` in its section's list
and a new section is one more function in ``sections``. Cell values stay structured
(``MeanStd``, ``Signed``, ``Range``, ``None`` for "no value") until rendering, because each
format writes ± and the dash differently. The CSV view is ``stnrepro.results.csv_rows``.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from stnrepro.results.aggregate import attention_lines, attention_prefix
from stnrepro.results.agreement import no_config_note
from stnrepro.results.model import (
    ATTENTION_METRICS,
    GROUP_EXTRA,
    GROUP_PAPER,
    AttentionLine,
    AttentionStats,
    Claim,
    TableData,
    TableRow,
    plural,
    show,
)
from stnrepro.results.stats import CUB_TEST_IMAGES, paper_resolution_pp

if TYPE_CHECKING:
    from stnrepro.results.digits import DigitClaim

# Marks a row whose runs come from different environments (a header note says how).
DIFFERS_MARK = "†"
# The dataset the paper's numbers are about; other datasets get a warning line.
PAPER_DATASET = "cub"
EXTRA_TITLE = "Extra cells (not in the paper)"
# Caption row shown above a row group (groups without one follow on directly).
GROUP_CAPTIONS = {GROUP_EXTRA: EXTRA_TITLE}
# The terminal's captions, short so that its tables fit 80 columns.
SHORT_CAPTIONS = {EXTRA_TITLE: "Extra cells"}
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


@dataclass(frozen=True)
class Range:
    """An interval ``[lo, hi]`` with ``digits`` decimals; ``signed`` for differences."""

    lo: float
    hi: float
    digits: int
    signed: bool = False


# A display cell: text, a count, a statistic, a signed difference, an interval, or None
# (no value: a dash).
Value = str | int | MeanStd | Signed | Range | None


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
    if table.intervals:
        lines += interval_lines(table)
    return lines


def missing_predictions(table: TableData) -> list[str]:
    """Names of used runs without predictions, in table order."""
    return [name for row in table.rows if row.stats is not None for name in row.stats.missing]


def interval_lines(table: TableData) -> list[str]:
    """How the 95% column is made, which runs it leaves out, what one paper run resolves."""
    lines = [
        "95% CI: percentile bootstrap over seeds and test images together, from each run's "
        "per-image predictions (predictions.csv); — where no run of the row has them"
    ]
    missing = missing_predictions(table)
    if missing:
        lines.append(
            f"No predictions.csv its record can vouch for (none, or a record without its "
            "sha256), so in mean ± std but not in the 95% CI or the claims: "
            f"{', '.join(missing)}"
        )
    if table.compare_to_paper:
        values = [r.paper_value for r in table.rows if r.group == GROUP_PAPER and r.paper_value]
        if values:
            lo = min(paper_resolution_pp(v) for v in values)
            hi = max(paper_resolution_pp(v) for v in values)
            lines.append(
                f"Paper top-1: one run each on {CUB_TEST_IMAGES:,} test images, which resolves "
                f"about ±{lo:.1f}–{hi:.1f} pp at 95% (binomial), before any seed-to-seed spread"
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


CI_COLUMN = Column("95% CI (%)", short="95% CI")


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
        *((CI_COLUMN,) if table.intervals else ()),
        Column("Δ (pp)", latex=r"$\Delta$ (pp)", short="Δ pp"),
        Column("n", latex="$n$"),
        Column("failed"),
    )


def main_cells(table: TableData, row: TableRow) -> tuple[Value, ...]:
    """One row's cells, in ``main_columns`` order."""
    s = row.stats
    paper = None if row.paper_value is None else MeanStd(row.paper_value, None, 1)
    ci: tuple[Value, ...] = ()
    if table.intervals:
        interval = None if s is None else s.interval
        ci = (None if interval is None else Range(*interval, table.digits),)
    if s is None:  # prior work: the paper's number only
        return (row.label, paper, None, *ci, None, None, None)
    delta = table.delta(row)
    return (
        row_label(row),
        paper,
        MeanStd(s.mean, s.std, table.digits),
        *ci,
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


# --------------------------------------------------------------------------- claims

CLAIMS_TITLE = "Claims: differences between cells, paired on the same test images"


def claims_notes(table: TableData) -> list[str]:
    """How to read the claims (plain text, no markup)."""
    lines = [
        "X over Y: X - Y in percentage points; ours from the runs' per-image predictions, "
        "paired on the same test images (bootstrap over images and seeds, 95%)",
        "Verdict on 'X beats Y': confirmed = the whole interval is above 0, contradicted = "
        "below 0, inconclusive = it contains 0",
        "Resolvable: half the interval's width, the smallest difference these runs can tell "
        "from 0; with no predictions on a side there is only the difference of the means",
    ]
    if table.compare_to_paper:
        lines.append(
            "Paper ±: what one run on the paper's test set resolves at 95% (binomial, the "
            "larger of the two numbers'); a paper Δ smaller than it is within test-set noise"
        )
    missing = list(dict.fromkeys(name for c in table.claims or () for name in c.missing))
    if missing:
        lines.append(
            f"Left out of the paired statistics (no predictions.csv): {', '.join(missing)}"
        )
    return lines


def claims_columns() -> tuple[Column, ...]:
    return (
        Column("Comparison"),
        Column("Paper Δ (pp)", latex=r"Paper $\Delta$ (pp)", short="Paper"),
        Column("Paper ± (pp)", latex=r"Paper $\pm$ (pp)", short="±"),
        Column("Ours Δ (pp)", latex=r"Ours $\Delta$ (pp)", short="Ours"),
        Column("95% CI (pp)", short="95% CI"),
        Column("Verdict"),
        Column("Resolvable (pp)", short="Res."),
    )


def claim_cells(claim: Claim | DigitClaim) -> tuple[Value, ...]:
    """A claims-table line: label, paper Δ and resolution, ours Δ, interval, verdict,
    resolution (the bird and the digit tables alike)."""

    def number(value: float | None) -> MeanStd | None:
        return None if value is None else MeanStd(value, None, 1)

    def signed(value: float | None) -> Signed | None:
        return None if value is None else Signed(value)

    ci = None if claim.lo is None or claim.hi is None else Range(claim.lo, claim.hi, 1, True)
    return (
        claim.label,
        signed(claim.paper_delta),
        number(claim.paper_resolution),
        signed(claim.delta),
        ci,
        claim.verdict,
        number(claim.resolution),
    )


CLAIMS_EXTRA_TITLE = "With extra cells"  # short: the terminal's claims fit 80 columns


def claims_section(table: TableData) -> Section:
    claims = table.claims or ()
    groups = tuple(
        RowGroup(CLAIMS_EXTRA_TITLE if group.caption else None, group.rows)
        for group in _grouped([(c.b, claim_cells(c)) for c in claims])
    )
    return Section(
        title=CLAIMS_TITLE,
        notes=tuple(claims_notes(table)),
        columns=claims_columns(),
        groups=groups,
        empty="No pair of cells to compare.",
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

    The claims follow the main table when the table has them (metric ``test/acc``);
    ``attention`` (default: ``table.attention``) adds "Where the transformers look".
    """
    out = [main_section(table)]
    if table.claims is not None:
        out.append(claims_section(table))
    if table.attention if attention is None else attention:
        out.append(attention_section(table))
    return out
