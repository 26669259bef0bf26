"""Run records: the ``metrics.json`` every training run writes, read from disk or from W&B.

A record is parsed and validated once, here, so the table code can trust its types; any
problem is reported as one line naming the file (or W&B run) and what is wrong, because a
silently skipped run would make the table lie about n.

Schema (version 1)::

    schema_version  int, must be 1
    status          "finished" | "failed" | "running"   (running = unfinished or killed)
    error           str | null                           (one line when failed)
    run_name        str
    started_at      ISO-8601 str | null
    finished_at     ISO-8601 str | null                  (required when finished)
    cell            {dataset: str, backbone: str, pretrained: bool, image_size: int,
                     num_transformers: int, seed: int,
                     crop_size: int | null, transform: str | null}   (last two optional)
    metrics         {name: number | null}                (accuracies are fractions in [0, 1])
    logger, epochs, wall_time_s, output_dir              optional, type-checked when present

W&B stores the same dict in ``run.summary["record"]``; ``run.state`` overrides a record that
claims success for a run W&B saw fail, crash or stay running.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from stnrepro.errors import StnreproError

__all__ = [
    "RECORD_FILENAME",
    "SCHEMA_VERSION",
    "STATUSES",
    "RecordError",
    "RunCell",
    "RunRecord",
    "load_records",
    "load_wandb_records",
    "parse_timestamp",
    "read_record_file",
    "record_from_wandb_run",
]

RECORD_FILENAME = "metrics.json"
SCHEMA_VERSION = 1
STATUSES = ("finished", "failed", "running")

# W&B run states that mean "did not finish"; anything not listed and not "finished" is
# treated as still running (unfinished), never as a success.
_WANDB_FAILED_STATES = frozenset({"failed", "crashed", "killed"})


class RecordError(StnreproError):
    """A run record is missing or malformed (message: ``source: what is wrong``)."""


def parse_timestamp(value: str) -> datetime:
    """Parse an ISO-8601 timestamp; naive times are taken as UTC so all compare."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed


@dataclass(frozen=True)
class RunCell:
    """The experimental cell a run belongs to (what the table groups and checks on)."""

    dataset: str
    backbone: str
    pretrained: bool
    image_size: int
    num_transformers: int
    seed: int
    crop_size: int | None = None
    transform: str | None = None


@dataclass(frozen=True)
class RunRecord:
    """One validated run record; ``source`` names where it came from, for error messages."""

    source: str
    status: str
    run_name: str
    cell: RunCell
    metrics: Mapping[str, float | None]
    started_at: str | None = None
    finished_at: str | None = None
    error: str | None = None
    logger: Mapping[str, Any] | None = None
    epochs: int | None = None
    wall_time_s: float | None = None
    output_dir: str | None = None
    schema_version: int = SCHEMA_VERSION
    config: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def finished(self) -> bool:
        """Whether the run completed and its metrics may be used."""
        return self.status == "finished"

    @property
    def finished_datetime(self) -> datetime | None:
        """``finished_at`` as an aware datetime (validated at parse time)."""
        return None if self.finished_at is None else parse_timestamp(self.finished_at)

    @classmethod
    def from_dict(
        cls, data: Any, source: str, config: Mapping[str, Any] | None = None
    ) -> RunRecord:
        """Validate a decoded ``metrics.json`` dict; raise RecordError naming ``source``."""
        return _parse_record(data, source, config)


# --------------------------------------------------------------------------- validation


def _fail(source: str, what: str) -> RecordError:
    return RecordError(f"{source}: {what}")


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _get(
    data: Mapping[str, Any],
    key: str,
    kind: str,
    source: str,
    *,
    prefix: str = "",
    required: bool = True,
    nullable: bool = False,
) -> Any:
    """Fetch ``data[key]`` and check it is of ``kind`` (str/int/bool/number/dict)."""
    name = f"{prefix}{key}"
    if key not in data:
        if required:
            raise _fail(source, f"missing required key '{name}'")
        return None
    value = data[key]
    if value is None:
        if nullable or not required:
            return None
        raise _fail(source, f"key '{name}' must be {_KIND_WORDS[kind]}, got null")
    ok = {
        "str": lambda v: isinstance(v, str),
        "int": _is_int,
        "bool": lambda v: isinstance(v, bool),
        "number": _is_number,
        "dict": lambda v: isinstance(v, Mapping),
    }[kind](value)
    if not ok:
        raise _fail(
            source,
            f"key '{name}' must be {_KIND_WORDS[kind]}, got {value!r} ({_type_name(value)})",
        )
    return value


_KIND_WORDS = {
    "str": "a string",
    "int": "an integer",
    "bool": "true or false",
    "number": "a number",
    "dict": "an object",
}


def _get_timestamp(data: Mapping[str, Any], key: str, source: str) -> str | None:
    value = _get(data, key, "str", source, required=False, nullable=True)
    if value is not None:
        try:
            parse_timestamp(value)
        except ValueError:
            raise _fail(
                source, f"key '{key}' must be an ISO-8601 timestamp, got {value!r}"
            ) from None
    return value


def _parse_cell(raw: Mapping[str, Any], source: str) -> RunCell:
    p = "cell."
    cell = RunCell(
        dataset=_get(raw, "dataset", "str", source, prefix=p),
        backbone=_get(raw, "backbone", "str", source, prefix=p),
        pretrained=_get(raw, "pretrained", "bool", source, prefix=p),
        image_size=_get(raw, "image_size", "int", source, prefix=p),
        num_transformers=_get(raw, "num_transformers", "int", source, prefix=p),
        seed=_get(raw, "seed", "int", source, prefix=p),
        crop_size=_get(raw, "crop_size", "int", source, prefix=p, required=False),
        transform=_get(raw, "transform", "str", source, prefix=p, required=False),
    )
    if cell.image_size <= 0:
        raise _fail(source, f"key 'cell.image_size' must be positive, got {cell.image_size}")
    if cell.crop_size is not None and cell.crop_size <= 0:
        raise _fail(source, f"key 'cell.crop_size' must be positive, got {cell.crop_size}")
    if cell.num_transformers < 0:
        raise _fail(
            source,
            f"key 'cell.num_transformers' must be >= 0, got {cell.num_transformers}",
        )
    return cell


def _parse_metrics(raw: Mapping[str, Any], source: str) -> dict[str, float | None]:
    metrics: dict[str, float | None] = {}
    for name, value in raw.items():
        if value is not None and not _is_number(value):
            raise _fail(
                source,
                f"metric 'metrics.{name}' must be a number or null, "
                f"got {value!r} ({_type_name(value)})",
            )
        metrics[str(name)] = None if value is None else float(value)
    return metrics


def _parse_record(data: Any, source: str, config: Mapping[str, Any] | None) -> RunRecord:
    if not isinstance(data, Mapping):
        raise _fail(source, f"expected a JSON object, got {_type_name(data)}")
    version = _get(data, "schema_version", "int", source)
    if version != SCHEMA_VERSION:
        raise _fail(source, f"unsupported schema_version {version} (this reader understands 1)")
    status = _get(data, "status", "str", source)
    if status not in STATUSES:
        raise _fail(source, f"key 'status' must be one of {', '.join(STATUSES)}, got {status!r}")
    name = _get(data, "run_name", "str", source)
    cell = _parse_cell(_get(data, "cell", "dict", source), source)
    metrics = _parse_metrics(_get(data, "metrics", "dict", source), source)
    started_at = _get_timestamp(data, "started_at", source)
    finished_at = _get_timestamp(data, "finished_at", source)
    if status == "finished" and finished_at is None:
        raise _fail(source, "a finished run needs 'finished_at' (used to pick the latest rerun)")
    wall = _get(data, "wall_time_s", "number", source, required=False)
    return RunRecord(
        source=source,
        status=status,
        run_name=name,
        cell=cell,
        metrics=metrics,
        started_at=started_at,
        finished_at=finished_at,
        error=_get(data, "error", "str", source, required=False),
        logger=_get(data, "logger", "dict", source, required=False),
        epochs=_get(data, "epochs", "int", source, required=False),
        wall_time_s=None if wall is None else float(wall),
        output_dir=_get(data, "output_dir", "str", source, required=False),
        schema_version=version,
        config=config,
    )


# --------------------------------------------------------------------------- from disk


def _find_record_files(root: Path) -> list[Path]:
    """All ``metrics.json`` under ``root``, sorted; symlinked dirs are not followed (loops)."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        if RECORD_FILENAME in filenames:
            found.append(Path(dirpath) / RECORD_FILENAME)
    return sorted(found)


def read_record_file(path: Path) -> RunRecord:
    """Read and validate one ``metrics.json``."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise _fail(source, "not UTF-8 text") from None
    except OSError as exc:
        raise _fail(source, f"cannot read ({exc.strerror or exc})") from None
    if not text.strip():
        raise _fail(source, "empty file (a run that crashed while writing its record?)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(source, f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
    return RunRecord.from_dict(data, source)


def load_records(path: str | os.PathLike[str]) -> list[RunRecord]:
    """Every record under ``path`` (a run dir, a multirun dir or a logs root, or one file)."""
    root = Path(path)
    if not root.exists():
        raise RecordError(f"{root}: no such file or directory")
    if root.is_file():
        return [read_record_file(root)]
    files = _find_record_files(root)
    if not files:
        raise RecordError(
            f"{root}: no {RECORD_FILENAME} found under it "
            "(expected a run directory, a Hydra multirun directory or a logs root)"
        )
    return [read_record_file(f) for f in files]


# --------------------------------------------------------------------------- from W&B


def _plain(value: Any) -> Any:
    """W&B summaries hand back dict-like SummarySubDicts; make plain JSON-like values."""
    if isinstance(value, Mapping) or (
        hasattr(value, "items") and callable(value.items) and not isinstance(value, str | bytes)
    ):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def record_from_wandb_run(run: Any) -> RunRecord:
    """Convert a ``wandb.apis.public.Run`` into a RunRecord; ``run.state`` wins on failure.

    W&B knows better than the record whether a run crashed (the record is only updated by
    the run itself), so failed/crashed/killed become "failed" and any other unfinished
    state becomes "running", whatever the summary says.
    """
    run_id = str(getattr(run, "id", "?"))
    source = f"wandb run {run_id} ({getattr(run, 'name', None) or 'unnamed'})"
    summary = run.summary
    raw = summary.get("record") if hasattr(summary, "get") else None
    if raw is None:
        raise _fail(source, "summary has no 'record' (was it logged by stnrepro?)")
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise _fail(source, f"summary 'record' is not valid JSON ({exc.msg})") from None
    data = _plain(raw)
    if isinstance(data, dict):
        data.setdefault("started_at", _created_at(run))
        state = str(getattr(run, "state", "") or "").lower()
        if state in _WANDB_FAILED_STATES:
            if data.get("status") != "failed":
                data["error"] = data.get("error") or f"W&B run state is {state!r}"
            data["status"] = "failed"
        elif state != "finished":
            data["status"] = "running"
    config = _plain(getattr(run, "config", None) or {})
    return RunRecord.from_dict(data, source, config=config)


def _created_at(run: Any) -> str | None:
    created = getattr(run, "created_at", None)
    if isinstance(created, datetime):
        return created.isoformat()
    return None if created is None else str(created)


def load_wandb_records(entity_project: str, group: str) -> list[RunRecord]:
    """All runs of a W&B group, converted (needs network access and a W&B login)."""
    if entity_project.count("/") != 1 or not all(entity_project.split("/")):
        raise RecordError(f"--wandb {entity_project!r}: expected ENTITY/PROJECT")
    import wandb  # deferred: importing wandb is slow and only this path needs it

    try:
        runs: Iterable[Any] = wandb.Api().runs(entity_project, filters={"group": group})
        records = [record_from_wandb_run(run) for run in runs]
    except RecordError:
        raise
    except Exception as exc:  # network/auth errors become one line, not a traceback
        raise RecordError(
            f"wandb {entity_project} group {group!r}: cannot read runs ({exc})"
        ) from None
    if not records:
        raise RecordError(f"wandb {entity_project}: no runs in group {group!r}")
    return records
