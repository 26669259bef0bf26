"""Files that are replaced whole or not at all: records, predictions, tables, checkpoints.

A reader (the table, a resumed run, another user of a shared results folder) must never see
half a file, and a failed write (a full disk, a kill) must leave the previous version as it
was. So every file is written to a temporary file in the same folder, flushed to disk
(fsync) and renamed over the target (``os.replace``, atomic within one file system); on any
error the temporary file is removed and the error propagates. Files get the mode a plain
``open(path, "w")`` would give (0666 less the umask, usually 0644), not ``mkstemp``'s
private 0600, so that others sharing a results folder can read them.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any


def file_mode() -> int:
    """0666 less the process umask: read from /proc on Linux, since ``os.umask`` can only
    be read by setting it, which races with threads (W&B's) creating files meanwhile."""
    try:
        status = Path("/proc/self/status").read_text()
        mask = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("Umask:")), 8)
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def temp_path(path: Path) -> Path:
    """A hidden, unique temporary name next to ``path`` (same folder, same file system)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def write_atomic(path: str | os.PathLike[str], data: bytes | memoryview | str) -> None:
    """Replace ``path`` with ``data`` (text is written as UTF-8) whole or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_json_atomic(path: str | os.PathLike[str], data: dict[str, Any]) -> None:
    """Write JSON so that ``path`` holds either the old or the new content, never a mix."""
    write_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable; not every system can open a folder (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
