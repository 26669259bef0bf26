"""How sure a table cell or a difference between two cells is: per-image predictions + bootstrap.

Why: a run's top-1 accuracy on n test images carries binomial noise of its own (about
+-0.94 pp at 95% on CUB's 5,794 test images at 84%), and a second run with another seed lands
elsewhere again.  An interval for a cell must carry both sources, and two models scored on
the SAME images are compared far more tightly by pairing them image by image (Dietterich 1998;
Bouthillier et al. 2021).  Both need each run's per-image predictions, stored next to the run
as ``predictions.csv`` (:mod:`stnrepro.records.predictions`).

Conventions: accuracies are fractions in [0, 1] (not percent) unless a name ends in ``_pp``;
every interval is a percentile bootstrap at ``LEVEL`` with ``DRAWS`` draws from a numpy
generator seeded with ``SEED``, so the same runs always give the same numbers.  A cell's runs
must all cover the same test images; "model B minus model A" is the sign of every difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

import numpy as np

from stnrepro.errors import DataError
from stnrepro.records.predictions import Predictions

LEVEL = 0.95
DRAWS = 2000
SEED = 0
CUB_TEST_IMAGES = 5794  # CUB-200-2011's official test split (train_test_split.txt == 0)
# MNIST's test set (t10k); the paper's distorted test sets are taken to be it, distorted.
MNIST_TEST_IMAGES = 10000
_CHUNK = 128  # bootstrap draws per vectorised block: keeps memory ~ _CHUNK x n_images x 8 B

Verdict = Literal["confirmed", "contradicted", "inconclusive"]


@dataclass(frozen=True)
class Interval:
    """A cell's mean accuracy over its runs with a ``LEVEL`` interval (fractions)."""

    mean: float
    lo: float
    hi: float


@dataclass(frozen=True)
class Difference:
    """Model B minus model A on the same images, with its interval and what it could resolve.

    ``resolution`` is the interval's half-width, ``(hi - lo) / 2``: an interval this wide
    around a difference smaller than it in magnitude would contain 0, so with these runs
    (seeds and images) such a difference would come out ``inconclusive``.
    """

    diff: float
    lo: float
    hi: float
    verdict: Verdict
    resolution: float


def _correct_matrix(runs: Sequence[Predictions], what: str, top5: bool) -> np.ndarray:
    """Stack the runs' per-image correctness (runs x images, float64) after checking ids."""
    if not runs:
        raise DataError(f"{what}: no runs: expected at least one run's predictions")
    first = runs[0]
    for run in runs[1:]:
        if not np.array_equal(run.image_id, first.image_id):
            raise DataError(f"{what}: {_id_mismatch(first, run)}")
    return np.stack([r.correct_top5 if top5 else r.correct for r in runs]).astype(np.float64)


def _id_mismatch(a: Predictions, b: Predictions) -> str:
    only_a = np.setdiff1d(a.image_id, b.image_id)
    only_b = np.setdiff1d(b.image_id, a.image_id)
    extra, owner = (only_a, a) if only_a.size else (only_b, b)
    example = f"e.g. image_id {extra[0]} only in {owner.source}"
    return (
        f"{a.source} ({a.image_id.size} images) and {b.source} ({b.image_id.size} images) "
        f"cover different test images ({only_a.size} only in the first, {only_b.size} only "
        f"in the second; {example}): expected the same test images"
    )


def _counts(rng: np.random.Generator, rows: int, n: int) -> np.ndarray:
    """``rows`` resamples of ``n`` items with replacement, as counts per item (rows x n)."""
    picks = rng.integers(0, n, size=(rows, n)) + (np.arange(rows) * n)[:, None]
    return np.bincount(picks.ravel(), minlength=rows * n).reshape(rows, n).astype(np.float64)


def _bootstrap_means(groups: Sequence[np.ndarray], draws: int, seed: int) -> np.ndarray:
    """Resampled mean accuracy of each group per draw (draws x groups).

    Each draw resamples the test images with replacement once, shared by every run of every
    group (the images are the same), and each group's runs (seeds) with replacement
    independently.  Counts times 0/1 correctness are integers, so float64 sums are exact and
    identical groups under identical counts give identical means.
    """
    rng = np.random.default_rng(seed)
    n = groups[0].shape[1]
    out = np.empty((draws, len(groups)))
    for start in range(0, draws, _CHUNK):
        rows = min(_CHUNK, draws - start)
        images = _counts(rng, rows, n)
        for k, correct in enumerate(groups):
            per_run = images @ correct.T  # rows x runs: correct answers under the image draw
            seeds = _counts(rng, rows, correct.shape[0])
            out[start : start + rows, k] = (seeds * per_run).sum(axis=1) / correct.size
    return out


def _quantiles(values: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def cell_interval(
    runs: Sequence[Predictions],
    *,
    draws: int = DRAWS,
    seed: int = SEED,
    level: float = LEVEL,
    top5: bool = False,
) -> Interval:
    """Mean accuracy of a cell's runs with an interval carrying seed AND test-set noise.

    Hierarchical bootstrap: each draw resamples the runs (seeds) with replacement and the
    test images with replacement, the same image resample for every run of the draw.
    With one run only the test-set noise remains.
    """
    correct = _correct_matrix(runs, "cell", top5)
    lo, hi = _quantiles(_bootstrap_means([correct], draws, seed)[:, 0], level)
    return Interval(mean=float(correct.mean()), lo=lo, hi=hi)


def paired_difference(
    runs_a: Sequence[Predictions],
    runs_b: Sequence[Predictions],
    *,
    draws: int = DRAWS,
    seed: int = SEED,
    level: float = LEVEL,
    top5: bool = False,
) -> Difference:
    """Model B minus model A, paired on the same test images, with a verdict.

    Each draw resamples the images once (shared by A and B, which is the pairing: images
    both get right or both get wrong cancel) and each side's seeds independently.
    ``confirmed``: the whole interval is above 0 (B better); ``contradicted``: below 0;
    otherwise ``inconclusive`` (a zero-width interval at 0 included).
    """
    a = _correct_matrix(runs_a, "model A", top5)
    b = _correct_matrix(runs_b, "model B", top5)
    if not np.array_equal(runs_a[0].image_id, runs_b[0].image_id):
        raise DataError(f"model A vs model B: {_id_mismatch(runs_a[0], runs_b[0])}")
    means = _bootstrap_means([a, b], draws, seed)
    lo, hi = _quantiles(means[:, 1] - means[:, 0], level)
    verdict: Verdict = "confirmed" if lo > 0 else "contradicted" if hi < 0 else "inconclusive"
    diff = float(b.mean() - a.mean())
    return Difference(diff=diff, lo=lo, hi=hi, verdict=verdict, resolution=(hi - lo) / 2)


def binomial_resolution(p: float, n: int, *, level: float = LEVEL) -> float:
    """Half-width of one run's normal-approximation interval, z * sqrt(p (1 - p) / n).

    z = 1.96 at the default 95%.  ``p`` and the result are fractions.
    """
    if not 0 <= p <= 1 or n < 1:
        raise ValueError(f"p={p}, n={n}: expected 0 <= p <= 1 and n >= 1")
    z = NormalDist().inv_cdf((1 + level) / 2)
    return z * float(np.sqrt(p * (1 - p) / n))


def paper_resolution_pp(top1_percent: float, n: int = CUB_TEST_IMAGES) -> float:
    """Test-set resolution of one of the paper's single-run numbers, in percentage points.

    E.g. 84.1 (% top-1 on CUB's 5,794 test images) -> about 0.94: a reproduction within
    that of the paper cannot be told apart from it by the test set alone.
    """
    return 100 * binomial_resolution(top1_percent / 100, n)
