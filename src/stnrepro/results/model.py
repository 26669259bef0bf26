"""The table's data model: what ``aggregate`` builds and the renderers read.

Plain frozen dataclasses, no I/O and no formatting: a ``TableData`` holds the rows (prior
work, paper rows, extra cells of ours), each with the ``CellStats`` of our runs; attention
lines hold per-transformer ``AttentionStats``. Values are in display units (% for accuracy
metrics and attention rates).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from stnrepro.errors import StnreproError
from stnrepro.records.schema import RunRecord, model_label

GROUP_PRIOR = "prior_work"
GROUP_PAPER = "paper"
GROUP_EXTRA = "extra"

# Attention metrics per transformer: (key suffix of ``{stage}/st{i}/<key>``, column title,
# short terminal title).
ATTENTION_METRICS = (
    ("iou", "IoU (%)", "IoU %"),
    ("hit_center", "centre hit (%)", "centre %"),
    ("hit_head", "head hit (%)", "head %"),
    ("hit_body", "body hit (%)", "body %"),
)


class TableError(StnreproError):
    """The records cannot make one honest table (message says why and what to do)."""


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def show(value: object) -> str:
    """A config value as the user wrote it in YAML/JSON (true/false/null)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


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


class Summary:
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
class CellStats(Summary):
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
    # From the runs' per-image test predictions (``stnrepro.results.claims``); the interval
    # is None when no used run has predictions or the table's metric is not a test accuracy.
    interval: tuple[float, float] | None = None  # (lo, hi) at 95%, display units
    missing: tuple[str, ...] = ()  # run names of used runs without predictions

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
    # What differs between the environments of the used runs (``results.environment``).
    env_differs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Claim:
    """Model ``b`` minus model ``a`` (pp): the paper's difference beside ours, paired.

    ``delta``/``lo``/``hi``/``verdict``/``resolution`` come from the paired bootstrap over
    the runs with predictions (``stnrepro.results.stats.paired_difference``); without
    predictions on either side ``delta`` is the difference of the table's means and the rest
    is None. ``paper_resolution`` is the larger single-run binomial half-width of the two
    paper numbers (one run each on CUB's test set). ``missing`` names runs of either cell
    left out of the paired statistics for lack of predictions.
    """

    a: TableRow
    b: TableRow
    paper_delta: float | None
    paper_resolution: float | None
    delta: float | None
    lo: float | None = None
    hi: float | None = None
    verdict: str | None = None
    resolution: float | None = None
    missing: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """``2xST 224 over CNN 224``: short, with our input sizes (the header maps them)."""
        return f"{_short(self.b)} over {_short(self.a)}"


def _short(row: TableRow) -> str:
    """A cell without runs of ours has no input size of ours: the paper's names it."""
    model = model_label(row.num_transformers)
    size = row.image_size if row.image_size is not None else row.paper_image_size
    return f"{model} {size}"


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
    # Header lines naming the environment(s) of the used runs (``results.environment``).
    environments: tuple[str, ...] = ()
    # Finished runs without a recorded config, compared on the cell keys only.
    n_no_config: int = 0
    # Whether cells carry prediction intervals (the metric is a test accuracy), and the
    # comparisons (None: the metric is not test/acc, so there are none).
    intervals: bool = False
    claims: tuple[Claim, ...] | None = None

    @property
    def digits(self) -> int:
        """Decimals shown for our metric: 1 for percentages, 3 otherwise (e.g. a loss)."""
        return 1 if self.percent else 3

    def delta(self, row: TableRow) -> float | None:
        """Ours - paper in percentage points, where that comparison means something."""
        if not self.compare_to_paper or row.paper_value is None or row.stats is None:
            return None
        mean = row.stats.mean
        return None if mean is None else mean - row.paper_value

    @property
    def max_transformers(self) -> int:
        return max((r.num_transformers or 0 for r in self.rows), default=0)


@dataclass(frozen=True)
class AttentionStats(Summary):
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
