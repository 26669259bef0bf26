"""A CSV logger whose history survives a resumed run.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it starts, so a run
resumed in its output folder would keep only the epochs after the resume. The
:class:`CSVLogger` here (same name and arguments, so run records still say ``csv``) keeps
the rows already there and appends to them. Rows logged after the checkpoint the run
resumed from were lost with the interrupted attempt and are logged again: the first row
the new attempt logs is at step ``s``, so every kept row whose ``step`` is ``s`` or later
is dropped (a fresh start, at step 0, drops them all).
"""

from __future__ import annotations

import csv
from typing import Any

from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.loggers import CSVLogger as LightningCSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter


class _ResumableWriter(ExperimentWriter):
    """``ExperimentWriter`` that reads the existing file instead of deleting it."""

    def _check_log_dir_exists(self) -> None:  # called by the base __init__
        self._kept: list[dict[str, str]] | None = None
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                reader = csv.DictReader(file)
                self._kept = list(reader)
                # The base class appends rows under these columns, or rewrites the file
                # with a wider header when new keys come.
                self.metrics_keys = sorted(reader.fieldnames or [])

    def log_metrics(self, metrics_dict: dict[str, float], step: int | None = None) -> None:
        if self._kept is not None:
            first = len(self.metrics) if step is None else step
            self._rewrite([row for row in self._kept if _step(row) < first])
            self._kept = None
        super().log_metrics(metrics_dict, step)

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        with self._fs.open(self.metrics_file_path, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(rows)


def _step(row: dict[str, str]) -> float:
    """A row's step; a row without a readable one cannot be placed and is kept."""
    try:
        return float(row["step"])
    except (KeyError, TypeError, ValueError):
        return float("-inf")


class CSVLogger(LightningCSVLogger):
    """Lightning's ``CSVLogger`` that continues ``metrics.csv`` of a resumed run."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumableWriter(log_dir=self.log_dir)
        assert isinstance(self._experiment, _ResumableWriter)  # only this property sets it
        return self._experiment
