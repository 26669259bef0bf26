"""Aggregation: run records in, a ``TableData`` (rows of cell statistics) out.

The rules (README "The comparison table") are all here: one cell per (image_size,
num_transformers), latest finished rerun per seed, failed/unfinished runs counted and
excluded, setups never mixed, runs of a cell differing only in their seed
(``results.agreement``), paper numbers only from ``paper_cub_table.csv``, our sizes
mapped onto the paper's by rank when they differ; the cells' intervals and the claims from
the runs' predictions (``stnrepro.results.claims``); and the attention lines of the ST rows.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from importlib import resources

from stnrepro.records.schema import RunRecord, model_label
from stnrepro.results.agreement import check_cell
from stnrepro.results.claims import add_prediction_stats
from stnrepro.results.environment import differences, environment_lines
from stnrepro.results.model import (
    ATTENTION_METRICS,
    GROUP_EXTRA,
    GROUP_PAPER,
    GROUP_PRIOR,
    AttentionLine,
    AttentionStats,
    CellStats,
    PaperRow,
    TableData,
    TableError,
    TableRow,
    plural,
    show,
)

PAPER_TABLE_RESOURCE = "paper_cub_table.csv"
PAPER_COLUMNS = ("method", "source", "input_px", "num_transformers", "top1_acc")

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


def is_accuracy(metric: str) -> bool:
    return metric.rsplit("/", 1)[-1].startswith("acc")


def _is_top1(metric: str) -> bool:
    return metric.rsplit("/", 1)[-1] == "acc"


def describe_values(records: Sequence[RunRecord], get: Callable[[RunRecord], object]) -> str:
    counts = Counter(get(r) for r in records)
    items = sorted(counts.items(), key=_sort_key)
    return ", ".join(f"{show(v)}: {plural(c, 'run')}" for v, c in items)


def _sort_key(item: tuple[object, int]) -> tuple[int, str]:
    value = item[0]
    return (0, "") if value is None else (1, show(value))


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
                f"no runs with {flag}={show(value)} (found {describe_values(picked, get)})"
            )
        picked = kept
    digit = [r for r in picked if r.cell.is_digit]
    if digit:  # Table 1's runs have their own table (``stnrepro.results.digits``)
        raise TableError(
            f"{digit[0].source}: a digit run (backbone {show(digit[0].cell.backbone)}, "
            f"distortion {show(digit[0].cell.distortion)}) in the bird table (Table 3); "
            "expected bird runs only: stn-table makes the digit table from digit runs alone"
        )

    mixed: list[str] = []
    hints: list[str] = []
    for flag, hint, get in (
        ("dataset", "--dataset NAME", lambda r: r.cell.dataset),
        ("backbone", "--backbone NAME", lambda r: r.cell.backbone),
        ("pretrained", "--pretrained/--no-pretrained", lambda r: r.cell.pretrained),
    ):
        if len({get(r) for r in picked}) > 1:
            mixed.append(f"{flag} ({describe_values(picked, get)})")
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
                f"ST runs mix {flag} ({describe_values(st_runs, get)}); one table compares "
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
            f"{plural(len(paper_sizes), 'stand-in size')} can be compared: put the runs of other "
            "sizes under a separate directory"
        )
    return dict(zip(our_sizes, paper_sizes, strict=False)), True


def _cell_label(nt: int, size: int | None, paper_size: int | None, mapped: bool) -> str:
    model = model_label(nt) if nt == 0 else f"{model_label(nt)}-CNN"
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
        raise TableError(f"{record.source}: metric {metric!r} is {show(value)}, not a number")
    if percent:
        if not 0.0 <= value <= 1.0:
            raise TableError(
                f"{record.source}: metric {metric!r} is {value!r}; accuracies must be "
                "fractions in [0, 1] (was it written in percent?)"
            )
        return value * 100.0
    return value


def cell_stats(
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
        unfinished=sum(r.status in ("running", "interrupted") for r in runs),
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
    # Runs refused for a bad value before their cell was known: failed, in no cell.
    unplaced = [r for r in records if not r.placed]
    picked = _select([r for r in records if r.placed], dataset, backbone, pretrained)
    percent = is_accuracy(metric)

    size_map, mapped = _size_map(
        (r.cell.image_size for r in picked), (p.input_px for p in ours_rows if p.input_px)
    )
    to_ours = {paper_size: ours for ours, paper_size in size_map.items()}

    by_cell: dict[tuple[int, int], list[RunRecord]] = defaultdict(list)
    for r in picked:
        by_cell[(r.cell.image_size, r.cell.num_transformers)].append(r)
    n_no_config = sum(
        check_cell(f"{model_label(nt)}-{size}", runs)
        for (size, nt), runs in sorted(by_cell.items())
    )
    cells = {
        key: cell_stats(key[0], key[1], runs, metric, percent) for key, runs in by_cell.items()
    }
    n_used = sum(c.n for c in cells.values())
    n_failed = sum(c.failed for c in cells.values()) + sum(r.status == "failed" for r in unplaced)
    n_unfinished = sum(c.unfinished for c in cells.values()) + sum(
        r.status != "failed" for r in unplaced
    )
    n_duplicates = sum(c.duplicates for c in cells.values())
    if n_used == 0:
        raise TableError(
            f"all {len(picked) + len(unplaced)} runs failed or are unfinished "
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
                env_differs=() if stats is None else differences(stats.runs),
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
                env_differs=differences(stats.runs),
            )
        )

    shown_rows, intervals, claims = add_prediction_stats(rows, metric, _is_top1(metric))
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
        rows=shown_rows,
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
        environments=tuple(
            environment_lines([run for row in rows if row.stats for run in row.stats.runs])
        ),
        n_no_config=n_no_config,
        intervals=intervals,
        claims=claims,
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
            for key, *_ in ATTENTION_METRICS:
                name = f"{prefix}st{i}/{key}"
                values = [v for r in runs if (v := _attention_value(r, name)) is not None]
                stats.append(AttentionStats(tuple(values), len(runs)))
            lines.append(AttentionLine(row, i, tuple(stats)))
    return lines
