"""A run's per-image test predictions (``predictions.csv`` next to its ``metrics.json``).

The table's intervals and paired claims (:mod:`stnrepro.results.stats`) are computed from
these files, one row per test image::

    image_id,label,pred,correct,correct_top5
    1,0,0,1,1
    2,0,17,0,1

``correct`` is top-1 (``label == pred``); ``correct_top5`` is whether the label is among the
five highest scores. The run writes the file (atomically) after its test; readers get
:class:`Predictions`, checked for consistency row by row.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stnrepro.errors import DataError
from stnrepro.utils.atomic import write_atomic

COLUMNS = ("image_id", "label", "pred", "correct", "correct_top5")


@dataclass(frozen=True, eq=False)
class Predictions:
    """One run's predictions on a test set, one entry per image, sorted by ``image_id``.

    ``correct`` is top-1 (``label == pred``); ``correct_top5`` is whether the label is among
    the five highest scores.  ``source`` names where they came from, for error messages.
    Columns are numpy arrays, so instances compare by identity (``eq=False``).
    """

    image_id: np.ndarray
    label: np.ndarray
    pred: np.ndarray
    correct: np.ndarray
    correct_top5: np.ndarray
    source: str = "predictions"

    def __post_init__(self) -> None:
        arrays = [np.asarray(getattr(self, name)).ravel() for name in COLUMNS]
        if len({a.size for a in arrays}) != 1 or arrays[0].size == 0:
            sizes = ", ".join(f"{n}={a.size}" for n, a in zip(COLUMNS, arrays, strict=True))
            raise DataError(f"{self.source}: expected equally long, non-empty columns ({sizes})")
        order = np.argsort(arrays[0], kind="stable")
        ids = arrays[0][order]
        if np.any(ids[1:] == ids[:-1]):
            dup = ids[1:][ids[1:] == ids[:-1]][0]
            raise DataError(f"{self.source}: image_id {dup} appears twice: expected unique ids")
        kinds = (np.int64, np.int64, np.int64, bool, bool)
        for name, a, kind in zip(COLUMNS, arrays, kinds, strict=True):
            object.__setattr__(self, name, a[order].astype(kind))
        if np.any(self.correct != (self.label == self.pred)) or np.any(
            self.correct & ~self.correct_top5
        ):
            raise DataError(
                f"{self.source}: expected correct == (label == pred) and correct_top5 true "
                "wherever correct is"
            )

    @property
    def accuracy(self) -> float:
        """Top-1 accuracy as a fraction."""
        return float(self.correct.mean())


def write_predictions(path: str | Path, predictions: Predictions) -> str:
    """Write ``predictions.csv`` whole or not at all (``stnrepro.utils.atomic``).

    Returns the sha256 of the bytes written, which the run's record keeps so that a reader
    can tell the file is the one the run wrote.
    """
    text = io.StringIO(newline="")
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(COLUMNS)
    columns = [getattr(predictions, name).astype(np.int64).tolist() for name in COLUMNS]
    writer.writerows(zip(*columns, strict=True))
    data = text.getvalue().encode("utf-8")
    write_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


def read_predictions(path: str | Path, data: bytes | None = None) -> Predictions:
    """Read ``predictions.csv`` (or its bytes ``data``, already read from ``path``); bad input
    raises DataError ``path:line: ... expected ...``."""
    path = Path(path)
    if data is None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}): expected a CSV file") from None
    rows = list(csv.reader(io.StringIO(text, newline="")))
    if not rows or tuple(c.strip() for c in rows[0]) != COLUMNS:
        got = ",".join(rows[0]) if rows else "an empty file"
        raise DataError(f"{path}:1: expected header {','.join(COLUMNS)!r}, got {got!r}")
    values: list[list[int]] = []
    seen: dict[int, int] = {}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(COLUMNS):
            raise DataError(f"{path}:{line}: expected {len(COLUMNS)} fields, got {len(row)}")
        ints = []
        for name, text in zip(COLUMNS, row, strict=True):
            try:
                ints.append(int(text))
            except ValueError:
                raise DataError(f"{path}:{line}: {name}={text!r}: expected an integer") from None
        image_id, label, pred, correct, top5 = ints
        for name, flag in (("correct", correct), ("correct_top5", top5)):
            if flag not in (0, 1):
                raise DataError(f"{path}:{line}: {name}={flag}: expected 0 or 1")
        if correct != (label == pred):
            raise DataError(
                f"{path}:{line}: correct={correct} with label={label}, pred={pred}: "
                "expected correct = 1 exactly when label == pred"
            )
        if correct and not top5:
            raise DataError(f"{path}:{line}: correct=1 but correct_top5=0: expected top-5 = 1")
        if image_id in seen:
            raise DataError(
                f"{path}:{line}: image_id={image_id} already on line {seen[image_id]}: "
                "expected each image once"
            )
        seen[image_id] = line
        values.append(ints)
    if not values:
        raise DataError(f"{path}: no predictions: expected rows after the header")
    image_id, label, pred, correct, top5 = np.array(values, dtype=np.int64).T
    return Predictions(image_id, label, pred, correct, top5, source=str(path))
