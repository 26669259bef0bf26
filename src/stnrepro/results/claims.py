"""How sure the table is: 95% intervals of its cells and the paper's claims, paired.

Both come from the runs' per-image test predictions (``predictions.csv`` next to each
``metrics.json``; ``stnrepro.records.predictions``), each checked against its record
(:func:`run_predictions`). A used run without a file that can be checked (an older run,
or a record read from W&B, whose files are not fetched) still counts for mean ± std, is
left out of the interval and the paired statistics, and is named in the table's notes.

The comparisons are the paper's (Table 3 text: each step up in size or transformers helps)
plus those between our extra cells and their neighbours; "B over A" is B minus A, and its
verdict is on "B is better than A": ``confirmed`` (the whole interval above 0),
``contradicted`` (below 0) or ``inconclusive``. Cells are keyed by the paper's input size
(a stand-in size maps onto it) and the number of transformers.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from pathlib import Path

from stnrepro.errors import DataError
from stnrepro.records.predictions import Predictions, read_predictions
from stnrepro.records.schema import PREDICTIONS_FILENAME, RECORD_FILENAME, RunRecord
from stnrepro.results.model import GROUP_EXTRA, CellStats, Claim, TableRow
from stnrepro.results.stats import cell_interval, paired_difference, paper_resolution_pp

# The paper's comparisons as (A, B) = ((input px, transformers), ...): B over A.
PAPER_CLAIMS: tuple[tuple[tuple[int, int], tuple[int, int]], ...] = (
    ((224, 0), (224, 2)),
    ((224, 2), (448, 2)),
    ((448, 2), (448, 4)),
    ((224, 0), (448, 4)),
)
# The table metrics the predictions can stand for (key -> use top-5 correctness).
PREDICTION_METRICS = {"test/acc": False, "test/acc_top5": True}
CLAIMS_METRIC = "test/acc"  # the paper's numbers are top-1 test accuracy


def run_predictions(record: RunRecord) -> Predictions | None:
    """The run's predictions, checked against its record; None when it has none to check.

    Only ``predictions.csv`` in the record's own folder is read (a record cannot point
    elsewhere: the schema allows no other name, and a link is not followed). None for a
    record from W&B (its files are not fetched), one without a test, one whose file is gone
    and one written before records kept the file's sha256 (nothing to check it against):
    such runs are named in the table's notes. A file that is not the one the run wrote
    (another sha256), or that disagrees with its record on the number of test images or
    the number it got right, is refused naming the file.
    """
    source = Path(record.source)
    if source.name != RECORD_FILENAME or not source.is_file() or record.predictions is None:
        return None
    path = source.parent / PREDICTIONS_FILENAME
    if path.is_symlink():
        raise DataError(f"{path}: a link; expected the run's own file next to {source.name}")
    if not path.is_file() or record.predictions_sha256 is None:
        return None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != record.predictions_sha256:
        raise DataError(
            f"{path}: sha256 {digest[:12]}... is not the {record.predictions_sha256[:12]}... "
            f"its record ({source}) wrote: the file was changed or replaced; restore it or "
            "rerun the run"
        )
    predictions = read_predictions(path, data)
    n = int(predictions.image_id.size)
    if record.test_images is not None and n != record.test_images:
        raise DataError(
            f"{path}: {n} rows, but its record ({source}) scored {record.test_images} test "
            "images: expected one row per test image"
        )
    accuracy = record.metrics.get("test/acc")
    right = int(predictions.correct.sum())
    if accuracy is not None and round(accuracy * n) != right:
        raise DataError(
            f"{path}: {right} of {n} correct ({100 * right / n:.2f}%), but its record "
            f"({source}) says test/acc {100 * accuracy:.2f}%: expected the predictions of "
            "the run's own test"
        )
    return predictions


_Cache = dict[str, Predictions | None]


def predictions_of(
    runs: Sequence[RunRecord], cache: _Cache
) -> tuple[list[Predictions], tuple[str, ...]]:
    """The runs' predictions (each file read once per ``cache``) and the runs without."""
    found: list[Predictions] = []
    missing: list[str] = []
    for record in runs:
        if record.source not in cache:
            cache[record.source] = run_predictions(record)
        predictions = cache[record.source]
        if predictions is None:
            missing.append(record.run_name)
        else:
            found.append(predictions)
    return found, tuple(missing)


def with_interval(stats: CellStats, top5: bool, cache: _Cache) -> CellStats:
    """``stats`` with its 95% interval (in %) and the names of runs without predictions."""
    found, missing = predictions_of(stats.runs, cache)
    if not found:
        return dataclasses.replace(stats, missing=missing)
    interval = cell_interval(found, top5=top5)
    return dataclasses.replace(
        stats, interval=(100 * interval.lo, 100 * interval.hi), missing=missing
    )


def _key(row: TableRow) -> tuple[int, int] | None:
    if row.paper_image_size is None or row.num_transformers is None:
        return None
    return (row.paper_image_size, row.num_transformers)


def _has_runs(row: TableRow | None) -> bool:
    return row is not None and row.stats is not None and row.stats.n > 0


def comparisons(rows: Sequence[TableRow]) -> list[tuple[TableRow, TableRow]]:
    """(A, B) pairs: the paper's claims, then each extra cell of ours against its neighbours.

    An extra cell (size P, n transformers) is compared with the CNN at P, with the next
    fewer transformers at P, and with n transformers at the next smaller size, where that
    cell has runs; pairs already listed are not repeated.
    """
    by_key = {key: row for row in rows if (key := _key(row)) is not None}
    pairs = [(by_key[a], by_key[b]) for a, b in PAPER_CLAIMS if a in by_key and b in by_key]
    seen = {(_key(a), _key(b)) for a, b in pairs}
    for row in rows:
        key = _key(row)
        if row.group != GROUP_EXTRA or key is None or not _has_runs(row):
            continue
        size, n = key
        fewer = [k[1] for k in by_key if k[0] == size and 0 < k[1] < n]
        smaller = [k[0] for k in by_key if k[1] == n and k[0] < size]
        for other in (
            (size, 0) if n > 0 else None,
            (size, max(fewer)) if fewer else None,
            (max(smaller), n) if smaller else None,
        ):
            if other is None or (other, key) in seen or not _has_runs(by_key.get(other)):
                continue
            seen.add((other, key))
            pairs.append((by_key[other], row))
    return pairs


def claim(a: TableRow, b: TableRow, compare_to_paper: bool, cache: _Cache) -> Claim:
    """B over A: the paper's difference and resolution, ours paired on the same images."""
    paper_delta = paper_resolution = None
    if compare_to_paper and a.paper_value is not None and b.paper_value is not None:
        paper_delta = b.paper_value - a.paper_value
        paper_resolution = max(
            paper_resolution_pp(a.paper_value), paper_resolution_pp(b.paper_value)
        )
    runs_a = a.stats.runs if a.stats is not None else ()
    runs_b = b.stats.runs if b.stats is not None else ()
    found_a, missing_a = predictions_of(runs_a, cache)
    found_b, missing_b = predictions_of(runs_b, cache)
    missing = missing_a + missing_b
    if not found_a or not found_b:
        mean_a = a.stats.mean if a.stats is not None else None
        mean_b = b.stats.mean if b.stats is not None else None
        delta = None if mean_a is None or mean_b is None else mean_b - mean_a
        return Claim(a, b, paper_delta, paper_resolution, delta, missing=missing)
    d = paired_difference(found_a, found_b)
    return Claim(
        a,
        b,
        paper_delta,
        paper_resolution,
        delta=100 * d.diff,
        lo=100 * d.lo,
        hi=100 * d.hi,
        verdict=d.verdict,
        resolution=100 * d.resolution,
        missing=missing,
    )


def add_prediction_stats(
    rows: Sequence[TableRow], metric: str, compare_to_paper: bool
) -> tuple[tuple[TableRow, ...], bool, tuple[Claim, ...] | None]:
    """Rows with cell intervals, whether they have them, and the claims (None: no claims).

    Only a test accuracy can be read off test predictions; claims only for top-1.
    """
    if metric not in PREDICTION_METRICS:
        return tuple(rows), False, None
    top5 = PREDICTION_METRICS[metric]
    cache: _Cache = {}
    rows = tuple(
        row
        if row.stats is None or not row.stats.runs
        else dataclasses.replace(row, stats=with_interval(row.stats, top5, cache))
        for row in rows
    )
    if metric != CLAIMS_METRIC:
        return rows, True, None
    return rows, True, tuple(claim(a, b, compare_to_paper, cache) for a, b in comparisons(rows))
