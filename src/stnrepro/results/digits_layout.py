"""What the digit table (Table 1) shows: ``DigitTable`` as sections and as CSV rows.

The same ``Section``/``Column``/value types as the bird table (``stnrepro.results.layout``),
so Markdown, LaTeX and the terminal come from the same renderers. Rows are models, columns
distortions; each cell is our test error (%) mean ± std with its n, and on MNIST the paper's
number stands in the column beside it. Every difference is in ERROR: lower is better.
"""

from __future__ import annotations

from collections.abc import Callable

from stnrepro.results.agreement import no_config_note
from stnrepro.results.digits import (
    MNIST_TEST_IMAGES,
    PAPER_DATASET,
    DigitCell,
    DigitClaim,
    DigitTable,
)
from stnrepro.results.environment import describe
from stnrepro.results.layout import (
    DIFFERS_MARK,
    Column,
    MeanStd,
    Range,
    RowGroup,
    Section,
    Value,
    claim_cells,
    tex_escape,
)
from stnrepro.results.model import plural

CsvValue = str | int | float | None
# The convention every difference follows; said in the notes and in each CSV line.
ERROR_CONVENTION = "error, lower is better"
DELTA_CONVENTION = f"delta = error(model_b) - error(model_a) in pp; {ERROR_CONVENTION}"


def quantity(table: DigitTable) -> str:
    """What a cell's number is: ``test error % (100 - test/acc %), lower is better``."""
    if table.error:
        return f"test error % (100 - {table.metric} %), lower is better"
    return f"{table.metric} as recorded"


def _cell_label(cell: DigitCell) -> str:
    return f"{cell.model} / {cell.distortion}"


def header_lines(table: DigitTable) -> list[str]:
    """The facts a reader needs before trusting the numbers (plain text, no markup)."""
    lines = [f"Dataset: {table.dataset}; backbones: {table.backbone}"]
    if table.dataset != PAPER_DATASET:
        lines.append(
            f"Note: the paper has no {table.dataset} numbers (its Table 1 is on "
            f"{PAPER_DATASET}), so no paper column is shown and nothing is compared with it"
        )
    elif not table.compare_to_paper:
        lines.append(
            f"Note: the paper reports top-1 test error only, so {table.metric} has no paper column"
        )
    what = (
        f"Test error in % = 100 - {table.metric} in %; {ERROR_CONVENTION}"
        if table.error
        else f"Metric: {table.metric} as recorded"
    )
    lines.append(f"{what}; mean ± sample std (n-1) over seeds, std omitted when n = 1, (n=k) seeds")
    if table.compare_to_paper:
        lines.append(
            "Paper: the paper's error (%) on distorted MNIST, one number per cell; — where "
            "its Table 1 has no such cell"
        )
        in_paper = [c for c in table.cells if c.paper_value is not None]
        models = [m for m in table.models if all(c.model != m for c in in_paper)]
        columns = [d for d in table.distortions if all(c.distortion != d for c in in_paper)]
        if models or columns:
            absent = [f"models {', '.join(models)}"] if models else []
            absent += [f"distortions {', '.join(columns)}"] if columns else []
            lines.append(f"Not in the paper's Table 1: {'; '.join(absent)}")
    lines.append(
        f"Runs: {table.n_used} used; excluded: {table.n_failed} failed, "
        f"{table.n_unfinished} unfinished; "
        f"{plural(table.n_duplicates, 'duplicate')} dropped (older finished reruns of a seed)"
    )
    excluded = [
        f"{_cell_label(c)}: {c.failed} failed, {c.unfinished} unfinished"
        for c in table.cells
        if c.excluded
    ]
    if excluded:
        lines.append(f"Excluded runs by cell: {'; '.join(excluded)}")
    lines += table.environments
    if (note := no_config_note(table.n_no_config)) is not None:
        lines.append(note)
    for c in table.cells:
        if c.env_differs:
            lines.append(
                f"{DIFFERS_MARK} {_cell_label(c)}: its runs come from different environments, "
                f"they differ in {', '.join(c.env_differs)}"
            )
    missing = [name for c in table.cells for name in c.missing]
    if table.intervals and missing:
        lines.append(
            "No predictions.csv its record can vouch for, so in mean ± std but not in the "
            f"95% CI or the claims: {', '.join(missing)}"
        )
    return lines


def _ours(table: DigitTable, cell: DigitCell | None) -> Value:
    if cell is None or cell.mean is None:
        return None
    return MeanStd(cell.mean, cell.std, table.digits, cell.n)


def _row_label(table: DigitTable, model: str) -> str:
    """The model, marked when the runs of one of its cells come from different environments
    (a header note names the cell)."""
    differs = any(c.env_differs for c in table.cells if c.model == model)
    return f"{model} {DIFFERS_MARK}" if differs else model


def _paper_column(table: DigitTable, distortion: str) -> bool:
    """Whether ``distortion`` gets a paper column: on MNIST, where the paper has the column."""
    return table.compare_to_paper and any(
        c.paper_value is not None for c in table.cells if c.distortion == distortion
    )


def main_columns(table: DigitTable) -> tuple[Column, ...]:
    unit = " (%)" if table.error else ""
    name = "error" if table.error else table.metric
    columns = [Column("Method")]
    for d in table.distortions:
        columns.append(
            Column(f"{d} ours {name}{unit}", latex=tex_escape(f"{d} ours{unit}"), short=d)
        )
        if _paper_column(table, d):
            columns.append(Column(f"{d} paper{unit}", latex=tex_escape(f"{d} paper{unit}")))
    return tuple(columns)


def main_section(table: DigitTable) -> Section:
    rows = []
    for model in table.models:
        values: list[Value] = [_row_label(table, model)]
        for d in table.distortions:
            cell = table.cell(model, d)
            values.append(_ours(table, cell))
            if _paper_column(table, d):
                paper = None if cell is None else cell.paper_value
                values.append(None if paper is None else MeanStd(paper, None, 1))
        rows.append(tuple(values))
    title = (
        f"Comparison with {table.paper_source} (test error, lower is better)"
        if table.compare_to_paper
        else f"Distorted digits, {table.dataset} (no paper numbers)"
    )
    return Section(
        title=title,
        notes=tuple(header_lines(table)),
        columns=main_columns(table),
        groups=(RowGroup(None, tuple(rows)),),
    )


def interval_section(table: DigitTable) -> Section:
    rows = []
    for model in table.models:
        values: list[Value] = [model]
        for d in table.distortions:
            cell = table.cell(model, d)
            iv = None if cell is None else cell.interval
            values.append(None if iv is None else Range(*iv, table.digits))
        rows.append(tuple(values))
    return Section(
        title="95% CI of the test error (%)",
        notes=(
            "Percentile bootstrap over seeds and test images together, from each run's "
            "per-image predictions (predictions.csv); — where no run of the cell has them",
        ),
        columns=(Column("Method"), *(Column(d) for d in table.distortions)),
        groups=(RowGroup(None, tuple(rows)),),
    )


CLAIMS_TITLE = "Claims: each ST over its baseline, in test error, paired on the same test images"


def claims_notes(table: DigitTable) -> list[str]:
    lines = [
        f"X over Y, D: error(X) - error(Y) in percentage points under distortion D "
        f"({ERROR_CONVENTION}: a negative Δ means X makes fewer errors)",
        "Ours paired on the same (distorted) test images from the runs' per-image "
        "predictions: bootstrap over images, shared by X and Y, and each side's seeds, 95%",
        "Verdict on 'X has the lower error': confirmed = the whole interval is below 0, "
        "contradicted = above 0, inconclusive = it contains 0",
        "Resolvable: half the interval's width; with no predictions on a side there is only "
        "the difference of the means",
    ]
    if table.compare_to_paper:
        lines.append(
            f"Paper ±: what one run on {MNIST_TEST_IMAGES:,} test images (MNIST's test set) "
            "resolves at 95% (binomial, the larger of the two numbers'); a paper Δ smaller "
            "than it is within test-set noise"
        )
    missing = list(dict.fromkeys(name for c in table.claims or () for name in c.missing))
    if missing:
        lines.append(
            f"Left out of the paired statistics (no predictions.csv): {', '.join(missing)}"
        )
    return lines


def claims_section(table: DigitTable) -> Section:
    paper = table.compare_to_paper
    columns = (
        Column("Comparison"),
        *(
            (
                Column("Paper Δ error (pp)", latex=r"Paper $\Delta$ error (pp)", short="Paper"),
                Column("Paper ± (pp)", latex=r"Paper $\pm$ (pp)", short="±"),
            )
            if paper
            else ()
        ),
        Column("Ours Δ error (pp)", latex=r"Ours $\Delta$ error (pp)", short="Ours"),
        Column("95% CI (pp)", short="95% CI"),
        Column("Verdict"),
        Column("Resolvable (pp)", short="Res."),
    )
    rows = tuple(
        cells if paper else (cells[0], *cells[3:])
        for cells in (claim_cells(c) for c in table.claims or ())
    )
    return Section(
        title=CLAIMS_TITLE,
        notes=tuple(claims_notes(table)),
        columns=columns,
        groups=(RowGroup(None, rows),) if rows else (),
        empty="No ST model with its baseline in the same distortion to compare.",
    )


def sections(table: DigitTable) -> list[Section]:
    """The sections every human-readable format shows, in order."""
    out = [main_section(table)]
    if table.intervals:
        out.append(interval_section(table))
    if table.claims is not None:
        out.append(claims_section(table))
    return out


# --------------------------------------------------------------------------- CSV

_Get = Callable[[DigitTable, DigitCell], CsvValue]
# One line per (model, distortion) cell, in table order (rows, then columns).
CSV_FIELDS: tuple[tuple[str, _Get], ...] = (
    ("model", lambda t, c: c.model),
    ("distortion", lambda t, c: c.distortion),
    ("dataset", lambda t, c: t.dataset),
    ("quantity", lambda t, c: quantity(t)),
    ("paper", lambda t, c: c.paper_value),
    ("ours_mean", lambda t, c: c.mean),
    ("ours_std", lambda t, c: c.std),
    ("n", lambda t, c: c.n),
    ("failed", lambda t, c: c.failed),
    ("unfinished", lambda t, c: c.unfinished),
    ("duplicates", lambda t, c: c.duplicates),
    ("delta", lambda t, c: c.delta),
    ("environment", lambda t, c: " | ".join(sorted({describe(r) for r in c.runs}))),
    ("environment_differs", lambda t, c: "; ".join(c.env_differs)),
    ("ci_lo", lambda t, c: c.interval[0] if c.interval else None),
    ("ci_hi", lambda t, c: c.interval[1] if c.interval else None),
)
CSV_COLUMNS = tuple(name for name, _ in CSV_FIELDS)


def csv_rows(table: DigitTable) -> tuple[tuple[str, ...], list[list[CsvValue]]]:
    """Header and rows of the table CSV: one line per cell, models x distortions."""
    return CSV_COLUMNS, [[get(table, c) for _, get in CSV_FIELDS] for c in table.cells]


CLAIM_FIELDS: tuple[tuple[str, Callable[[DigitClaim], CsvValue]], ...] = (
    ("comparison", lambda c: c.label),
    ("distortion", lambda c: c.distortion),
    ("model_a", lambda c: c.a.model),
    ("model_b", lambda c: c.b.model),
    ("convention", lambda c: DELTA_CONVENTION),
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


def claims_csv_rows(table: DigitTable) -> tuple[tuple[str, ...], list[list[CsvValue]]]:
    """Header and rows of the claims CSV (no rows when the table has no claims)."""
    return CLAIM_COLUMNS, [[get(c) for _, get in CLAIM_FIELDS] for c in table.claims or ()]
