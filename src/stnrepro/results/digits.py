"""The digit experiment's table (the paper's Table 1): records in, a ``DigitTable`` out.

Rows are models (``FCN``, ``CNN``, ``ST-CNN Aff``, ... by :func:`model_label`), columns are
distortions (``data.distortion``), and a cell is the test ERROR in % (100 - accuracy in %),
mean ± sample std over seeds, as the paper reports it; lower is better. The rules are the
bird table's (``stnrepro.results.aggregate``): latest finished rerun per seed, failed and
unfinished runs counted and excluded, runs of a cell differing only in their seed, datasets
never mixed. The paper's numbers (``paper_other_tables.csv``, table ``distorted_mnist``)
are MNIST's: they stand beside ours only for ``data.name=mnist``, never beside another
dataset's as if comparable.

Claims: per distortion, each ST model over the baseline of its backbone (``ST-CNN *`` over
``CNN``, ``ST-FCN *`` over ``FCN``), paired on the same test images from the runs'
``predictions.csv`` (``stnrepro.results.stats.paired_difference``). Differences are in
ERROR: ``delta`` = error(ST) - error(baseline) in pp, negative when the ST is better, and
the verdict is on "the ST has the lower error". The distorted test images are the same for
every model and seed of a table (they come from ``data.test_seed``); runs recorded with
different test seeds are refused rather than paired.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib import resources
from operator import attrgetter

from stnrepro.records.schema import DIGIT_BACKBONES, TRANSFORM_LABELS, RunRecord
from stnrepro.results.aggregate import aggregate, cell_stats, describe_values, is_accuracy
from stnrepro.results.agreement import check_cell
from stnrepro.results.claims import predictions_of
from stnrepro.results.environment import differences, environment_lines
from stnrepro.results.model import Summary, TableData, TableError, plural, show
from stnrepro.results.stats import (
    MNIST_TEST_IMAGES,
    binomial_resolution,
    cell_interval,
    paired_difference,
)

PAPER_RESOURCE = "paper_other_tables.csv"
PAPER_TABLE = "distorted_mnist"  # the ``table`` column's value of Table 1's rows
PAPER_METRIC = "error_pct"
PAPER_DATASET = "mnist"  # the paper's Table 1 numbers are on (distorted) MNIST
PAPER_SOURCE = "Jaderberg et al. 2015 Table 1"
CLAIMS_METRIC = "test/acc"  # the paper's numbers are top-1 test error
_TEST_SEED = "data.test_seed"


@dataclass(frozen=True)
class DigitCell(Summary):
    """Our runs of one (model, distortion) cell; ``values`` are error % (100 - acc %) for an
    accuracy metric, else the metric as recorded. ``paper_value`` is the paper's error %
    (only on MNIST); ``interval`` the 95% interval of the error (lo, hi), from predictions."""

    model: str
    distortion: str
    runs: tuple[RunRecord, ...] = ()
    values: tuple[float, ...] = ()
    failed: int = 0
    unfinished: int = 0
    duplicates: int = 0
    paper_value: float | None = None
    interval: tuple[float, float] | None = None
    missing: tuple[str, ...] = ()  # used runs without predictions
    env_differs: tuple[str, ...] = ()

    @property
    def excluded(self) -> int:
        return self.failed + self.unfinished

    @property
    def delta(self) -> float | None:
        """Ours - paper (error, pp), where the paper has the cell and we have runs."""
        if self.paper_value is None or self.mean is None:
            return None
        return self.mean - self.paper_value


@dataclass(frozen=True)
class DigitClaim:
    """``b`` (an ST model) over ``a`` (its baseline) in one distortion, in ERROR pp.

    ``delta`` = error(b) - error(a): negative when b is better; ``verdict`` is on "b has
    the lower error": confirmed when the whole interval is below 0, contradicted above 0.
    Without predictions on a side ``delta`` is the difference of the means, the rest None.
    """

    distortion: str
    a: DigitCell
    b: DigitCell
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
        return f"{self.b.model} over {self.a.model}, {self.distortion}"


@dataclass(frozen=True)
class DigitTable:
    """Everything the renderers need for Table 1 (see the module docstring)."""

    dataset: str
    backbones: tuple[str, ...]
    metric: str
    error: bool  # values are error % (100 - accuracy %), lower is better
    compare_to_paper: bool  # MNIST and the top-1 metric: the paper's numbers stand beside
    models: tuple[str, ...]
    distortions: tuple[str, ...]
    cells: tuple[DigitCell, ...]
    n_used: int
    n_failed: int
    n_unfinished: int
    n_duplicates: int
    environments: tuple[str, ...] = ()
    n_no_config: int = 0
    intervals: bool = False
    claims: tuple[DigitClaim, ...] | None = None
    paper_source: str = PAPER_SOURCE
    attention: bool = False  # digit transformers have no bird box to score attention on

    @property
    def backbone(self) -> str:
        return ", ".join(self.backbones)

    @property
    def digits(self) -> int:
        return 1 if self.error else 3

    def cell(self, model: str, distortion: str) -> DigitCell | None:
        return next(
            (c for c in self.cells if c.model == model and c.distortion == distortion), None
        )


# --------------------------------------------------------------------------- paper table


def load_paper_digits(text: str | None = None) -> dict[tuple[str, str], float]:
    """The paper's Table 1 errors (%) as {(model, distortion): value}, in the CSV's order."""
    if text is None:
        text = (resources.files("stnrepro.results") / PAPER_RESOURCE).read_text(encoding="utf-8")
    reader = csv.DictReader(io.StringIO(text))
    expected = ("table", "setting", "model", "metric", "value")
    if tuple(reader.fieldnames or ()) != expected:
        raise TableError(
            f"{PAPER_RESOURCE}: expected columns {','.join(expected)}, "
            f"got {','.join(reader.fieldnames or ())}"
        )
    values: dict[tuple[str, str], float] = {}
    for line, raw in enumerate(reader, start=2):
        if raw["table"] != PAPER_TABLE or raw["metric"] != PAPER_METRIC:
            continue
        try:
            values[(raw["model"], raw["setting"])] = float(raw["value"])
        except ValueError:
            raise TableError(
                f"{PAPER_RESOURCE}:{line}: value must be a number, got {raw['value']!r}"
            ) from None
    if not values:
        raise TableError(f"{PAPER_RESOURCE}: no rows of table {PAPER_TABLE} ({PAPER_METRIC})")
    return values


# --------------------------------------------------------------------------- order


_BACKBONE_ORDER = {name: i for i, name in enumerate(DIGIT_BACKBONES.values())}
_TRANSFORM_ORDER = {name: i for i, name in enumerate(TRANSFORM_LABELS.values())}


def _model_order(label: str) -> tuple[int, int, int, str]:
    """The paper's row order: baselines (FCN, CNN), then ST-FCN *, then ST-CNN *, each by
    transform (Aff, Proj, TPS); names it does not know after, alphabetically."""
    base, _, transform = label.partition(" ")
    st = base.rsplit("ST-", 1)
    backbone = st[-1]
    return (
        len(st) - 1,
        _BACKBONE_ORDER.get(backbone, len(_BACKBONE_ORDER)),
        _TRANSFORM_ORDER.get(transform, len(_TRANSFORM_ORDER)) if transform else -1,
        label,
    )


def _ordered(ours: set[str], paper: Sequence[str], all_of_paper: bool) -> tuple[str, ...]:
    """The paper's distortions in its order (all of them when ``all_of_paper``, else those
    of ours), then the others of ours alphabetically."""
    known = [d for d in dict.fromkeys(paper) if all_of_paper or d in ours]
    return (*known, *sorted(ours - set(known)))


# --------------------------------------------------------------------------- aggregation


def _check_setup(picked: Sequence[RunRecord]) -> None:
    for flag, hint, get in (
        ("dataset", "--dataset NAME", lambda r: r.cell.dataset),
        ("pretrained", "--pretrained/--no-pretrained", lambda r: r.cell.pretrained),
    ):
        if len({get(r) for r in picked}) > 1:
            raise TableError(
                f"digit runs mix {flag} ({describe_values(picked, get)}); one table never "
                f"merges them: pick one with {hint}"
            )
    missing = [r for r in picked if r.cell.distortion is None]
    if missing:
        raise TableError(
            f"{missing[0].source}: a digit run without cell.distortion "
            f"({plural(len(missing), 'run')}); Table 1's columns are distortions: expected "
            "data.distortion (none, R, RTS, P or E) in the run's cell"
        )


def _cell_sizes(key: tuple[str, str], runs: Sequence[RunRecord]) -> None:
    if len({r.cell.image_size for r in runs}) > 1:
        raise TableError(
            f"cell {key[0]} / {key[1]}: runs mix image_size "
            f"({describe_values(runs, lambda r: r.cell.image_size)}); one cell is one setup: "
            "put the runs of each size under separate directories"
        )


def _as_error(stats_values: tuple[float, ...], error: bool) -> tuple[float, ...]:
    return tuple(100.0 - v for v in stats_values) if error else stats_values


def aggregate_digits(
    records: Sequence[RunRecord],
    metric: str = "test/acc",
    paper: dict[tuple[str, str], float] | None = None,
) -> DigitTable:
    """Build Table 1 from digit run records (already filtered and of one kind)."""
    placed = [r for r in records if r.placed]
    unplaced = [r for r in records if not r.placed]
    if not placed:
        raise TableError(f"all {len(records)} runs failed before their cell was known")
    _check_setup(placed)
    dataset = placed[0].cell.dataset
    error = is_accuracy(metric)
    compare = dataset == PAPER_DATASET and metric == CLAIMS_METRIC
    paper_values = (paper if paper is not None else load_paper_digits()) if compare else {}

    by_cell: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    for r in placed:
        by_cell[(r.cell.model, str(r.cell.distortion))].append(r)
    n_no_config = 0
    for key, runs in sorted(by_cell.items()):
        _cell_sizes(key, runs)
        n_no_config += check_cell(f"{key[0]} / {key[1]}", runs)

    models = tuple(sorted({m for m, _ in by_cell} | {m for m, _ in paper_values}, key=_model_order))
    # The paper's column order (R, RTS, P, E) for every dataset, compared or not.
    paper_order = paper if paper is not None else load_paper_digits()
    distortions = _ordered({d for _, d in by_cell}, [d for _, d in paper_order], compare)
    top = metric in ("test/acc", "test/acc_top5")
    cache: dict = {}
    cells = []
    for model in models:
        for distortion in distortions:
            runs = by_cell.get((model, distortion), [])
            first = runs[0].cell if runs else None
            s = cell_stats(
                first.image_size if first else 0, first.num_transformers if first else 0,
                runs, metric, error,
            )  # fmt: skip
            interval: tuple[float, float] | None = None
            missing: tuple[str, ...] = ()
            if top and s.runs:
                found, missing = predictions_of(s.runs, cache)
                if found:
                    iv = cell_interval(found, top5=metric.endswith("_top5"))
                    interval = (100 * (1 - iv.hi), 100 * (1 - iv.lo))
            cells.append(
                DigitCell(
                    model=model,
                    distortion=distortion,
                    runs=s.runs,
                    values=_as_error(s.values, error),
                    failed=s.failed,
                    unfinished=s.unfinished,
                    duplicates=s.duplicates,
                    paper_value=paper_values.get((model, distortion)),
                    interval=interval,
                    missing=missing,
                    env_differs=differences(s.runs) if s.runs else (),
                )
            )
    n_used = sum(c.n for c in cells)
    n_failed = sum(c.failed for c in cells) + sum(r.status == "failed" for r in unplaced)
    n_unfinished = sum(c.unfinished for c in cells) + sum(r.status != "failed" for r in unplaced)
    if n_used == 0:
        raise TableError(
            f"all {len(records)} runs failed or are unfinished "
            f"({n_failed} failed, {n_unfinished} unfinished): nothing to tabulate"
        )
    table = DigitTable(
        dataset=dataset,
        backbones=tuple(sorted({r.cell.backbone for r in placed})),
        metric=metric,
        error=error,
        compare_to_paper=compare,
        models=models,
        distortions=distortions,
        cells=tuple(cells),
        n_used=n_used,
        n_failed=n_failed,
        n_unfinished=n_unfinished,
        n_duplicates=sum(c.duplicates for c in cells),
        environments=tuple(environment_lines([run for c in cells for run in c.runs])),
        n_no_config=n_no_config,
        intervals=top,
    )
    if metric != CLAIMS_METRIC:
        return table
    baselines = {m: base for m in models if (base := _baseline(m)) is not None}
    claims = [
        digit_claim(d, a, b, cache)
        for d in distortions
        for model in models
        if model in baselines
        and (b := table.cell(model, d)) is not None
        and (a := table.cell(baselines[model], d)) is not None
        and (b.n or b.paper_value is not None)
        and (a.n or a.paper_value is not None)
    ]
    return replace(table, claims=tuple(claims))


def _baseline(model: str) -> str | None:
    """The model an ST model is compared with, the baseline of its backbone: ``ST-CNN TPS``
    -> ``CNN``, ``ST-FCN Aff`` -> ``FCN``; None for a baseline."""
    base = model.partition(" ")[0]
    return base.rsplit("ST-", 1)[1] if "ST-" in base else None


def _test_seeds(runs: Sequence[RunRecord]) -> set[str]:
    return {show(r.config[_TEST_SEED]) for r in runs if r.config and _TEST_SEED in r.config}


def digit_claim(distortion: str, a: DigitCell, b: DigitCell, cache: dict) -> DigitClaim:
    """``b`` over ``a`` in ERROR pp (module docstring): paper's, and ours paired."""
    paper_delta = paper_resolution = None
    if a.paper_value is not None and b.paper_value is not None:
        paper_delta = b.paper_value - a.paper_value
        paper_resolution = 100 * max(
            binomial_resolution(v / 100, MNIST_TEST_IMAGES) for v in (a.paper_value, b.paper_value)
        )
    seeds = _test_seeds((*a.runs, *b.runs))
    if len(seeds) > 1:
        raise TableError(
            f"{b.model} over {a.model}, {distortion}: runs were tested on different distorted "
            f"test sets ({_TEST_SEED} {', '.join(sorted(seeds))}); a paired comparison needs "
            "the same test images: rerun with one test seed or split the table with "
            f"--split-by {_TEST_SEED}"
        )
    found_a, missing_a = predictions_of(a.runs, cache)
    found_b, missing_b = predictions_of(b.runs, cache)
    missing = missing_a + missing_b
    if not found_a or not found_b:
        delta = None if a.mean is None or b.mean is None else b.mean - a.mean
        return DigitClaim(distortion, a, b, paper_delta, paper_resolution, delta, missing=missing)
    # Accuracy b - a; the error difference is its negative, and "b has the higher
    # accuracy" (the verdict's claim) is "b has the lower error": the verdict carries over.
    d = paired_difference(found_a, found_b)
    return DigitClaim(
        distortion,
        a,
        b,
        paper_delta,
        paper_resolution,
        delta=-100 * d.diff,
        lo=-100 * d.hi,
        hi=-100 * d.lo,
        verdict=d.verdict,
        resolution=100 * d.resolution,
        missing=missing,
    )


# --------------------------------------------------------------------------- dispatch


def _filtered(
    records: Sequence[RunRecord], filters: Sequence[tuple[str, object]]
) -> list[RunRecord]:
    """The placed records that pass the user's ``--dataset``/``--backbone``/``--pretrained``;
    a filter that keeps nothing is refused, naming what there is."""
    picked = [r for r in records if r.placed]
    for flag, value in filters:
        if value is None:
            continue
        kept = [r for r in picked if getattr(r.cell, flag) == value]
        if not kept:
            found = describe_values(picked, attrgetter(f"cell.{flag}"))
            raise TableError(f"no runs with {flag}={show(value)} (found {found})")
        picked = kept
    return picked


def build_table(
    records: Sequence[RunRecord],
    metric: str = "test/acc",
    dataset: str | None = None,
    backbone: str | None = None,
    pretrained: bool | None = None,
    attention: bool = False,
) -> TableData | DigitTable:
    """The table the records make: the bird Table 3 (``aggregate``) or the digit Table 1.

    The kind comes from the records that pass the filters: a digit backbone or a distortion
    in the cell makes a digit run (``RunCell.is_digit``); bird and digit runs in one table
    are refused in one line.
    """
    if not records:
        raise TableError("no run records to tabulate")
    filters = (("dataset", dataset), ("backbone", backbone), ("pretrained", pretrained))
    picked = _filtered(records, filters)
    digit = [r for r in picked if r.cell.is_digit]
    if not digit:
        return aggregate(
            records, metric=metric, dataset=dataset, backbone=backbone,
            pretrained=pretrained, attention=attention,
        )  # fmt: skip
    if len(digit) < len(picked):
        birds = [r for r in picked if not r.cell.is_digit]
        raise TableError(
            f"runs mix the bird experiment (Table 3: {plural(len(birds), 'run')}, backbone "
            f"{describe_values(birds, lambda r: r.cell.backbone)}) and the digit experiment "
            f"(Table 1: {plural(len(digit), 'run')}, e.g. {digit[0].source}); one table never "
            "merges them: pick one with --dataset NAME or put them under separate directories"
        )
    if attention:
        raise TableError(
            "--with-attention: the digit table (Table 1) has no attention metrics (there is "
            "no bird box to score the transformers' crops on); drop --with-attention"
        )
    return aggregate_digits([*digit, *(r for r in records if not r.placed)], metric)
