"""What defines a run, and the rules that keep one output directory to one run.

An output directory holds exactly one run. Its *definition* is the resolved config minus
the keys that cannot change its results (:data:`NOT_RUN_DEFINING`: where outputs and logs
go, how often to log or draw, how to resume, how many loader processes decode images). It is
written to ``run_config.json`` when the run starts; a later command in the same directory
must define the same run, or it is refused before anything is read or written:

- same definition, record ``finished``: nothing to do, the record stays as it is;
- same definition, not finished: resume from ``checkpoints/last.ckpt``;
- a different definition: refused with one line naming the keys that differ.

Only one process at a time may work in an output directory (:func:`hold_output_dir`); a
second is refused with one line naming the holder.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from omegaconf import DictConfig, OmegaConf

from stnrepro.errors import ConfigError
from stnrepro.records.schema import RECORD_FILENAME
from stnrepro.records.writer import write_json_atomic

DEFINITION_NAME = "run_config.json"
LOCK_NAME = ".stnrepro.lock"
HOLDER_NAME = ".stnrepro.holder"

# Dotted keys (a key or the start of one) that cannot change a run's results, with why.
# README lists them; everything else in the resolved config defines the run.
NOT_RUN_DEFINING: dict[str, str] = {
    "paths": "where data and outputs live, not what is computed",
    "logger": "where metrics are sent (W&B, CSV or none)",
    "callbacks": "checkpoint files, LR logging and attention figures (drawn on a forked RNG); "
    "except which checkpoint counts as best (below), which test_ckpt=best tests",
    "ckpt_path": "how to resume, not what is trained",
    "tags": "labels for the dashboard",
    "task_name": "the name of the output folder",
    "trainer.default_root_dir": "the output folder",
    "trainer.enable_progress_bar": "console output",
    "trainer.log_every_n_steps": "how often training metrics are logged",
    "data.root": "where the dataset is read from (its fingerprint is in the provenance)",
    "data.cache_dir": "where generated data is kept",
    "data.gen_workers": "processes that generate synthetic data (byte-identical for any count)",
    "data.num_workers": "loader processes (augmentation is seeded per image, not per worker)",
    "data.pin_memory": "host-to-GPU copy mode",
    "data.persistent_workers": "whether loader processes are kept between epochs",
    "data.eval_batch_size": "evaluation batch (eval mode has no batch statistics)",
}


# Keys under a non-defining prefix that still define the run.
DEFINING_AFTER_ALL = ("callbacks.best_checkpoint.monitor", "callbacks.best_checkpoint.mode")


def _not_defining(key: str) -> bool:
    if key in DEFINING_AFTER_ALL:
        return False
    return any(key == k or key.startswith(k + ".") for k in NOT_RUN_DEFINING)


def _flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from _flatten(v, f"{prefix}{k}.")
    else:
        yield prefix.rstrip("."), value


def run_definition(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as ``{dotted.key: value}``, minus :data:`NOT_RUN_DEFINING`."""
    return definition_of(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False))


def definition_of(config: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`run_definition` of an already resolved, nested config (e.g. W&B's run config)."""
    flat = dict(_flatten(config))
    return {k: v for k, v in sorted(flat.items()) if not _not_defining(k)}


def differing_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k, "<unset>") != new.get(k, "<unset>"))


def _describe(old: Mapping[str, Any], new: Mapping[str, Any], keys: list[str]) -> str:
    shown = [f"{k} {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}" for k in keys[:6]]
    more = f" (+{len(keys) - 6} more)" if len(keys) > 6 else ""
    return ", ".join(shown) + more


def load_definition(output_dir: Path) -> dict[str, Any] | None:
    path = output_dir / DEFINITION_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(
            f"{path}: unreadable run definition ({exc}); this folder's run cannot be checked: "
            "use a new output folder"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object of config keys; use a new output folder")
    return data


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
            f"{output_dir} holds another run: {_describe(old, definition, keys)}; "
            "resuming would mix the two. Use a new output folder (hydra.run.dir=... or "
            "hydra.sweep.dir=...), or delete this one to start over"
        )
    return True


def recorded(output_dir: Path) -> dict[str, Any] | None:
    """The folder's run record (``metrics.json``) as written, or None if there is none."""
    try:
        record = json.loads((output_dir / RECORD_FILENAME).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _failed_before_training(output_dir: Path) -> bool:
    checkpoints = output_dir / "checkpoints"
    if checkpoints.exists() and any(checkpoints.iterdir()):
        return False
    return (recorded(output_dir) or {}).get("status") == "failed"


def save_definition(output_dir: Path, definition: Mapping[str, Any]) -> None:
    write_json_atomic(output_dir / DEFINITION_NAME, dict(definition))


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
