"""The tests' reader of offline W&B run files must not trip over a file still being written."""

from __future__ import annotations

import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2
from wandb_records import read_records


def _chunk(record: wandb_internal_pb2.Record) -> bytes:
    data = record.SerializeToString()
    return struct.pack("<IHB", 0, len(data), 1) + data


def test_a_record_cut_off_by_the_writer_is_left_out(tmp_path: Path) -> None:
    first = wandb_internal_pb2.Record()
    first.run.run_id = "abc"
    last = wandb_internal_pb2.Record()
    last.exit.exit_code = 0
    whole = b":W&B" + b"\0\0\0" + _chunk(first) + _chunk(last)
    path = tmp_path / "run-abc.wandb"
    path.write_bytes(whole[:-2])  # the exit record half on disk
    (record,) = read_records(path)
    assert record.run.run_id == "abc"
    path.write_bytes(whole)
    assert [r.WhichOneof("record_type") for r in read_records(path, wait_s=1)] == ["run", "exit"]
