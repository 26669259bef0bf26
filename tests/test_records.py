"""One run-record schema: what the writer writes is exactly what the reader accepts."""

from __future__ import annotations

import json
import os
import re
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
    "predictions", "predictions_sha256", "test_images", "attempts",
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
        RecordError, match=re.escape("key 'cell.num_transformers' must be an integer, got null")
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


def digit_cfg(**values: object) -> object:
    """A Table 1 (distorted digits) run's config; ``values`` override data/model keys."""
    data = {"name": "mnist", "image_size": 42, "distortion": "RTS"}
    model = {"backbone": "digit_cnn", "pretrained": False, "num_transformers": 1}
    model["transform"] = "tps"
    for key, value in values.items():
        (data if key in data else model)[key] = value
    return OmegaConf.create({"data": data, "model": model, "seed": 0})


@pytest.mark.parametrize(
    ("values", "name", "label"),
    [
        ({}, "ST-CNN-TPS-RTS-s0", "ST-CNN TPS"),
        ({"transform": "affine", "backbone": "digit_fcn"}, "ST-FCN-Aff-RTS-s0", "ST-FCN Aff"),
        ({"transform": "projective", "distortion": "P"}, "ST-CNN-Proj-P-s0", "ST-CNN Proj"),
        ({"num_transformers": 0, "distortion": "R", "image_size": 28}, "CNN-R-s0", "CNN"),
        ({"num_transformers": 0, "backbone": "digit_fcn"}, "FCN-RTS-s0", "FCN"),
    ],
)
def test_digit_runs_are_named_as_in_the_papers_table_1(
    tmp_path: Path, values: dict, name: str, label: str
) -> None:
    writer = RecordWriter(tmp_path, table_cell(digit_cfg(**values)), epochs=2)
    writer.finish()
    written = json.loads((tmp_path / RECORD_FILENAME).read_text())
    assert written["run_name"] == name and " " not in name
    assert list(written["cell"]) == ["dataset", "distortion", *CELL_ORDER[1:]]
    (record,) = load_records(tmp_path)
    assert record.cell.distortion == written["cell"]["distortion"] and record.cell.is_digit
    assert record.cell.model == label


def test_bird_records_keep_their_cell_without_distortion(tmp_path: Path) -> None:
    """A run without data.distortion writes the schema-1 cell it always did, and a record
    written before the key existed reads back as having no distortion."""
    writer = RecordWriter(tmp_path, table_cell(cfg()), epochs=2)
    writer.finish()
    written = json.loads((tmp_path / RECORD_FILENAME).read_text())
    assert "distortion" not in written["cell"] and written["run_name"] == "2xST-448-s3"
    (record,) = load_records(tmp_path)
    assert record.cell.distortion is None and not record.cell.is_digit
    assert record.cell.model == "2xST"
