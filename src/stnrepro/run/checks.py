"""The checks of a run's config that come before anything is read, built or started.

The numeric keys are checked from the one table of key -> kind and range
(:data:`~stnrepro.utils.config_values.NUMERIC_KEYS`, where the conventions are stated);
:func:`validate_config` runs it with the run-level checks; :func:`check_distributed` refuses
DDP settings that would fail once processes have started. A key absent from the config
(``momentum`` of an optimizer that has none) is not checked.
"""

from __future__ import annotations

import os

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.accelerators import CPUAccelerator
from pytorch_lightning.strategies.launchers import _SubprocessScriptLauncher

from stnrepro.errors import ConfigError
from stnrepro.run.context import is_multirun
from stnrepro.utils.config_values import NUMERIC_KEYS, Numeric, check_value

__all__ = ["NUMERIC_KEYS", "Numeric", "check_distributed", "check_numeric_keys", "validate_config"]


_ABSENT = object()


def check_numeric_keys(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` ``key=value: expected ...`` for the first bad numeric key."""
    for key in NUMERIC_KEYS:
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT:
            check_value(key, value)


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
