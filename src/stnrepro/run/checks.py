"""The checks of a run's config that come before anything is read, built or started.

The numeric keys are checked from one table of key -> kind and range (:data:`NUMERIC_KEYS`);
:func:`validate_config` runs it with the run-level checks; :func:`check_distributed` refuses
DDP settings that would fail once processes have started.

Why a table: a value of the wrong type (``trainer.max_epochs=abc``) otherwise reaches a constructor
or a comparison deep inside Lightning or the model and ends as a bare ``TypeError``, and a
degenerate number (``trainer.max_epochs=0`` records an untrained run as finished; ``-1``
trains forever) is not an error at all. :func:`check_numeric_keys` refuses both in one line,
``key=value: expected ...``, before any data is read or model built.

Conventions: an integer key takes a YAML integer only (not ``true``, not ``2.0``); a float
key takes an integer or a finite float. A key absent from the config (``momentum`` of an
optimizer that has none) is not checked; ``null`` is accepted only where the table says so.
The constructors that own these values keep their own checks for direct use; this table is
what a training run sees first.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.accelerators import CPUAccelerator
from pytorch_lightning.strategies.launchers import _SubprocessScriptLauncher

from stnrepro.errors import ConfigError
from stnrepro.run.context import is_multirun

__all__ = ["NUMERIC_KEYS", "Numeric", "check_distributed", "check_numeric_keys", "validate_config"]


@dataclass(frozen=True)
class Numeric:
    """An integer or float within ``[low, high)``-style bounds (``low_open``: ``> low``)."""

    kind: type  # int or float
    low: float
    low_open: bool = False
    high: float | None = None  # exclusive upper bound
    nullable: bool = False

    def expected(self) -> str:
        what = "an integer" if self.kind is int else "a float"
        if self.high is not None:
            left = "(" if self.low_open else "["
            text = f"{what} in {left}{_number(self.low)}, {_number(self.high)})"
        else:
            text = f"{what} {'>' if self.low_open else '>='} {_number(self.low)}"
        return text + (" or null" if self.nullable else "")

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        if value < self.low or (self.low_open and value == self.low):
            return False
        return self.high is None or value < self.high


_COUNT = Numeric(int, 1)  # sizes, counts, epochs
_INDEX = Numeric(int, 0)  # worker counts, transformer counts


def _number(x: float) -> str:
    """A bound as written: ``4294967296``, ``0.5`` (not ``4.29497e+09``)."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


_SEED = Numeric(int, 0, high=2**32)  # what numpy and Lightning's seed_everything accept
_RATE = Numeric(float, 0, low_open=True)
_NONNEG = Numeric(float, 0)
_FRACTION = Numeric(float, 0, high=1)

#: Every numeric key checked up front, in the order they are checked.
NUMERIC_KEYS: dict[str, Numeric] = {
    "seed": _SEED,
    "data.num_classes": _COUNT,
    "data.image_size": _COUNT,
    "data.batch_size": _COUNT,
    "data.eval_batch_size": Numeric(int, 1, nullable=True),
    "data.num_workers": _INDEX,
    "data.split_seed": _SEED,
    "data.val_fraction": _FRACTION,
    "model.num_transformers": _INDEX,
    "model.crop_size": _COUNT,
    "model.loc_hidden": _COUNT,
    "model.fixed_scale": Numeric(float, 0, low_open=True, nullable=True),
    "model.init_scale": _RATE,
    "model.dropout": _FRACTION,
    "model.loc_lr_mult": _NONNEG,
    "model.head_lr_mult": _NONNEG,
    "model.label_smoothing": _FRACTION,
    "model.optimizer.lr": _RATE,
    "model.optimizer.momentum": _NONNEG,
    "model.optimizer.weight_decay": _NONNEG,
    "threads": Numeric(int, 1, nullable=True),
    "trainer.max_epochs": _COUNT,
    "trainer.log_every_n_steps": _COUNT,
    "trainer.check_val_every_n_epoch": Numeric(int, 1, nullable=True),
    "trainer.gradient_clip_val": Numeric(float, 0, nullable=True),
}

_ABSENT = object()


def _show(value: Any) -> str:
    return "null" if value is None else repr(value)


def check_numeric_keys(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` ``key=value: expected ...`` for the first bad numeric key."""
    for key, rule in NUMERIC_KEYS.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT and not rule.accepts(value):
            raise ConfigError(f"{key}={_show(value)}: expected {rule.expected()}")


def validate_config(cfg: DictConfig) -> None:
    """Cheap checks of the run-level keys, before any data is read or model built.

    The numeric keys' types and ranges come from one table,
    :data:`~stnrepro.run.checks.NUMERIC_KEYS`. The model's own values (``model.*``,
    ``data.image_size`` against the backbone) are checked by
    :func:`~stnrepro.models.st_cnn.validate_model_args` when :func:`train` builds the model,
    which it does before the data module reads anything.
    """
    for key in ("data", "model", "trainer"):
        if not cfg.get(key):
            raise ConfigError(f"{key}: missing config group (expected e.g. {key}=...)")
    if cfg.get("test_ckpt") not in ("last", "best"):
        raise ConfigError(f"test_ckpt={cfg.get('test_ckpt')!r}: expected 'last' or 'best'")
    if (
        cfg.get("test")
        and cfg.test_ckpt == "best"
        and OmegaConf.select(cfg, "data.val_fraction") == 0
    ):
        raise ConfigError(
            "test_ckpt=best with data.val_fraction=0: there is no validation set to pick the "
            "best checkpoint by; use test_ckpt=last or data.val_fraction > 0"
        )
    check_numeric_keys(cfg)
    threads, cores = cfg.get("threads"), usable_cores()
    if threads is not None and threads > cores:
        raise ConfigError(
            f"threads={threads}: this machine lets the run use {cores} CPU cores; expected at "
            f"most {cores}, or null for torch's default (more threads than cores only crawl)"
        )


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, e.g. under SLURM or taskset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_distributed(cfg: DictConfig, trainer: pl.Trainer) -> None:
    """Refuse, before any process starts, DDP settings that would fail once they have.

    Lightning's DDP without a cluster that starts the ranks (SLURM's tasks, torchrun: the
    cluster environment ``creates_processes_externally``) starts them by re-running this
    command with ``hydra.run.dir`` pinned to this run's folder; in a multirun that would
    rerun the whole sweep in every extra rank. Under SLURM the ranks are the job's tasks.
    """
    if cfg.trainer.get("sync_batchnorm") and isinstance(trainer.accelerator, CPUAccelerator):
        raise ConfigError(
            "trainer.sync_batchnorm=true: torch's SyncBatchNorm runs on GPUs only; on CPU set "
            "trainer.sync_batchnorm=false"
        )
    launcher = trainer.strategy.launcher
    environment = getattr(trainer.strategy, "cluster_environment", None)
    # Lightning keeps its subprocess launcher under SLURM too, and only decides at launch to
    # start nothing when the cluster environment creates the processes (SLURM's tasks).
    external = bool(getattr(environment, "creates_processes_externally", False))
    if is_multirun() and isinstance(launcher, _SubprocessScriptLauncher) and not external:
        raise ConfigError(
            f"trainer.strategy={cfg.trainer.get('strategy')!r} with "
            f"trainer.devices={cfg.trainer.get('devices')!r} in a multirun: Lightning would "
            "start the other ranks by rerunning the whole sweep; run each job as its own "
            "command, or under SLURM (hydra/launcher=slurm_gpu with "
            "hydra.launcher.tasks_per_node=trainer.devices)"
        )
