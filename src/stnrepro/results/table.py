"""The CUB comparison table (paper Table 3 layout), regenerated from run records.

``aggregate`` turns validated run records into a ``TableData``; the ``render_*`` functions
turn that into Markdown, CSV, LaTeX (booktabs) and a PNG bar chart, and ``write_table``
writes all four atomically. The output depends only on the records (no dates, no paths,
stable ordering), so the same records always give byte-identical files.

Aggregation rules (why: a table that silently merges or drops runs cannot be trusted):

* one cell per (image_size, num_transformers); mean and sample std (n-1) over seeds;
* failed and unfinished runs are excluded and counted, per cell and in total;
* reruns of one seed in one cell: only the latest *finished* one (by ``finished_at``) is
  used, the older finished ones are counted as duplicates;
* runs of different datasets, backbones or pretrained flags are never merged, nor ST runs
  with different crop sizes or transforms: the caller must pick one setup;
* paper numbers come only from ``paper_cub_table.csv``; if our input sizes are not the
  paper's (e.g. a 64/128 px CPU demo), at most two sizes are mapped onto the paper's
  sizes by rank, and the mapping is stated in the header and the row labels.

CSV columns (one line per table row, same order as the Markdown)::

    row               row label, as in the Markdown
    group             prior_work | paper | extra (extra = cell not in the paper)
    image_size        our input size in px (empty for prior work / missing cells)
    paper_image_size  the paper size this row stands for (empty for prior work)
    num_transformers  0 for the CNN baseline (empty for prior work)
    paper_top1        the paper's top-1 accuracy in % (empty where the paper has none)
    ours_mean         mean over seeds, in % for accuracy metrics (empty when n = 0)
    ours_std          sample std (n-1), same unit (empty when n < 2)
    n                 seeds used
    failed            failed runs excluded
    unfinished        unfinished (running or killed) runs excluded
    duplicates        older finished reruns of a used seed, dropped
    delta             ours_mean - paper_top1 in percentage points (top-1 metrics only)

Floats in the CSV have 4 decimals; the Markdown/LaTeX show 1 decimal for percentages.

Attention (``aggregate(..., attention=True)``, ``make_table.py --with-attention``): where the
transformers of each ST row look, from the same used runs as the row's accuracy. The metric
keys follow the table metric's stage (``test/acc`` -> ``test/st{i}/...``, ``val/acc`` ->
``val/st{i}/...``): ``iou`` (mean IoU of transformer i's crop with the bird box),
``hit_center``, ``hit_head`` and ``hit_body`` (rates), all fractions in [0, 1] shown in %.
Per (row, transformer i < num_transformers): mean ± sample std over the row's runs of the
*non-null* values only (a null or NaN value, i.e. nothing could be counted, and a missing
key are skipped; a cell with fewer values than the row's n says ``(n=k)``; none gives "—").
CNN rows have no transformers and get no attention lines (empty CSV columns).

* Markdown: a second table "Where the transformers look (<stage> set)", one line per
  (ST row, transformer); an ST row without used runs gets one line of "—";
* LaTeX: a second booktabs ``tabular`` after the first, same lines;
* terminal: a second table under the first;
* CSV: the same one line per table row, with ``K = max num_transformers`` of the table's rows
  and these columns appended after ``delta``, all empty for prior-work and CNN rows, ST rows
  without used runs, and i >= the row's num_transformers::

      st{i}_{m}_mean    mean in %, for i in 0..K-1 and m in iou, hit_center, hit_head, hit_body
                        (empty when no run has a non-null value)
      st{i}_{m}_std     sample std (n-1) in % (empty when fewer than 2 values)
      st{i}_{m}_n       how many of the row's runs had a non-null value (0 when none)

Without ``attention`` all outputs are exactly as without this feature.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import statistics
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from stnrepro.errors import StnreproError
from stnrepro.results.records import RunRecord

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "GROUP_EXTRA",
    "GROUP_PAPER",
    "GROUP_PRIOR",
    "ATTENTION_METRICS",
    "AttentionLine",
    "AttentionStats",
    "CellStats",
    "PaperRow",
    "TableData",
    "TableError",
    "TableRow",
    "aggregate",
    "attention_columns",
    "attention_header_lines",
    "attention_lines",
    "attention_prefix",
    "attention_title",
    "default_table_name",
    "header_lines",
    "load_paper_table",
    "print_table",
    "render_csv",
    "render_latex",
    "render_markdown",
    "render_plot",
    "write_table",
]

PAPER_TABLE_RESOURCE = "paper_cub_table.csv"
PAPER_COLUMNS = ("method", "source", "input_px", "num_transformers", "top1_acc")
# The dataset the paper's numbers are about; other datasets get a warning line.
PAPER_DATASET = "cub"

GROUP_PRIOR = "prior_work"
GROUP_PAPER = "paper"
GROUP_EXTRA = "extra"
EXTRA_TITLE = "Extra cells (not in the paper)"
DASH = "—"

CSV_COLUMNS = (
    "row",
    "group",
    "image_size",
    "paper_image_size",
    "num_transformers",
    "paper_top1",
    "ours_mean",
    "ours_std",
    "n",
    "failed",
    "unfinished",
    "duplicates",
    "delta",
)


# Attention metrics per transformer: (key suffix of ``{stage}/st{i}/<key>``, column title).
ATTENTION_METRICS = (
    ("iou", "IoU (%)"),
    ("hit_center", "centre hit (%)"),
    ("hit_head", "head hit (%)"),
    ("hit_body", "body hit (%)"),
)
_STAGE_WORDS = {"test": "test set", "val": "validation set", "train": "training set"}


class TableError(StnreproError):
    """The records cannot make one honest table (message says why and what to do)."""


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class PaperRow:
    """One row of the paper's table; prior work has no input size / transformer count."""

    method: str
    source: str
    input_px: int | None
    num_transformers: int | None
    top1_acc: float

    @property
    def is_prior_work(self) -> bool:
        return self.input_px is None


class _Summary:
    """n, mean and sample std (n-1; None for fewer than two) of ``values``."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) >= 2 else None


@dataclass(frozen=True)
class CellStats(_Summary):
    """Our runs of one (image_size, num_transformers) cell; ``values`` in display units.

    ``runs`` keeps the used records (one per seed, sorted by seed) so later columns
    (e.g. attention IoU from ``test/st{i}/iou``) can be computed from the same runs.
    """

    image_size: int | None
    num_transformers: int
    runs: tuple[RunRecord, ...] = ()
    values: tuple[float, ...] = ()
    failed: int = 0
    unfinished: int = 0
    duplicates: int = 0

    @property
    def excluded(self) -> int:
        return self.failed + self.unfinished


@dataclass(frozen=True)
class TableRow:
    """One displayed row: a prior-work row, a paper row or an extra cell of ours."""

    label: str
    group: str
    paper_value: float | None
    image_size: int | None = None
    paper_image_size: int | None = None
    num_transformers: int | None = None
    stats: CellStats | None = None


@dataclass(frozen=True)
class TableData:
    """Everything the renderers need; built by ``aggregate``."""

    dataset: str
    backbone: str
    pretrained: bool
    metric: str
    percent: bool
    compare_to_paper: bool
    paper_source: str
    rows: tuple[TableRow, ...]
    size_map: tuple[tuple[int, int], ...]
    mapped: bool
    crop_size: int | None
    transform: str | None
    has_st: bool
    n_used: int
    n_failed: int
    n_unfinished: int
    n_duplicates: int
    attention: bool = False

    def delta(self, row: TableRow) -> float | None:
        """Ours - paper in percentage points, where that comparison means something."""
        if not self.compare_to_paper or row.paper_value is None or row.stats is None:
            return None
        mean = row.stats.mean
        return None if mean is None else mean - row.paper_value


@dataclass(frozen=True)
class AttentionStats(_Summary):
    """One attention metric of one transformer over a row's runs; ``values`` in %.

    ``values`` holds only the non-null values, so ``n`` may be below ``n_runs``.
    """

    values: tuple[float, ...]
    n_runs: int


@dataclass(frozen=True)
class AttentionLine:
    """One line of the attention table: transformer ``transformer`` of an ST row.

    ``transformer`` is None (and ``stats`` empty) for an ST row without used runs.
    """

    row: TableRow
    transformer: int | None
    stats: tuple[AttentionStats, ...]

    @property
    def n_runs(self) -> int:
        return self.row.stats.n if self.row.stats is not None else 0


# --------------------------------------------------------------------------- paper table


def _paper_int(text: str, what: str, line: int) -> int | None:
    if not text.strip():
        return None
    try:
        return int(text)
    except ValueError:
        raise TableError(
            f"{PAPER_TABLE_RESOURCE}:{line}: {what} must be an integer or empty, got {text!r}"
        ) from None


def load_paper_table(text: str | None = None) -> list[PaperRow]:
    """Parse the packaged paper table (or ``text``); the only source of paper numbers."""
    if text is None:
        resource = resources.files("stnrepro.results") / PAPER_TABLE_RESOURCE
        text = resource.read_text(encoding="utf-8")
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != PAPER_COLUMNS:
        raise TableError(
            f"{PAPER_TABLE_RESOURCE}: expected columns {','.join(PAPER_COLUMNS)}, "
            f"got {','.join(reader.fieldnames or ())}"
        )
    rows: list[PaperRow] = []
    for line, raw in enumerate(reader, start=2):
        px = _paper_int(raw["input_px"], "input_px", line)
        nt = _paper_int(raw["num_transformers"], "num_transformers", line)
        if (px is None) != (nt is None):
            raise TableError(
                f"{PAPER_TABLE_RESOURCE}:{line}: input_px and num_transformers must both be "
                "set (our rows) or both empty (prior work)"
            )
        try:
            acc = float(raw["top1_acc"])
        except ValueError:
            raise TableError(
                f"{PAPER_TABLE_RESOURCE}:{line}: top1_acc must be a number, got {raw['top1_acc']!r}"
            ) from None
        rows.append(PaperRow(raw["method"], raw["source"], px, nt, acc))
    return rows


# --------------------------------------------------------------------------- aggregation


def _is_accuracy(metric: str) -> bool:
    return metric.rsplit("/", 1)[-1].startswith("acc")


def _is_top1(metric: str) -> bool:
    return metric.rsplit("/", 1)[-1] == "acc"


def _describe_values(records: Sequence[RunRecord], get: Callable[[RunRecord], object]) -> str:
    counts = Counter(get(r) for r in records)
    items = sorted(counts.items(), key=_sort_key)
    return ", ".join(f"{_show(v)}: {_plural(c, 'run')}" for v, c in items)


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def _sort_key(item: tuple[object, int]) -> tuple[int, str]:
    value = item[0]
    return (0, "") if value is None else (1, _show(value))


def _select(
    records: Sequence[RunRecord],
    dataset: str | None,
    backbone: str | None,
    pretrained: bool | None,
) -> list[RunRecord]:
    """Apply the user's filters, then refuse if the remaining runs still mix setups."""
    picked = list(records)
    for flag, value, get in (
        ("dataset", dataset, lambda r: r.cell.dataset),
        ("backbone", backbone, lambda r: r.cell.backbone),
        ("pretrained", pretrained, lambda r: r.cell.pretrained),
    ):
        if value is None:
            continue
        kept = [r for r in picked if get(r) == value]
        if not kept:
            raise TableError(
                f"no runs with {flag}={_show(value)} (found {_describe_values(picked, get)})"
            )
        picked = kept

    mixed: list[str] = []
    hints: list[str] = []
    for flag, hint, get in (
        ("dataset", "--dataset NAME", lambda r: r.cell.dataset),
        ("backbone", "--backbone NAME", lambda r: r.cell.backbone),
        ("pretrained", "--pretrained/--no-pretrained", lambda r: r.cell.pretrained),
    ):
        if len({get(r) for r in picked}) > 1:
            mixed.append(f"{flag} ({_describe_values(picked, get)})")
            hints.append(hint)
    if mixed:
        raise TableError(
            f"runs mix {' and '.join(mixed)}; one table never merges them: "
            f"pick one with {' and '.join(hints)}"
        )

    st_runs = [r for r in picked if r.cell.num_transformers > 0]
    for flag, get in (
        ("crop_size", lambda r: r.cell.crop_size),
        ("transform", lambda r: r.cell.transform),
    ):
        if len({get(r) for r in st_runs}) > 1:
            raise TableError(
                f"ST runs mix {flag} ({_describe_values(st_runs, get)}); one table compares "
                "one ST setup: put the runs of each setup under separate directories"
            )
    return picked


def _size_map(ours: Iterable[int], paper: Iterable[int]) -> tuple[dict[int, int], bool]:
    """Map our input sizes to the paper's: identity if they are the paper's, else by rank."""
    our_sizes = sorted(set(ours))
    paper_sizes = sorted(set(paper))
    if set(our_sizes) <= set(paper_sizes):
        return {s: s for s in our_sizes}, False
    if len(our_sizes) > len(paper_sizes):
        raise TableError(
            f"runs have {len(our_sizes)} input sizes ({', '.join(map(str, our_sizes))} px); "
            f"only the paper's sizes ({'/'.join(map(str, paper_sizes))} px) or at most "
            f"{_plural(len(paper_sizes), 'stand-in size')} can be compared: put the runs of other "
            "sizes under a separate directory"
        )
    return dict(zip(our_sizes, paper_sizes, strict=False)), True


def _cell_label(nt: int, size: int | None, paper_size: int | None, mapped: bool) -> str:
    model = "CNN" if nt == 0 else f"{nt}xST-CNN"
    if mapped and size is not None and paper_size is not None:
        return f"{model} {size}px (paper: {paper_size}px)"
    return f"{model} {size if size is not None else paper_size}px"


def _metric_value(record: RunRecord, metric: str, percent: bool) -> float:
    """The metric of a used run in display units; refuse values that cannot be right."""
    if metric not in record.metrics:
        have = ", ".join(sorted(record.metrics)) or "none"
        raise TableError(f"{record.source}: finished run has no metric {metric!r} (it has: {have})")
    value = record.metrics[metric]
    if value is None or not math.isfinite(value):
        raise TableError(f"{record.source}: metric {metric!r} is {_show(value)}, not a number")
    if percent:
        if not 0.0 <= value <= 1.0:
            raise TableError(
                f"{record.source}: metric {metric!r} is {value!r}; accuracies must be "
                "fractions in [0, 1] (was it written in percent?)"
            )
        return value * 100.0
    return value


def _cell_stats(
    size: int, nt: int, runs: Sequence[RunRecord], metric: str, percent: bool
) -> CellStats:
    """Count excluded runs, keep the latest finished run per seed, read its metric."""
    by_seed: dict[int, list[RunRecord]] = defaultdict(list)
    for r in runs:
        if r.finished:
            by_seed[r.cell.seed].append(r)
    used: list[RunRecord] = []
    duplicates = 0
    for seed in sorted(by_seed):
        reruns = sorted(by_seed[seed], key=lambda r: (r.finished_datetime, r.source))
        used.append(reruns[-1])
        duplicates += len(reruns) - 1
    return CellStats(
        image_size=size,
        num_transformers=nt,
        runs=tuple(used),
        values=tuple(_metric_value(r, metric, percent) for r in used),
        failed=sum(r.status == "failed" for r in runs),
        unfinished=sum(r.status == "running" for r in runs),
        duplicates=duplicates,
    )


def aggregate(
    records: Sequence[RunRecord],
    metric: str = "test/acc",
    dataset: str | None = None,
    backbone: str | None = None,
    pretrained: bool | None = None,
    paper: Sequence[PaperRow] | None = None,
    attention: bool = False,
) -> TableData:
    """Build the comparison table from run records (see the module docstring's rules).

    With ``attention`` the table also carries where the transformers look (see the module
    docstring); attention values are validated here, so a bad one fails before any output.
    """
    if not records:
        raise TableError("no run records to tabulate")
    paper_rows = list(paper) if paper is not None else load_paper_table()
    ours_rows = [p for p in paper_rows if not p.is_prior_work]
    if not ours_rows:
        raise TableError(f"{PAPER_TABLE_RESOURCE}: has no rows with input_px")
    picked = _select(records, dataset, backbone, pretrained)
    percent = _is_accuracy(metric)

    size_map, mapped = _size_map(
        (r.cell.image_size for r in picked), (p.input_px for p in ours_rows if p.input_px)
    )
    to_ours = {paper_size: ours for ours, paper_size in size_map.items()}

    by_cell: dict[tuple[int, int], list[RunRecord]] = defaultdict(list)
    for r in picked:
        by_cell[(r.cell.image_size, r.cell.num_transformers)].append(r)
    cells = {
        key: _cell_stats(key[0], key[1], runs, metric, percent) for key, runs in by_cell.items()
    }
    n_used = sum(c.n for c in cells.values())
    n_failed = sum(c.failed for c in cells.values())
    n_unfinished = sum(c.unfinished for c in cells.values())
    n_duplicates = sum(c.duplicates for c in cells.values())
    if n_used == 0:
        raise TableError(
            f"all {len(picked)} runs failed or are unfinished "
            f"({n_failed} failed, {n_unfinished} unfinished): nothing to tabulate"
        )

    rows: list[TableRow] = [
        TableRow(label=p.method, group=GROUP_PRIOR, paper_value=p.top1_acc)
        for p in paper_rows
        if p.is_prior_work
    ]
    for p in ours_rows:
        assert p.input_px is not None and p.num_transformers is not None
        size = to_ours.get(p.input_px)
        stats = cells.pop((size, p.num_transformers), None) if size is not None else None
        rows.append(
            TableRow(
                label=_cell_label(p.num_transformers, size, p.input_px, mapped),
                group=GROUP_PAPER,
                paper_value=p.top1_acc,
                image_size=size,
                paper_image_size=p.input_px,
                num_transformers=p.num_transformers,
                stats=CellStats(image_size=size, num_transformers=p.num_transformers)
                if stats is None
                else stats,
            )
        )
    for (size, nt), stats in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        rows.append(
            TableRow(
                label=_cell_label(nt, size, size_map[size], mapped),
                group=GROUP_EXTRA,
                paper_value=None,
                image_size=size,
                paper_image_size=size_map[size],
                num_transformers=nt,
                stats=stats,
            )
        )

    first = picked[0].cell
    st_cells = [r.cell for r in picked if r.cell.num_transformers > 0]
    table = TableData(
        dataset=first.dataset,
        backbone=first.backbone,
        pretrained=first.pretrained,
        metric=metric,
        percent=percent,
        compare_to_paper=_is_top1(metric),
        # Most common source; ties go to the first row (Counter keeps insertion order).
        paper_source=Counter(p.source for p in ours_rows).most_common(1)[0][0],
        rows=tuple(rows),
        size_map=tuple(sorted(size_map.items())),
        mapped=mapped,
        crop_size=st_cells[0].crop_size if st_cells else None,
        transform=st_cells[0].transform if st_cells else None,
        has_st=bool(st_cells),
        n_used=n_used,
        n_failed=n_failed,
        n_unfinished=n_unfinished,
        n_duplicates=n_duplicates,
        attention=attention,
    )
    if attention:
        attention_lines(table)  # validate now: refuse before anything is rendered
    return table


# --------------------------------------------------------------------------- attention


def attention_prefix(metric: str) -> str:
    """The stage of the attention keys, from the table metric: ``test/acc`` -> ``test/``."""
    return metric.rsplit("/", 1)[0] + "/" if "/" in metric else ""


def _attention_value(record: RunRecord, key: str) -> float | None:
    """One attention value in %; None when null/NaN/missing (nothing could be counted)."""
    value = record.metrics.get(key)
    if value is None or math.isnan(value):
        return None
    if not 0.0 <= value <= 1.0:
        raise TableError(
            f"{record.source}: metric {key!r} is {value!r}; attention IoUs and hit rates "
            "must be fractions in [0, 1]"
        )
    return value * 100.0


def attention_lines(table: TableData) -> list[AttentionLine]:
    """One line per (ST row, transformer), in table order; CNN and prior-work rows skipped."""
    prefix = attention_prefix(table.metric)
    lines: list[AttentionLine] = []
    for row in table.rows:
        if not row.num_transformers:  # prior work (None) and the CNN baseline (0)
            continue
        runs = row.stats.runs if row.stats is not None else ()
        if not runs:
            lines.append(AttentionLine(row, None, ()))
            continue
        for i in range(row.num_transformers):
            stats = []
            for key, _ in ATTENTION_METRICS:
                name = f"{prefix}st{i}/{key}"
                values = [v for r in runs if (v := _attention_value(r, name)) is not None]
                stats.append(AttentionStats(tuple(values), len(runs)))
            lines.append(AttentionLine(row, i, tuple(stats)))
    return lines


def _max_transformers(table: TableData) -> int:
    return max((r.num_transformers or 0 for r in table.rows), default=0)


def attention_columns(table: TableData) -> tuple[str, ...]:
    """The CSV columns appended with attention (module docstring), for i < max transformers."""
    return tuple(
        f"st{i}_{key}_{part}"
        for i in range(_max_transformers(table))
        for key, _ in ATTENTION_METRICS
        for part in ("mean", "std", "n")
    )


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


def _with_attention(table: TableData, attention: bool | None) -> bool:
    return table.attention if attention is None else attention


def _attention_cell(stats: AttentionStats, pm: str, dash: str, n: str) -> str:
    mean, std = stats.mean, stats.std
    if mean is None:
        return dash
    text = f"{mean:.1f}" if std is None else f"{mean:.1f}{pm}{std:.1f}"
    return text if stats.n == stats.n_runs else f"{text} ({n}={stats.n})"


def _attention_columns_shown() -> tuple[str, ...]:
    return ("Method", "ST", *(title for _, title in ATTENTION_METRICS), "n")


def _attention_cells(line: AttentionLine, pm: str, dash: str, n: str = "n") -> list[str]:
    """Display strings of one attention line; ``pm``/``dash``/``n`` for LaTeX's symbols."""
    if line.transformer is None:
        return [line.row.label, dash, *(dash for _ in ATTENTION_METRICS), str(line.n_runs)]
    return [
        line.row.label,
        f"st{line.transformer}",
        *(_attention_cell(s, pm, dash, n) for s in line.stats),
        str(line.n_runs),
    ]


# --------------------------------------------------------------------------- formatting


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


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
        crop = _show(table.crop_size) + (" px" if table.crop_size is not None else "")
        lines.append(f"ST runs: crop {crop}, transform {_show(table.transform)}")
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
        f"{_plural(table.n_duplicates, 'duplicate')} dropped "
        "(older finished reruns of a seed)"
    )
    lines.append("Column 'failed' counts a row's failed and unfinished runs (excluded)")
    return lines


def _num(table: TableData, value: float) -> str:
    return f"{value:.1f}" if table.percent else f"{value:.3f}"


def _signed(value: float) -> str:
    rounded = round(value, 1) + 0.0  # + 0.0 turns -0.0 into 0.0
    return f"{rounded:+.1f}"


def _columns(table: TableData) -> tuple[str, ...]:
    unit = " (%)" if table.percent else ""
    return ("Method", "Paper top-1 (%)", f"Ours {table.metric}{unit}", "Δ (pp)", "n", "failed")


def _cells(table: TableData, row: TableRow, pm: str, dash: str) -> list[str]:
    """Display strings of one row; ``pm``/``dash`` let LaTeX use its own symbols."""
    paper = dash if row.paper_value is None else f"{row.paper_value:.1f}"
    if row.stats is None:
        return [row.label, paper, dash, dash, dash, dash]
    mean, std = row.stats.mean, row.stats.std
    if mean is None:
        ours = dash
    elif std is None:
        ours = _num(table, mean)
    else:
        ours = f"{_num(table, mean)}{pm}{_num(table, std)}"
    delta = table.delta(row)
    return [
        row.label,
        paper,
        ours,
        dash if delta is None else _signed(delta),
        str(row.stats.n),
        str(row.stats.excluded),
    ]


def _md_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|")


def _markdown_attention(table: TableData) -> list[str]:
    out = ["", f"## {attention_title(table)}", ""]
    out += [f"- {line}" for line in attention_header_lines(table)]
    lines = attention_lines(table)
    if not lines:
        return [*out, "", "No ST rows in this table."]
    cols = _attention_columns_shown()
    out += ["", "| " + " | ".join(cols) + " |", "|:---|" + "---:|" * (len(cols) - 1)]
    extra_started = False
    for line in lines:
        if line.row.group == GROUP_EXTRA and not extra_started:
            extra_started = True
            out.append(f"| ***{EXTRA_TITLE}*** |" + " |" * (len(cols) - 1))
        cells = _attention_cells(line, " ± ", DASH)
        out.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
    return out


def render_markdown(table: TableData, attention: bool | None = None) -> str:
    """Paper-layout Markdown: header facts, prior work, paper rows, then extra cells.

    ``attention`` (default: ``table.attention``) appends the "Where the transformers look"
    table (module docstring).
    """
    out = [f"# Comparison with {table.paper_source}", ""]
    out += [f"- {line}" for line in header_lines(table)]
    cols = _columns(table)
    out += ["", "| " + " | ".join(cols) + " |", "|:---|" + "---:|" * (len(cols) - 1)]
    extra_started = False
    for row in table.rows:
        if row.group == GROUP_EXTRA and not extra_started:
            extra_started = True
            out.append(f"| ***{EXTRA_TITLE}*** |" + " |" * (len(cols) - 1))
        cells = _cells(table, row, " ± ", DASH)
        out.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
    if _with_attention(table, attention):
        out += _markdown_attention(table)
    return "\n".join(out) + "\n"


def _fmt_csv(value: float | int | None) -> str:
    if value is None:
        return ""
    if isinstance(value, int):
        return str(value)
    return f"{value + 0.0:.4f}"


def _csv_attention(
    table: TableData, row: TableRow, by_row: dict[int, dict[int, AttentionLine]]
) -> list[str]:
    lines = by_row.get(id(row), {})
    out: list[str] = []
    for i in range(_max_transformers(table)):
        line = lines.get(i)
        for j in range(len(ATTENTION_METRICS)):
            s = line.stats[j] if line is not None else None
            out += [
                _fmt_csv(s.mean if s else None),
                _fmt_csv(s.std if s else None),
                _fmt_csv(s.n if s else None),
            ]
    return out


def render_csv(table: TableData, attention: bool | None = None) -> str:
    """Machine-readable rows (columns in the module docstring); no header facts.

    ``attention`` (default: ``table.attention``) appends the ``st{i}_*`` columns.
    """
    with_attention = _with_attention(table, attention)
    by_row: dict[int, dict[int, AttentionLine]] = defaultdict(dict)
    if with_attention:
        for line in attention_lines(table):
            if line.transformer is not None:
                by_row[id(line.row)][line.transformer] = line
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS + (attention_columns(table) if with_attention else ()))
    for row in table.rows:
        s = row.stats
        extra = _csv_attention(table, row, by_row) if with_attention else []
        writer.writerow(
            [
                row.label,
                row.group,
                _fmt_csv(row.image_size),
                _fmt_csv(row.paper_image_size),
                _fmt_csv(row.num_transformers),
                _fmt_csv(row.paper_value),
                _fmt_csv(s.mean if s else None),
                _fmt_csv(s.std if s else None),
                _fmt_csv(s.n if s else None),
                _fmt_csv(s.failed if s else None),
                _fmt_csv(s.unfinished if s else None),
                _fmt_csv(s.duplicates if s else None),
                _fmt_csv(table.delta(row)),
                *extra,
            ]
        )
    return buf.getvalue()


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


def _tex(text: str) -> str:
    return re.sub(r"[\\&%$#_{}~^]", lambda m: _LATEX_SPECIAL[m.group()], text)


def _latex_attention(table: TableData) -> list[str]:
    out = ["", f"% {attention_title(table)}"]
    out += [f"% {line}" for line in attention_header_lines(table)]
    lines = attention_lines(table)
    if not lines:
        return [*out, "% No ST rows in this table."]
    cols = ["Method", "ST", *(_tex(title) for _, title in ATTENTION_METRICS), "$n$"]
    out += [r"\begin{tabular}{l" + "r" * (len(cols) - 1) + "}", r"\toprule"]
    out += [" & ".join(cols) + r" \\", r"\midrule"]
    group = None
    for line in lines:
        if group is not None and line.row.group != group:
            out.append(r"\midrule")
            if line.row.group == GROUP_EXTRA:
                out.append(rf"\multicolumn{{{len(cols)}}}{{l}}{{\emph{{{EXTRA_TITLE}}}}} \\")
        group = line.row.group
        cells = _attention_cells(line, r" $\pm$ ", "---", "$n$")
        out.append(" & ".join([_tex(cells[0]), *cells[1:]]) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    return out


def render_latex(table: TableData, attention: bool | None = None) -> str:
    """A booktabs ``tabular`` to ``\\input``; the header facts go in ``%`` comments.

    ``attention`` (default: ``table.attention``) appends a second ``tabular``.
    """
    out = [f"% Comparison with {table.paper_source}"]
    out += [f"% {line}" for line in header_lines(table)]
    unit = r" (\%)" if table.percent else ""
    cols = [
        "Method",
        r"Paper top-1 (\%)",
        rf"Ours \texttt{{{_tex(table.metric)}}}{unit}",
        r"$\Delta$ (pp)",
        "$n$",
        "failed",
    ]
    out += [r"\begin{tabular}{l" + "r" * (len(cols) - 1) + "}", r"\toprule"]
    out += [" & ".join(cols) + r" \\", r"\midrule"]
    group = None
    for row in table.rows:
        if group is not None and row.group != group:
            out.append(r"\midrule")
            if row.group == GROUP_EXTRA:
                out.append(rf"\multicolumn{{{len(cols)}}}{{l}}{{\emph{{{EXTRA_TITLE}}}}} \\")
        group = row.group
        cells = _cells(table, row, r" $\pm$ ", "---")
        cells = [_tex(cells[0])] + [
            f"${c}$" if c.startswith(("+", "-")) and c != "---" else c for c in cells[1:]
        ]
        out.append(" & ".join(cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    if _with_attention(table, attention):
        out += _latex_attention(table)
    return "\n".join(out) + "\n"


def render_plot(table: TableData, path: str | os.PathLike[str]) -> None:
    """PNG bar chart: ours (mean ± std) beside the paper's value, for paper rows and extras."""
    # Figure + Agg canvas directly: no pyplot, so no global backend state is touched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    rows = [r for r in table.rows if r.group != GROUP_PRIOR]
    fig = Figure(figsize=(max(6.0, 1.3 * len(rows) + 2.0), 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.38
    xs = list(range(len(rows)))
    shown: list[float] = []
    for x, row in zip(xs, rows, strict=True):
        stats = row.stats
        if stats is not None and stats.mean is not None:
            err = [stats.std] if stats.std is not None else None
            ax.bar(x - width / 2, stats.mean, width, yerr=err, capsize=4, color="tab:blue")
            ax.annotate(
                f"{_num(table, stats.mean)}\nn={stats.n}",
                (x - width / 2, stats.mean + (stats.std or 0.0)),
                ha="center",
                va="bottom",
                fontsize=7,
                xytext=(0, 2),
                textcoords="offset points",
            )
            shown += [stats.mean - (stats.std or 0.0), stats.mean + (stats.std or 0.0)]
        if table.compare_to_paper and row.paper_value is not None:
            ax.bar(x + width / 2, row.paper_value, width, color="tab:gray", hatch="//")
            ax.annotate(
                f"{row.paper_value:.1f}",
                (x + width / 2, row.paper_value),
                ha="center",
                va="bottom",
                fontsize=7,
                xytext=(0, 2),
                textcoords="offset points",
            )
            shown.append(row.paper_value)
    if table.percent and shown:  # zoom in: differences of ~1 pp vanish on a 0-100 axis
        low = max(0.0, math.floor(min(shown) / 5.0) * 5.0 - 5.0)
        ax.set_ylim(low, min(100.0, math.ceil(max(shown) / 5.0) * 5.0 + 5.0))
    ax.set_xticks(xs, [r.label.replace(" (paper:", "\n(paper:") for r in rows], fontsize=7)
    ax.set_ylabel(f"{table.metric}{' (%)' if table.percent else ''}")
    ax.set_title(f"{table.dataset} / {table.backbone}: ours vs. {table.paper_source}", fontsize=9)
    handles = [Patch(color="tab:blue", label="ours (mean ± std)")]
    if table.compare_to_paper:
        handles.append(Patch(facecolor="tab:gray", hatch="//", label="paper"))
    ax.legend(handles=handles, fontsize=7, loc="upper left")
    n_paper = sum(r.group == GROUP_PAPER for r in rows)
    if n_paper < len(rows):
        ax.axvline(n_paper - 0.5, color="black", linestyle=":", linewidth=0.8)
        ax.text(
            n_paper - 0.45,
            1.0,
            EXTRA_TITLE,
            transform=ax.get_xaxis_transform(),
            ha="left",
            va="top",
            fontsize=7,
            style="italic",
        )
    fig.tight_layout()
    # No "Software" metadata: the PNG then depends on the records (and matplotlib) only.
    fig.savefig(path, format="png", metadata={"Software": None})


# --------------------------------------------------------------------------- output


def default_table_name(table: TableData) -> str:
    """``<dataset>_table``, made safe for a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", table.dataset).strip("._") + "_table"


def _check_name(name: str) -> None:
    if not name or name.startswith(".") or re.search(r"[/\\\x00]", name):
        raise TableError(f"--name {name!r}: expected a plain file stem (no '/', not hidden)")


def write_table(table: TableData, out_dir: str | os.PathLike[str], name: str) -> list[Path]:
    """Write ``<name>.md/.csv/.tex/.png`` to ``out_dir`` all-or-nothing (temp files, renames).

    Everything is rendered into hidden temp files first; only when all four exist are
    they renamed into place, so a failure leaves no half-written table behind.
    """
    _check_name(name)
    out = Path(out_dir)
    texts = {
        ".md": render_markdown(table),
        ".csv": render_csv(table),
        ".tex": render_latex(table),
    }
    missing = [p for p in (out, *out.parents) if not p.exists()]
    temps: dict[str, Path] = {}
    try:
        out.mkdir(parents=True, exist_ok=True)
        for suffix in (".md", ".csv", ".tex", ".png"):
            fd, tmp = tempfile.mkstemp(prefix=f".{name}{suffix}.", suffix=".tmp", dir=out)
            os.close(fd)
            temps[suffix] = Path(tmp)
            if suffix == ".png":
                render_plot(table, tmp)
            else:
                Path(tmp).write_text(texts[suffix], encoding="utf-8", newline="\n")
    except BaseException as exc:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
        for d in missing:  # leaf first: remove only directories this call created
            try:
                d.rmdir()
            except OSError:
                break
        if isinstance(exc, OSError):
            raise TableError(f"{out}: cannot write the table ({exc.strerror or exc})") from None
        raise
    paths = []
    for suffix, tmp in temps.items():
        final = out / f"{name}{suffix}"
        os.chmod(tmp, 0o644)
        os.replace(tmp, final)
        paths.append(final)
    return paths


def print_table(
    table: TableData, console: Console | None = None, attention: bool | None = None
) -> None:
    """Show the table in the terminal (rich), with the same header facts.

    ``attention`` (default: ``table.attention``) also prints the attention table.
    """
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    unit = " in %" if table.percent else ""
    grid = Table(
        title=f"Ours: {table.metric}{unit}; paper: {table.paper_source}, top-1 in %",
        title_style="bold",
    )
    # Short headers so the table fits an 80-column terminal; the title carries the units.
    for i, col in enumerate(("Method", "Paper", "Ours", "Δ pp", "n", "failed")):
        grid.add_column(col, justify="left" if i == 0 else "right", no_wrap=True)
    group = None
    for row in table.rows:
        if group is not None and row.group != group:
            grid.add_section()
            if row.group == GROUP_EXTRA:
                grid.add_row(Text(EXTRA_TITLE, style="italic"))
        group = row.group
        cells = _cells(table, row, " ± ", DASH)
        grid.add_row(*map(Text, cells), style="dim" if row.group == GROUP_PRIOR else None)
    for line in header_lines(table):
        console.print(line, markup=False, highlight=False)
    console.print(grid)
    if _with_attention(table, attention):
        _print_attention(table, console)


def _print_attention(table: TableData, console: Console) -> None:
    from rich.table import Table
    from rich.text import Text

    console.print()
    for line in attention_header_lines(table):
        console.print(line, markup=False, highlight=False)
    lines = attention_lines(table)
    if not lines:
        console.print("No ST rows in this table.", markup=False, highlight=False)
        return
    grid = Table(title=f"{attention_title(table)}, in %", title_style="bold")
    for i, col in enumerate(("Method", "ST", "IoU", "centre", "head", "body", "n")):
        grid.add_column(col, justify="left" if i == 0 else "right", no_wrap=i > 0)
    group = None
    for line in lines:
        if group is not None and line.row.group != group:
            grid.add_section()
            if line.row.group == GROUP_EXTRA:
                grid.add_row(Text(EXTRA_TITLE, style="italic"))
        group = line.row.group
        grid.add_row(*map(Text, _attention_cells(line, " ± ", DASH)))
    console.print(grid)
