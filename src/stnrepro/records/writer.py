"""The writer of a run's record (``metrics.json``, schema in ``stnrepro.records.schema``).

The file is always replaced atomically (write a temporary file, then rename), so a reader
never sees half a record, and it is written at start (status ``running``), at the end
(``finished``) and on an error (``failed`` with a one-line ``error``): a run killed without
warning stays ``running`` and is counted as unfinished.

Attempts: a run that is stopped and continued in the same folder (a resume, a SLURM requeue)
has one record, rewritten by each attempt. ``started_at``, ``finished_at`` and ``wall_time_s``
are the latest attempt's; ``attempts`` lists every attempt, oldest first, with its start, end,
duration, how it ended and why, so a requeued run's whole cost stays visible
(:meth:`RecordWriter.carry_attempts` copies the earlier ones).
"""

from __future__ import annotations

import contextlib
import errno
import math
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from stnrepro.errors import one_line
from stnrepro.records.schema import (
    CELL_KEYS,
    RECORD_FILENAME,
    SCHEMA_VERSION,
    is_digit_backbone,
    model_label,
)
from stnrepro.utils.atomic import write_json_atomic

# Room set aside next to the record, so that a full disk cannot keep a run's end unrecorded.
RESERVE_NAME = ".metrics.json.reserve"
RESERVE_BYTES = 64 * 1024

# A failed run's error is cut to this many characters (a DataLoader traceback can be huge).
MAX_ERROR_CHARS = 2000


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_name(cell: Mapping[str, Any]) -> str:
    """Readable run name shared by W&B and the record, from its ``cell`` (``table_cell``).

    Bird runs: model, input size, seed, e.g. ``4xST-448-s1``, ``CNN-224-s0``. Digit runs
    (Table 1): model, distortion (the input size when there is none), seed, e.g.
    ``ST-CNN-TPS-RTS-s0``, ``CNN-R-s1``. Spaces become ``-``: names are used in shell
    patterns (``stn-dash --name``). ``?`` for a value not known (refused as bad).
    """
    nt = cell.get("num_transformers")
    backbone, transform = cell.get("backbone"), cell.get("transform")
    model = "?" if nt is None else model_label(nt, backbone, transform).replace(" ", "-")
    where = cell.get("image_size")
    if is_digit_backbone(backbone) or cell.get("distortion") is not None:
        where = cell.get("distortion") or where
    shown = ["?" if v is None else v for v in (where, cell.get("seed"))]
    return f"{model}-{shown[0]}-s{shown[1]}"


def table_cell(cfg: DictConfig) -> dict[str, Any]:
    """The config values that define a run's table cell (and that must not be mixed).

    A value the schema would not accept (``model.num_transformers=-1``,
    ``data.image_size=abc``) is recorded as null: such a run is refused before it starts, its
    record's error names the value, and the record stays readable for the table, which
    counts it as failed. A key added after schema 1 (``distortion``) is left out when the
    run has no value for it, so records of runs without it keep their schema-1 cell.
    """
    cell = {}
    for key in CELL_KEYS:
        value = OmegaConf.select(cfg, key.config)
        value = value if value is not None and key.accepts(value) else None
        if value is not None or not key.added:
            cell[key.name] = value
    return cell


def _json_scalar(value: Any) -> Any:
    """JSON-safe scalars: tensors to floats, non-finite floats to None."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RecordWriter:
    """Builds and rewrites one run's ``metrics.json``; ``data`` is the record as a dict.

    ``write=False`` keeps the record in memory only: DDP ranks other than 0 build the same
    record (``train`` returns it) but the run has one file, written by rank 0. ``job`` names
    the batch job this attempt runs in (a SLURM job id), kept in its ``attempts`` entry.
    """

    def __init__(
        self,
        output_dir: str | Path,
        cell: dict[str, Any],
        epochs: int | None,
        config: dict[str, Any] | None = None,
        write: bool = True,
        job: str | None = None,
    ) -> None:
        self.write = write
        self.path = Path(output_dir) / RECORD_FILENAME
        self.data: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "status": "running",
            "error": None,
            "run_name": run_name(cell),
            "started_at": now_iso(),
            "finished_at": None,
            "cell": cell,
            "metrics": {},
            "logger": {"name": "none", "run_id": None, "project": None, "group": None, "dir": None},
            "epochs": epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else None,
            "wall_time_s": None,
            "output_dir": str(Path(output_dir).resolve()),
            "config": config,
            "provenance": None,
            "predictions": None,  # the predictions file's name, next to metrics.json
            "predictions_sha256": None,  # its sha256 as written
            "test_images": None,  # the test images it scores (its rows)
            "attempts": [],
        }
        self._t0 = datetime.now(timezone.utc)
        self.attempt: dict[str, Any] = {
            "started_at": self.data["started_at"],
            "ended_at": None,  # stays null when the attempt is killed without warning
            "wall_time_s": None,
            "status": "running",
            "reason": None,  # why it ended, when not finished: the error or the interruption
            "job": job,
        }
        self.data["attempts"].append(self.attempt)
        self._reserved = False

    def save(self) -> None:
        """Write the record (atomically). The first save also sets aside a little room
        (:data:`RESERVE_BYTES`, a hidden file) that a later save may use when the disk is
        full, so a run that fails for lack of space still records that it failed."""
        if not self.write:
            return
        reserve = self.path.with_name(RESERVE_NAME)
        try:
            write_json_atomic(self.path, self.data)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or not reserve.exists():
                raise
            reserve.unlink()
            write_json_atomic(self.path, self.data)
        if not self._reserved:
            self._reserved = True
            with contextlib.suppress(OSError):  # only a precaution
                reserve.write_bytes(bytes(RESERVE_BYTES))

    def _release_reserve(self) -> None:
        if self.write:
            self.path.with_name(RESERVE_NAME).unlink(missing_ok=True)

    def carry_metrics(self, previous: dict[str, Any] | None) -> None:
        """Start from the metrics an earlier attempt of this same run recorded (a resume);
        what this attempt logs replaces them key by key."""
        metrics = (previous or {}).get("metrics")
        if isinstance(metrics, dict):
            self.data["metrics"] = dict(metrics)

    def carry_attempts(self, previous: dict[str, Any] | None) -> None:
        """Put the attempts an earlier record of this same run lists before this one.

        A record written before ``attempts`` existed stands for one attempt, made from its
        own ``started_at``, ``finished_at``, ``wall_time_s``, ``status`` and ``error``.
        """
        if not isinstance(previous, dict):
            return
        earlier = previous.get("attempts")
        if not isinstance(earlier, list):
            earlier = [
                {
                    "started_at": previous.get("started_at"),
                    "ended_at": previous.get("finished_at"),
                    "wall_time_s": previous.get("wall_time_s"),
                    "status": previous.get("status"),
                    "reason": previous.get("error"),
                    "job": None,
                }
            ]
        self.data["attempts"] = [a for a in earlier if isinstance(a, dict)] + [self.attempt]

    def update_metrics(self, metrics: dict[str, Any]) -> None:
        self.data["metrics"].update({k: _json_scalar(v) for k, v in sorted(metrics.items())})

    def _end(self, status: str, error: str | None) -> None:
        self.data["status"] = status
        self.data["error"] = error
        self.data["finished_at"] = now_iso()
        elapsed = datetime.now(timezone.utc) - self._t0
        self.data["wall_time_s"] = round(elapsed.total_seconds(), 3)
        self.attempt.update(
            ended_at=self.data["finished_at"],
            wall_time_s=self.data["wall_time_s"],
            status=status,
            reason=error,
        )
        self.save()
        self._release_reserve()  # the run is over

    def finish(self) -> None:
        self._end("finished", None)

    def interrupt(self, reason: str) -> None:
        """Stopped from outside (Ctrl-C, SIGTERM, a SLURM time limit or preemption);
        ``reason`` names the cause and says how the run continues."""
        self._end("interrupted", reason[:MAX_ERROR_CHARS])

    def fail(self, error: BaseException | str) -> None:
        if not isinstance(error, str):
            error = f"{type(error).__name__}: {one_line(error)}"
        self._end("failed", error[:MAX_ERROR_CHARS])
