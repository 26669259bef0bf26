"""The run-record schema, in one place: what writer and reader agree on, and its validation.

Every run leaves ``metrics.json`` (``RECORD_FILENAME``) in its output directory; W&B keeps
the same dict in ``run.summary["record"]``. The writer (``stnrepro.records.writer``) builds
it, the reader (``stnrepro.records.reader``) finds and validates it. A record is validated
once, here, so the table can trust its types; any problem is one line naming the source (file
or W&B run) and the key, because a silently skipped run would make the table lie about n.

Schema (version 1)::

    schema_version  int, must be 1
    status          "finished" | "failed" | "interrupted" | "running"
                    (interrupted = stopped by Ctrl-C/SIGTERM, resumable with the same
                    command; running = not ended, or killed without warning)
    error           str | null                           (one line when failed)
    run_name        str
    started_at      ISO-8601 str | null                  the latest attempt's start
    finished_at     ISO-8601 str | null                  its end (required when finished)
    cell            the fields of RunCell, in that order (crop_size, transform and
                    distortion optional; distortion is written only when the run has one)
    metrics         {name: number | null}                (accuracies are fractions in [0, 1])
    logger, epochs, wall_time_s, output_dir              optional, type-checked when present
                                                         (wall_time_s: the latest attempt's)
    attempts        [{started_at, ended_at, wall_time_s, status, reason, job}] | null
                    (optional) every attempt of the run in its folder, oldest first: a
                    resume or a SLURM requeue adds one. status as above, reason why it
                    ended when not finished, job the SLURM job id or null; ended_at null
                    means killed without warning. Their wall_time_s add up to the run's
                    cost (RunRecord.total_wall_time_s).
    predictions     "predictions.csv" | null (optional)  the per-image test predictions file,
                                                         always the one next to metrics.json
                                                         (null: no test); no other name or path
    predictions_sha256  str | null (optional)            sha256 of that file as the run wrote it
    test_images     int | null (optional)                test images scored = rows of that file
    config          {dotted.key: value} | null           optional: the run definition
                                                         (``stnrepro.records.definition``)
    provenance      object | null                        optional: code, libraries, machine,
                                                         threads, GPU, data (see
                                                         ``stnrepro.run.provenance``)

Records written before ``config`` and ``provenance`` existed lack them; readers treat them as
unknown (the table compares such runs on their cell keys only). Records written before
``attempts`` existed lack it: they stand for one attempt, the record's own.

The cell keys are defined once, as the fields of ``RunCell``: each field's metadata names the
config key it is read from, its type and its minimum.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Any, NamedTuple

from stnrepro.errors import StnreproError
from stnrepro.records.definition import current_names

SCHEMA_VERSION = 1
RECORD_FILENAME = "metrics.json"
PREDICTIONS_FILENAME = "predictions.csv"  # per-image test predictions, next to the record
STATUSES = ("finished", "failed", "interrupted", "running")


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


def _cell_key(
    config: str,
    kind: type,
    *,
    optional: bool = False,
    minimum: int | None = None,
    added: bool = False,
) -> Any:
    """A RunCell field: read from config key ``config``, of type ``kind``.

    ``added``: a key added after schema 1 was fixed, optional and written only when the run
    has a value for it, so records of runs without it stay as they were (and older records,
    which lack it, read as null)."""
    meta = {
        "config": config,
        "kind": kind,
        "required": not optional,
        "minimum": minimum,
        "added": added,
    }
    return field(default=None, metadata=meta) if optional else field(metadata=meta)


@dataclass(frozen=True, kw_only=True)
class RunCell:
    """The experimental cell a run belongs to (what the table groups and checks on).

    Field order is the order of the ``cell`` keys in ``metrics.json``.
    """

    @property
    def is_digit(self) -> bool:
        """Whether the run is of the digit experiment (Table 1): a digit backbone or a
        distortion; else it is of the bird experiment (Table 3)."""
        return is_digit_backbone(self.backbone) or self.distortion is not None

    @property
    def model(self) -> str:
        """The model's one name (:func:`model_label`)."""
        return model_label(self.num_transformers, self.backbone, self.transform)

    dataset: str = _cell_key("data.name", str)
    # The digit experiment's (Table 1) distortion of the images: none | R | RTS | P | E.
    distortion: str | None = _cell_key("data.distortion", str, optional=True, added=True)
    backbone: str = _cell_key("model.backbone", str)
    pretrained: bool = _cell_key("model.pretrained", bool)
    image_size: int = _cell_key("data.image_size", int, minimum=1)
    crop_size: int | None = _cell_key("model.crop_size", int, optional=True, minimum=1)
    num_transformers: int = _cell_key("model.num_transformers", int, minimum=0)
    transform: str | None = _cell_key("model.transform", str, optional=True)
    seed: int = _cell_key("seed", int)


# Digit backbones (Table 1) and how the paper names them; any other backbone is a bird
# (Table 3) model, named by its transformer count.
DIGIT_BACKBONES = {"digit_fcn": "FCN", "digit_cnn": "CNN"}
# The paper's short names of the digit transformers (Table 1: "ST-CNN Aff").
TRANSFORM_LABELS = {"affine": "Aff", "projective": "Proj", "tps": "TPS"}


def is_digit_backbone(backbone: str | None) -> bool:
    """Whether ``backbone`` is one of the digit experiment's (Table 1) backbones."""
    return backbone in DIGIT_BACKBONES


def model_label(
    num_transformers: int | None, backbone: str | None = None, transform: str | None = None
) -> str:
    """The one name of a model, used by run names, table rows and claims.

    Bird backbones: by the transformer count, ``CNN``, ``2xST``, ``4xST``. Digit backbones
    (:data:`DIGIT_BACKBONES`): the paper's Table 1 names, ``FCN``, ``CNN``, and with one
    transformer ``ST-FCN Aff``, ``ST-CNN Proj``, ``ST-CNN TPS``; a transform without a short
    name is shown as written, and several digit transformers as ``2xST-CNN Aff``.
    """
    if not is_digit_backbone(backbone):
        return "CNN" if not num_transformers else f"{num_transformers}xST"
    base = DIGIT_BACKBONES[str(backbone)]
    if not num_transformers:
        return base
    count = "" if num_transformers == 1 else f"{num_transformers}x"
    return f"{count}ST-{base} {TRANSFORM_LABELS.get(str(transform), show_transform(transform))}"


def show_transform(transform: str | None) -> str:
    """A transform without a paper name, as the user wrote it (``?`` when unknown)."""
    return "?" if transform is None else str(transform)


class CellKey(NamedTuple):
    """One ``cell`` key of the schema (from the RunCell field of the same name)."""

    name: str
    config: str
    kind: type
    required: bool
    minimum: int | None
    added: bool = False

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` (not null) is of this key's type and at least its minimum."""
        check = _KINDS[self.kind.__name__][0]
        return check(value) and (self.minimum is None or value >= self.minimum)


CELL_KEYS: tuple[CellKey, ...] = tuple(CellKey(f.name, **f.metadata) for f in fields(RunCell))


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
    predictions: str | None = None
    predictions_sha256: str | None = None
    test_images: int | None = None
    schema_version: int = SCHEMA_VERSION
    # The run definition: the record's ``config``, or else (W&B) the run's logged config.
    config: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)
    provenance: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)
    attempts: tuple[Mapping[str, Any], ...] | None = field(default=None, compare=False, repr=False)

    @property
    def total_wall_time_s(self) -> float | None:
        """What the run cost over all its attempts (seconds); the record's own
        ``wall_time_s`` when it lists none; None when no attempt says."""
        if not self.attempts:
            return self.wall_time_s
        times = [a["wall_time_s"] for a in self.attempts if a.get("wall_time_s") is not None]
        return float(sum(times)) if times else None

    @property
    def finished(self) -> bool:
        """Whether the run completed and its metrics may be used."""
        return self.status == "finished"

    @property
    def placed(self) -> bool:
        """Whether every required cell key is known (only a run that did not finish, refused
        for a bad value, may lack one)."""
        return all(getattr(self.cell, k.name) is not None for k in CELL_KEYS if k.required)

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


def fail(source: str, what: str) -> RecordError:
    """The one-line error for a bad record: ``source: what``."""
    return RecordError(f"{source}: {what}")


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# kind -> (check, words for the error message); a Python type names the kind of a cell key.
_KINDS = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "int": (_is_int, "an integer"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "number": (_is_number, "a number"),
    "dict": (lambda v: isinstance(v, Mapping), "an object"),
}


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
    """Fetch ``data[key]`` and check it is of ``kind`` (a key of ``_KINDS``)."""
    name = f"{prefix}{key}"
    if key not in data:
        if required:
            raise fail(source, f"missing required key '{name}'")
        return None
    value = data[key]
    check, words = _KINDS[kind]
    if value is None:
        if nullable or not required:
            return None
        raise fail(source, f"key '{name}' must be {words}, got null")
    if not check(value):
        raise fail(source, f"key '{name}' must be {words}, got {value!r} ({_type_name(value)})")
    return value


def _get_timestamp(data: Mapping[str, Any], key: str, source: str) -> str | None:
    value = _get(data, key, "str", source, required=False, nullable=True)
    if value is not None:
        try:
            parse_timestamp(value)
        except ValueError:
            raise fail(
                source, f"key '{key}' must be an ISO-8601 timestamp, got {value!r}"
            ) from None
    return value


def _get_predictions_name(data: Mapping[str, Any], source: str) -> str | None:
    """The record's ``predictions``: the fixed file name next to it, never a path elsewhere."""
    value = _get(data, "predictions", "str", source, required=False)
    if value is not None and value != PREDICTIONS_FILENAME:
        raise fail(
            source,
            f"key 'predictions' must be {PREDICTIONS_FILENAME!r} (the file next to the record) "
            f"or null, got {value!r}",
        )
    return value


def _get_sha256(data: Mapping[str, Any], source: str) -> str | None:
    value = _get(data, "predictions_sha256", "str", source, required=False)
    if value is not None and not re.fullmatch(r"[0-9a-f]{64}", value):
        raise fail(source, f"key 'predictions_sha256' must be 64 hex digits, got {value!r}")
    return value


def _parse_cell(raw: Mapping[str, Any], source: str, finished: bool) -> RunCell:
    """The record's cell; a run that did not finish may lack keys (null): one refused for a
    bad value records null for it (its error names the value), so the table counts it as
    failed without placing it in a cell."""
    values: dict[str, Any] = {}
    for key in CELL_KEYS:
        value = _get(
            raw,
            key.name,
            key.kind.__name__,
            source,
            prefix="cell.",
            required=key.required,
            nullable=not finished,
        )
        if value is not None and key.minimum is not None and value < key.minimum:
            raise fail(source, f"key 'cell.{key.name}' must be >= {key.minimum}, got {value}")
        values[key.name] = value
    return RunCell(**values)


def _parse_metrics(raw: Mapping[str, Any], source: str) -> dict[str, float | None]:
    metrics: dict[str, float | None] = {}
    for name, value in raw.items():
        if value is not None and not _is_number(value):
            raise fail(
                source,
                f"metric 'metrics.{name}' must be a number or null, "
                f"got {value!r} ({_type_name(value)})",
            )
        metrics[str(name)] = None if value is None else _as_float(value, f"metrics.{name}", source)
    return metrics


def _as_float(value: int | float, key: str, source: str) -> float:
    """A JSON number as a float; an integer too large for one (``1`` and 400 zeros) is refused."""
    try:
        return float(value)
    except OverflowError:
        digits = len(str(abs(int(value))))
        raise fail(
            source, f"key '{key}' is an integer of {digits} digits: too large for a number"
        ) from None


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def visible(value: Any) -> Any:
    """``value`` with every control character in its strings (keys too) written as an escape
    (a newline as ``\\n``): whatever a record says is printed by the table as one line of
    text, and cannot start a new Markdown row or LaTeX line."""
    if isinstance(value, str):
        return _CONTROL.sub(lambda m: repr(m.group())[1:-1], value)
    if isinstance(value, Mapping):
        return {visible(k): visible(v) for k, v in value.items()}
    if isinstance(value, list):
        return [visible(v) for v in value]
    return value


# An ``attempts`` entry's keys: (kind, nullable); "timestamp" is an ISO-8601 string.
_ATTEMPT_KEYS = {
    "started_at": ("timestamp", True),
    "ended_at": ("timestamp", True),
    "wall_time_s": ("number", True),
    "status": ("str", False),
    "reason": ("str", True),
    "job": ("str", True),
}


def _parse_attempts(data: Mapping[str, Any], source: str) -> tuple[dict[str, Any], ...] | None:
    """The record's ``attempts`` (absent in records written before it existed: None)."""
    raw = data.get("attempts")
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise fail(source, f"key 'attempts' must be a list, got {raw!r} ({_type_name(raw)})")
    attempts = []
    for i, entry in enumerate(raw):
        key = f"attempts[{i}]"
        if not isinstance(entry, Mapping):
            raise fail(source, f"key '{key}' must be an object, got {_type_name(entry)}")
        attempt: dict[str, Any] = {}
        for name, (kind, nullable) in _ATTEMPT_KEYS.items():
            prefix = f"{key}."
            if kind == "timestamp":
                value = _get(entry, name, "str", source, prefix=prefix, nullable=nullable)
                if value is not None:
                    try:
                        parse_timestamp(value)
                    except ValueError:
                        raise fail(
                            source,
                            f"key '{prefix}{name}' must be an ISO-8601 timestamp, got {value!r}",
                        ) from None
            else:
                value = _get(entry, name, kind, source, prefix=prefix, nullable=nullable)
            attempt[name] = value
        if attempt["status"] not in STATUSES:
            raise fail(
                source,
                f"key '{key}.status' must be one of {', '.join(STATUSES)}, "
                f"got {attempt['status']!r}",
            )
        attempts.append(attempt)
    return tuple(attempts)


def _parse_record(data: Any, source: str, config: Mapping[str, Any] | None) -> RunRecord:
    if not isinstance(data, Mapping):
        raise fail(source, f"expected a JSON object, got {_type_name(data)}")
    data = visible(data)
    config = None if config is None else visible(config)
    version = _get(data, "schema_version", "int", source)
    if version != SCHEMA_VERSION:
        raise fail(
            source,
            f"unsupported schema_version {version} (this reader understands {SCHEMA_VERSION})",
        )
    status = _get(data, "status", "str", source)
    if status not in STATUSES:
        raise fail(source, f"key 'status' must be one of {', '.join(STATUSES)}, got {status!r}")
    name = _get(data, "run_name", "str", source)
    cell = _parse_cell(_get(data, "cell", "dict", source), source, status == "finished")
    metrics = _parse_metrics(_get(data, "metrics", "dict", source), source)
    started_at = _get_timestamp(data, "started_at", source)
    finished_at = _get_timestamp(data, "finished_at", source)
    if status == "finished" and finished_at is None:
        raise fail(source, "a finished run needs 'finished_at' (used to pick the latest rerun)")
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
        wall_time_s=None if wall is None else _as_float(wall, "wall_time_s", source),
        output_dir=_get(data, "output_dir", "str", source, required=False),
        predictions=_get_predictions_name(data, source),
        predictions_sha256=_get_sha256(data, source),
        test_images=_get(data, "test_images", "int", source, required=False),
        schema_version=version,
        config=current_names(_get(data, "config", "dict", source, required=False) or config or {})
        or None,
        provenance=_get(data, "provenance", "dict", source, required=False),
        attempts=_parse_attempts(data, source),
    )
