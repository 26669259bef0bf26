"""Read the records of an offline W&B run's ``.wandb`` file (for tests).

The file is W&B's LevelDB-style log: a 7-byte header (``:W&B``, magic, version), then
32 KiB blocks of chunks ``crc32 (4) | length (2, little-endian) | type (1) | data``, type
1 = a whole record, 2/3/4 = first/middle/last piece; each record is a protobuf ``Record``.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

from wandb.proto import wandb_internal_pb2

_HEADER = 7
_BLOCK = 32 * 1024
_CHUNK_HEADER = 7


def read_records(path: Path, wait_s: float = 0.0) -> list[wandb_internal_pb2.Record]:
    """The file's whole records; with ``wait_s``, wait that long at most for the run's
    ``exit`` record (the last one a finished run writes).

    W&B's service process writes the file; ``run.finish()`` can return before its buffer
    reaches the disk, so a reader right after it may see only the header, or the file cut
    in the middle of a record (which is left out, not parsed).
    """
    deadline = time.monotonic() + wait_s
    while not _has_exit(records := _read(path)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return records


def _has_exit(records: list[wandb_internal_pb2.Record]) -> bool:
    return any(r.WhichOneof("record_type") == "exit" for r in records)


def _read(path: Path) -> list[wandb_internal_pb2.Record]:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a .wandb file"
    records, pending, pos = [], b"", _HEADER
    while pos + _CHUNK_HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK_HEADER:  # block trailer: zero padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + _CHUNK_HEADER])
        if kind == 0 and length == 0:  # zero padding to the end of the block
            pos += left
            continue
        if pos + _CHUNK_HEADER + length > len(data):  # still being written
            break
        chunk = data[pos + _CHUNK_HEADER : pos + _CHUNK_HEADER + length]
        pos += _CHUNK_HEADER + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records
