"""Find and read run records: ``metrics.json`` files under a folder, or W&B runs.

Validation is ``RunRecord.from_dict`` (``stnrepro.records.schema``); this module only gets
the decoded dicts there and names their source (file path or W&B run) for error messages.
W&B's ``run.state`` overrides a record that claims success for a run W&B saw fail, crash or
stay running.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from stnrepro.errors import one_line
from stnrepro.records.definition import definition_of
from stnrepro.records.schema import RECORD_FILENAME, RecordError, RunRecord, fail

# W&B run states that mean "did not finish"; anything not listed and not "finished" is
# treated as still running (unfinished), never as a success.
_WANDB_FAILED_STATES = frozenset({"failed", "crashed", "killed"})


# --------------------------------------------------------------------------- from disk


def recorded(output_dir: Path) -> dict[str, Any] | None:
    """The folder's run record (``metrics.json``) as written, or None if there is none."""
    try:
        record = json.loads((output_dir / RECORD_FILENAME).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


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
        raise fail(source, "not UTF-8 text") from None
    except OSError as exc:
        raise fail(source, f"cannot read ({exc.strerror or exc})") from None
    if not text.strip():
        raise fail(source, "empty file (a run that crashed while writing its record?)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise fail(source, f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
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


def _plain_summary(value: Any) -> Any:
    """W&B summaries hand back dict-like SummarySubDicts; make plain JSON-like values."""
    if isinstance(value, Mapping) or (
        hasattr(value, "items") and callable(value.items) and not isinstance(value, str | bytes)
    ):
        return {str(k): _plain_summary(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain_summary(v) for v in value]
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
        raise fail(source, "summary has no 'record' (was it logged by stnrepro?)")
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise fail(source, f"summary 'record' is not valid JSON ({exc.msg})") from None
    data = _plain_summary(raw)
    if isinstance(data, dict):
        data.setdefault("started_at", _created_at(run))
        state = str(getattr(run, "state", "") or "").lower()
        if state in _WANDB_FAILED_STATES:
            if data.get("status") != "failed":
                data["error"] = data.get("error") or f"W&B run state is {state!r}"
            data["status"] = "failed"
        elif state != "finished":
            data["status"] = "running"
    # Records from before the record carried its ``config``: the logged config stands in.
    config = definition_of(_plain_summary(getattr(run, "config", None) or {}))
    return RunRecord.from_dict(data, source, config=config or None)


def _created_at(run: Any) -> str | None:
    created = getattr(run, "created_at", None)
    if isinstance(created, datetime):
        return created.isoformat()
    return None if created is None else str(created)


TABLE_JOB_TYPE = "table"  # stn-table --wandb-log's runs in a sweep's group


def load_wandb_records(entity_project: str, group: str) -> list[RunRecord]:
    """All runs of a W&B group, converted (needs network access and a W&B login)."""
    if entity_project.count("/") != 1 or not all(entity_project.split("/")):
        raise RecordError(f"--wandb {entity_project!r}: expected ENTITY/PROJECT")
    import wandb  # deferred: importing wandb is slow and only this path needs it

    try:
        runs: Iterable[Any] = wandb.Api().runs(entity_project, filters={"group": group})
        # The group also holds stn-table --wandb-log's own runs (job_type "table").
        records = [record_from_wandb_run(r) for r in runs if r.job_type != TABLE_JOB_TYPE]
    except RecordError:
        raise
    except Exception as exc:  # network/auth errors become one line, not a traceback
        raise RecordError(
            f"wandb {entity_project} group {group!r}: cannot read runs ({one_line(exc)})"
        ) from None
    if not records:
        raise RecordError(f"wandb {entity_project}: no runs in group {group!r}")
    return records
