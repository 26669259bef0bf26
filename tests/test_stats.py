"""stnrepro.results.stats: predictions.csv, cell intervals and paired differences."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest

from stnrepro.errors import DataError
from stnrepro.records.predictions import COLUMNS, Predictions, read_predictions, write_predictions
from stnrepro.results.stats import (
    CUB_TEST_IMAGES,
    binomial_resolution,
    cell_interval,
    paired_difference,
    paper_resolution_pp,
)

N = 1000


def run_from(correct: np.ndarray, source: str = "run") -> Predictions:
    """Predictions on images 1..n: label 0 everywhere, pred 0 where correct, 1 otherwise."""
    correct = np.asarray(correct, dtype=bool)
    ids = np.arange(1, correct.size + 1)
    pred = np.where(correct, 0, 1)
    return Predictions(ids, np.zeros_like(ids), pred, correct, np.ones_like(correct), source)


def right_on(count: int, n: int = N, *, offset: int = 0) -> Predictions:
    correct = np.zeros(n, dtype=bool)
    correct[offset : offset + count] = True
    return run_from(correct)


def random_run(rng: np.random.Generator, p: float, n: int = N) -> Predictions:
    return run_from(rng.random(n) < p)


def test_identical_predictions_give_exactly_zero_and_inconclusive() -> None:
    rng = np.random.default_rng(1)
    single = [random_run(rng, 0.7)]
    result = paired_difference(single, single)
    assert result.diff == 0.0 and result.lo == 0.0 and result.hi == 0.0
    assert result.verdict == "inconclusive" and result.resolution == 0.0

    seeds = [random_run(rng, p) for p in (0.6, 0.7, 0.8)]
    result = paired_difference(seeds, seeds)
    assert result.diff == 0.0 and result.verdict == "inconclusive"
    assert result.lo < 0 < result.hi  # the seed spread still makes the interval non-empty


def test_strict_superset_confirmed_and_swapped_contradicted() -> None:
    a, b = right_on(500), right_on(600)  # B right on A's 500 images plus 100 more
    result = paired_difference([a], [b])
    assert result.diff == pytest.approx(0.1)
    assert result.verdict == "confirmed" and 0 < result.lo < 0.1 < result.hi
    # only the 100 discordant images vary: about 1.96 * sqrt(100 * 0.9) / 1000 = 0.019
    assert 0.015 < result.resolution < 0.023

    swapped = paired_difference([b], [a])
    assert swapped.diff == pytest.approx(-0.1) and swapped.verdict == "contradicted"
    assert swapped.hi < 0


def test_pairing_resolves_what_unpaired_noise_would_not() -> None:
    """B beats A on 30 images and loses on none: unpaired +-2.9 pp would hide 3 pp."""
    a, b = right_on(700), right_on(730)
    assert binomial_resolution(0.7, N) > 0.028
    assert paired_difference([a], [b]).verdict == "confirmed"


def test_disagreement_both_ways_is_inconclusive() -> None:
    a = right_on(600)  # images 0..599
    b = right_on(600, offset=10)  # loses 0..9, wins 600..609: same accuracy
    result = paired_difference([a], [b])
    assert result.diff == 0.0 and result.verdict == "inconclusive"
    assert result.lo < 0 < result.hi and result.resolution > 0


def test_seed_spread_widens_the_cell_interval() -> None:
    rng = np.random.default_rng(2)
    tight = [random_run(rng, 0.7) for _ in range(4)]
    loose = [right_on(k) for k in (600, 800, 650, 750)]  # mean 0.70, spread +-0.08
    tight_cell, loose_cell = cell_interval(tight), cell_interval(loose)
    assert loose_cell.mean == pytest.approx(0.7)
    assert abs(tight_cell.mean - 0.7) < 0.03
    assert loose_cell.hi - loose_cell.lo > 2 * (tight_cell.hi - tight_cell.lo)
    for cell in (tight_cell, loose_cell):
        assert cell.lo < cell.mean < cell.hi


def test_one_run_cell_carries_the_test_set_noise() -> None:
    cell = cell_interval([right_on(700)])
    assert cell.mean == pytest.approx(0.7)
    half = (cell.hi - cell.lo) / 2
    assert half == pytest.approx(binomial_resolution(0.7, N), rel=0.15)


def test_deterministic_for_a_fixed_seed() -> None:
    rng = np.random.default_rng(3)
    runs = [random_run(rng, 0.5) for _ in range(3)]
    other = [random_run(rng, 0.55) for _ in range(2)]
    assert cell_interval(runs) == cell_interval(runs)
    assert paired_difference(runs, other) == paired_difference(runs, other)
    assert cell_interval(runs, seed=1) != cell_interval(runs, seed=2)


def test_top5_column() -> None:
    run = right_on(500)
    assert cell_interval([run], top5=True).mean == 1.0


def test_different_test_images_refused() -> None:
    a = run_from(np.ones(10, dtype=bool), "a/predictions.csv")
    ids = np.arange(2, 12)
    b = Predictions(ids, ids * 0, ids * 0, np.ones(10, bool), np.ones(10, bool), "b/pred.csv")
    with pytest.raises(DataError, match=r"^model A vs model B: a/predictions.csv .*image_id 1"):
        paired_difference([a], [b])
    with pytest.raises(DataError, match=r"^cell: .*expected the same test images$"):
        cell_interval([a, b])
    with pytest.raises(DataError, match="no runs"):
        cell_interval([])


def test_binomial_resolution() -> None:
    assert binomial_resolution(0.84, CUB_TEST_IMAGES) == pytest.approx(0.0094, abs=5e-5)
    assert paper_resolution_pp(84.0) == pytest.approx(0.94, abs=0.005)
    assert binomial_resolution(0.33, 200) == pytest.approx(0.065, abs=5e-4)
    assert binomial_resolution(1.0, 10) == 0.0
    with pytest.raises(ValueError, match=re.escape("p=1.5")):
        binomial_resolution(1.5, 10)


def test_predictions_round_trip(tmp_path: Path) -> None:
    ids = np.array([5, 3, 9])
    run = Predictions(ids, np.array([1, 2, 3]), np.array([1, 0, 3]), [1, 0, 1], [1, 1, 1])
    assert list(run.image_id) == [3, 5, 9] and list(run.pred) == [0, 1, 3]  # sorted by id
    path = tmp_path / "predictions.csv"
    write_predictions(path, run)
    assert path.read_text().splitlines() == [
        "image_id,label,pred,correct,correct_top5",
        "3,2,0,0,1",
        "5,1,1,1,1",
        "9,3,3,1,1",
    ]
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # readable by others
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.csv"]  # no temp file left
    back = read_predictions(path)
    assert back.source == str(path)
    for name in COLUMNS:
        assert np.array_equal(getattr(back, name), getattr(run, name)), name
    assert back.accuracy == pytest.approx(2 / 3)


def test_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "predictions.csv"
    write_predictions(path, right_on(1, n=2))
    before = path.read_text()

    def full_disk(fd: int) -> None:  # the new file is written, then syncing it fails
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_predictions(path, right_on(0, n=2))
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.csv"]


HEADER = "image_id,label,pred,correct,correct_top5\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", ":1: expected header 'image_id,label,pred,correct,correct_top5', got 'an empty"),
        ("id,label,pred,correct,top5\n1,0,0,1,1\n", ":1: expected header"),
        (HEADER, ": no predictions: expected rows after the header"),
        (HEADER + "1,0,0,1,1\n2,0,x,0,1\n", ":3: pred='x': expected an integer"),
        (HEADER + "1,0,0,1\n", ":2: expected 5 fields, got 4"),
        (HEADER + "1,0,0,1,1\n1,0,1,0,1\n", ":3: image_id=1 already on line 2"),
        (HEADER + "1,0,0,2,1\n", ":2: correct=2: expected 0 or 1"),
        (HEADER + "1,0,1,1,1\n", ":2: correct=1 with label=0, pred=1: expected"),
        (HEADER + "1,0,0,1,0\n", ":2: correct=1 but correct_top5=0"),
    ],
)
def test_bad_predictions_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "predictions.csv"
    path.write_text(text)
    with pytest.raises(DataError) as info:
        read_predictions(path)
    assert str(info.value).startswith(f"{path}{message}"), str(info.value)
    assert "\n" not in str(info.value)


def test_inconsistent_arrays_refused() -> None:
    with pytest.raises(DataError, match="image_id 2 appears twice"):
        Predictions([1, 2, 2], [0, 0, 0], [0, 0, 0], [1, 1, 1], [1, 1, 1])
    with pytest.raises(DataError, match="expected equally long"):
        Predictions([1, 2], [0], [0], [1], [1])
    with pytest.raises(DataError, match=r"correct == \(label == pred\)"):
        Predictions([1], [0], [1], [1], [1])
