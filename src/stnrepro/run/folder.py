"""The rules that keep one output directory to one run.

An output directory holds exactly one run, whose *definition*
(:mod:`stnrepro.records.definition`: the resolved config minus the keys that cannot change
its results) is written to ``run_config.json`` when the run starts; a later command in the
same directory must define the same run, or it is refused before anything is read or
written:

- same definition, record ``finished``: nothing to do, the record stays as it is;
- same definition, not finished: resume from ``checkpoints/last.ckpt``;
- a different definition: refused with one line naming the keys that differ.

Only one process at a time may work in an output directory (:func:`hold_output_dir`); a
second is refused with one line naming the holder.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from stnrepro.errors import ConfigError
from stnrepro.records.definition import (
    DEFINITION_NAME,
    describe_differences,
    differing_keys,
    load_definition,
)
from stnrepro.records.reader import recorded
from stnrepro.records.schema import RECORD_FILENAME

LOCK_NAME = ".stnrepro.lock"
HOLDER_NAME = ".stnrepro.holder"


def folder_problem(path: Path) -> str | None:
    """Why no output folder can be at ``path`` (a file there, or a file where one of its
    parents would be), or None. Hydra would otherwise fail in ``mkdir`` with a traceback."""
    for at in (path, *path.parents):
        if at.is_dir():
            return None
        if at.exists() or at.is_symlink():
            what = "a file" if at.is_file() else "not a folder"
            return f"{at} is {what}" + ("" if at == path else f" (a parent of {path})")
    return None


class OutputFolderCheck(Callback):
    """Hydra callback: refuse a run or sweep folder that cannot be a folder before Hydra
    tries to make it, with one ``error:`` line naming the key and exit status 2."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_folder_key(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_folder_key(config, "hydra.sweep.dir")


def _check_folder_key(config: DictConfig, key: str) -> None:
    value = OmegaConf.select(config, key)
    problem = folder_problem(Path(str(value)))
    if problem:
        print(f"error: {key}={value}: {problem}; expected a folder or a path where one can "
              "be made", file=sys.stderr)  # fmt: skip
        raise SystemExit(2)


def check_same_run(output_dir: Path, definition: Mapping[str, Any]) -> bool:
    """True when ``output_dir`` already holds this run; raise when it holds another one.

    A run that failed before its first checkpoint (a bad value, a missing file) left nothing
    to resume or protect: its folder is free for the corrected command. A folder with a
    record or checkpoint but no ``run_config.json`` (made by an older version) cannot be
    compared and is refused: it might be another run.
    """
    if _failed_before_training(output_dir):
        return False
    old = load_definition(output_dir)
    if old is None:
        leftovers = [p for p in (RECORD_FILENAME, "checkpoints") if (output_dir / p).exists()]
        if leftovers:
            raise ConfigError(
                f"{output_dir}: holds a run ({', '.join(leftovers)}) without {DEFINITION_NAME}, "
                "so it cannot be checked to be this run; use a new output folder "
                "(hydra.run.dir=... or hydra.sweep.dir=...)"
            )
        return False
    keys = differing_keys(old, definition)
    if keys:
        raise ConfigError(
            f"{output_dir} holds another run: {describe_differences(old, definition, keys)}; "
            "resuming would mix the two. Use a new output folder (hydra.run.dir=... or "
            "hydra.sweep.dir=...), or delete this one to start over"
        )
    return True


def _failed_before_training(output_dir: Path) -> bool:
    checkpoints = output_dir / "checkpoints"
    if checkpoints.exists() and any(checkpoints.iterdir()):
        return False
    return (recorded(output_dir) or {}).get("status") == "failed"


@contextmanager
def hold_output_dir(output_dir: Path) -> Iterator[None]:
    """Hold ``output_dir`` for this process; a second process is refused naming the holder."""
    output_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(output_dir / LOCK_NAME))
    holder = output_dir / HOLDER_NAME
    try:
        lock.acquire(timeout=0)
    except Timeout:
        who = holder.read_text().strip() if holder.is_file() else "another process"
        raise ConfigError(
            f"{output_dir}: in use by {who}; wait for it to end or use another output folder"
        ) from None
    try:
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        holder.write_text(f"pid {os.getpid()} on {socket.gethostname()} since {started}\n")
        yield
    finally:
        holder.unlink(missing_ok=True)
        lock.release()
