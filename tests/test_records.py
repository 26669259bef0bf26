"""One run-record schema: what the writer writes is exactly what the reader accepts."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from stnrepro.records.reader import load_records, read_record_file
from stnrepro.records.schema import RECORD_FILENAME, RecordError
from stnrepro.records.writer import RecordWriter, table_cell

# Schema 1 as written by train.py before the writer and reader shared one module.
TOP_LEVEL_KEYS = [
    "schema_version", "status", "error", "run_name", "started_at", "finished_at", "cell",
    "metrics", "logger", "epochs", "wall_time_s", "output_dir", "config", "provenance",
    "predictions", "predictions_sha256", "test_images",
]  # fmt: skip
CELL_ORDER = [
    "dataset", "backbone", "pretrained", "image_size", "crop_size", "num_transformers",
    "transform", "seed",
]  # fmt: skip


def cfg(**model: object) -> object:
    return OmegaConf.create(
        {
            "data": {"name": "cub", "image_size": 448},
            "model": {
                "backbone": "small",
                "pretrained": False,
                "crop_size": 224,
                "num_transformers": 2,
                "transform": "attention",
                **model,
            },
            "seed": 3,
        }
    )


def test_written_record_keeps_schema_1_and_reads_back(tmp_path: Path) -> None:
    writer = RecordWriter(tmp_path, table_cell(cfg()), epochs=2)
    writer.save()
    written = json.loads((tmp_path / RECORD_FILENAME).read_text())
    assert list(written) == TOP_LEVEL_KEYS and list(written["cell"]) == CELL_ORDER
    assert written["schema_version"] == 1 and written["run_name"] == "2xST-448-s3"
    assert read_record_file(tmp_path / RECORD_FILENAME).status == "running"

    writer.update_metrics({"test/acc": 0.5, "test/loss": float("nan")})
    writer.finish()
    (record,) = load_records(tmp_path)
    assert record.status == "finished" and record.cell.image_size == 448
    assert record.metrics == {"test/acc": 0.5, "test/loss": None}


def test_failed_record_reads_back_with_its_error(tmp_path: Path) -> None:
    writer = RecordWriter(tmp_path, table_cell(cfg()), epochs=2)
    writer.fail(RuntimeError("boom\n  at line 3"))
    record = read_record_file(tmp_path / RECORD_FILENAME)
    assert record.status == "failed" and record.error == "RuntimeError: boom"  # the first line


def test_cell_value_below_its_minimum_names_file_and_key(tmp_path: Path) -> None:
    writer = RecordWriter(tmp_path, table_cell(cfg()), epochs=2)
    writer.data["cell"]["num_transformers"] = -1  # hand-edited: the writer never writes it
    writer.finish()
    with pytest.raises(RecordError) as err:
        load_records(tmp_path)
    path = tmp_path / RECORD_FILENAME
    assert str(err.value) == f"{path}: key 'cell.num_transformers' must be >= 0, got -1"


@pytest.mark.parametrize(
    "model", [{"num_transformers": -1}, {"num_transformers": "abc"}, {"crop_size": 1.5}]
)
def test_a_run_refused_for_a_bad_cell_value_leaves_a_readable_failed_record(tmp_path, model):
    """Its cell records null for the bad value; the table counts the run as failed."""
    writer = RecordWriter(tmp_path, table_cell(cfg(**model)), epochs="abc")  # type: ignore[arg-type]
    writer.fail("ConfigError: a bad value")
    (record,) = load_records(tmp_path)
    assert record.status == "failed" and record.epochs is None
    assert None in (record.cell.num_transformers, record.cell.crop_size)
    assert record.placed == (record.cell.num_transformers is not None)


def test_a_finished_record_must_have_its_whole_cell(tmp_path: Path) -> None:
    writer = RecordWriter(tmp_path, table_cell(cfg(num_transformers=-1)), epochs=2)
    writer.finish()
    with pytest.raises(
        RecordError, match="key 'cell.num_transformers' must be an integer, got null"
    ):
        load_records(tmp_path)


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640)])
def test_records_are_readable_by_others_as_the_umask_allows(
    tmp_path: Path, umask: int, mode: int
) -> None:
    """A shared results folder: mkstemp's private 0600 would hide records from the others."""
    old = os.umask(umask)
    try:
        RecordWriter(tmp_path, table_cell(cfg()), epochs=2).save()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / RECORD_FILENAME).stat().st_mode) == mode
