"""Training entry point: ``python -m stnrepro.train [overrides]`` (console script ``stn-train``).

:func:`train` instantiates the data module, model, logger, callbacks and trainer from the
Hydra config, fits, tests, and writes the run record (``metrics.json``) it returns. Bad
config values and bad data are refused before training starts with one line naming the
key, file or value. In a multirun a failing job records ``status: failed`` and the sweep
goes on with the next job.
"""

from __future__ import annotations

import json
import logging
import netrc
import os
import re
import sys
import uuid
from contextlib import nullcontext
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.accelerators import CPUAccelerator
from pytorch_lightning.loggers import Logger
from pytorch_lightning.strategies.launchers import _SubprocessScriptLauncher
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from stnrepro import provenance
from stnrepro.checkpoint_io import AtomicCheckpointIO
from stnrepro.config import CONFIG_NAME, CONFIG_PATH
from stnrepro.config_values import check_numeric_keys
from stnrepro.errors import ConfigError, StnreproError, one_line
from stnrepro.lifecycle import check_same_run, hold_output_dir, run_definition, save_definition
from stnrepro.records.schema import PREDICTIONS_FILENAME, RECORD_FILENAME
from stnrepro.records.writer import RecordWriter, table_cell
from stnrepro.reproducibility import RNGStateCallback, resolve_ckpt_path
from stnrepro.results.stats import Predictions, write_predictions

log = logging.getLogger("stnrepro")


def wandb_credentials_present() -> bool:
    """True when W&B could log online without prompting: an API key in the env or netrc."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or ""
    path = os.environ.get("NETRC", str(Path.home() / ".netrc"))
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def _is_rank_zero() -> bool:
    """True in the process that owns the run's files: the only one, or DDP's global rank 0.

    Under DDP every rank runs :func:`train` with the same config, but only rank 0 holds the
    output folder, writes ``run_config.json``, the record, ``predictions.csv`` and the W&B
    run; the other ranks train and write nothing. Lightning's ``rank_zero_only.rank`` is
    read from the environment (``RANK``, ``LOCAL_RANK``, ``SLURM_PROCID``) when Lightning is
    imported, so it is right before the Trainer exists, and the DDP strategy updates it.
    """
    return rank_zero_only.rank == 0


def _is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _wandb_run_id(output_dir: Path) -> str | None:
    """One W&B run id per output directory, so a resumed run continues the same W&B run.

    Made and stored by rank 0; other DDP ranks create no W&B run and only read it (None
    when it is not there yet, as under SLURM where all ranks start at once).
    """
    path = output_dir / "wandb_run_id.txt"
    if path.exists():
        return path.read_text().strip()
    if not _is_rank_zero():
        return None
    run_id = uuid.uuid4().hex[:12]
    path.write_text(run_id + "\n")
    return run_id


def build_logger(cfg: DictConfig, output_dir: Path, name: str) -> Logger | None:
    """Instantiate ``cfg.logger`` (None for ``logger=none``), filling in W&B run identity."""
    if not cfg.get("logger"):
        return None
    kwargs: dict[str, Any] = {}
    target = str(cfg.logger.get("_target_", ""))
    if target.endswith("WandbLogger"):
        group = cfg.logger.get("group")
        if group is None and _is_multirun():
            group = f"{cfg.task_name}-{Path(HydraConfig.get().sweep.dir).name}"
        offline = cfg.logger.get("offline")
        if offline is None:  # auto: offline when nobody is logged in
            offline = os.environ.get("WANDB_MODE") == "offline" or not wandb_credentials_present()
            if offline:
                log.info(
                    "W&B: no credentials found, logging offline to %s/wandb; upload later with "
                    "`wandb sync %s/wandb/offline-run-*`",
                    output_dir,
                    output_dir,
                )
        kwargs = {
            "name": name,
            "group": group,
            "offline": bool(offline),
            "id": _wandb_run_id(output_dir),
            "resume": "allow",
            "save_dir": str(output_dir),
        }
    logger = build(cfg.logger, "logger", **kwargs)
    if target.endswith("WandbLogger"):
        _define_summaries(logger)
    return logger


# Run-table summaries: the best validation accuracy over epochs, the final test accuracy.
WANDB_SUMMARIES = {"val/acc": "max", "test/acc": "last", "test/acc_top5": "last"}


def _define_summaries(logger: Logger) -> None:
    """Make W&B's run table show ``WANDB_SUMMARIES`` (not just each key's last value)."""
    experiment = logger.experiment  # a no-op stand-in on ranks other than 0
    for key, summary in WANDB_SUMMARIES.items():
        experiment.define_metric(key, summary=summary)


def build_callbacks(cfg: DictConfig, has_logger: bool, has_val: bool) -> list[pl.Callback]:
    """Instantiate ``cfg.callbacks``; drop what cannot work in this run's setting."""
    callbacks = []
    for key, cb_cfg in (cfg.get("callbacks") or {}).items():
        if not cb_cfg or "_target_" not in cb_cfg:
            continue
        if key == "lr_monitor" and not has_logger:
            continue  # LearningRateMonitor refuses a Trainer without logger
        if cb_cfg.get("monitor") and not has_val:
            continue  # nothing to monitor; the unmonitored last_checkpoint still saves
        callbacks.append(build(cb_cfg, f"callbacks.{key}"))
    return callbacks


def build(node: DictConfig, key: str | None = None, **kwargs: Any) -> Any:
    """``instantiate(node, **kwargs)``, with bad config values as the project's one-line errors.

    Every object a run makes from its config (data, model, logger, callbacks, trainer) is made
    here. Hydra wraps whatever a ``_target_`` raises in an ``InstantiationException`` (a
    multi-line message that :func:`main` would not recognise); a :class:`StnreproError` from a
    constructor (a bad model value, missing pretrained weights) is re-raised as itself instead.
    ``key`` names the config node of a third-party target (``trainer``, ``logger``,
    ``callbacks.<name>``): there a ``ValueError``, ``TypeError`` or Lightning
    ``MisconfigurationException`` from the constructor is a bad config value and becomes a
    :class:`ConfigError` naming the argument (see :func:`_constructor_error`). Our own
    constructors raise StnreproError for bad values, so anything else from them is a bug and
    keeps its traceback.
    """
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, StnreproError):
            raise cause from None
        if key is not None and isinstance(
            cause, ValueError | TypeError | MisconfigurationException
        ):
            raise _constructor_error(node, key, cause) from cause
        raise


def _constructor_error(node: DictConfig, key: str, cause: BaseException) -> ConfigError:
    """One line ``key.arg=value: <the library's message>`` for a constructor's refusal.

    The argument is the config key of ``node`` the message mentions first (Lightning names
    it: "Precision 'x' is invalid", "`devices` selected with ..."); without one the line
    names ``key`` alone. A GPU trainer on a machine without one gets its own message, since
    Lightning's ("No supported gpu backend found!") names neither the key nor the fix.
    """
    accelerator = node.get("accelerator") if key == "trainer" else None
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        return ConfigError(
            f"trainer.accelerator={accelerator}: no GPU is available on this machine; "
            "use trainer=cpu"
        )
    message = one_line(cause)
    mentioned = []
    for name in node:
        name = str(name)
        if name.startswith("_"):
            continue
        match = re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", message, re.IGNORECASE)
        if match:
            mentioned.append((match.start(), name))
    if not mentioned:
        return ConfigError(f"{key}: {message}")
    name = min(mentioned)[1]
    value = node.get(name)
    shown = "null" if value is None else repr(value) if isinstance(value, str) else value
    return ConfigError(f"{key}.{name}={shown}: {message}")


def validate_config(cfg: DictConfig) -> None:
    """Cheap checks of the run-level keys, before any data is read or model built.

    The numeric keys' types and ranges come from one table,
    :data:`~stnrepro.config_values.NUMERIC_KEYS`. The model's own values (``model.*``,
    ``data.image_size`` against the backbone) are checked by
    :func:`~stnrepro.models.st_cnn.validate_model_args` when :func:`train` builds the model,
    which it does before the data module reads anything.
    """
    for key in ("data", "model", "trainer"):
        if not cfg.get(key):
            raise ConfigError(f"{key}: missing config group (expected e.g. {key}=...)")
    if cfg.get("test_ckpt") not in ("last", "best"):
        raise ConfigError(f"test_ckpt={cfg.get('test_ckpt')!r}: expected 'last' or 'best'")
    check_numeric_keys(cfg)


def build_datamodule(cfg: DictConfig) -> Any:
    """``cfg.data`` instantiated with its index files checked, before any model is built."""
    datamodule = build(cfg.data)
    datamodule.validate()
    return datamodule


def check_distributed(cfg: DictConfig, trainer: pl.Trainer) -> None:
    """Refuse, before any process starts, DDP settings that would fail once they have.

    Lightning's DDP without a cluster that starts the ranks (SLURM, torchrun) starts them by
    re-running this command with ``hydra.run.dir`` pinned to this run's folder; in a multirun
    that would rerun the whole sweep in every extra rank.
    """
    if cfg.trainer.get("sync_batchnorm") and isinstance(trainer.accelerator, CPUAccelerator):
        raise ConfigError(
            "trainer.sync_batchnorm=true: torch's SyncBatchNorm runs on GPUs only; on CPU set "
            "trainer.sync_batchnorm=false"
        )
    if _is_multirun() and isinstance(trainer.strategy.launcher, _SubprocessScriptLauncher):
        raise ConfigError(
            f"trainer.strategy={cfg.trainer.get('strategy')!r} with "
            f"trainer.devices={cfg.trainer.get('devices')!r} in a multirun: Lightning would "
            "start the other ranks by rerunning the whole sweep; run each job as its own "
            "command, or under SLURM (hydra/launcher=slurm_gpu with "
            "hydra.launcher.tasks_per_node=trainer.devices)"
        )


def _metrics(trainer: pl.Trainer) -> dict[str, Any]:
    return {k: v for k, v in trainer.callback_metrics.items() if not k.startswith("train/st")}


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and test one run described by ``cfg``; return its record (also in metrics.json).

    The output directory holds this one run (``stnrepro.lifecycle``): a finished run is left
    as it is, an unfinished one resumes, and a different run there is refused. Under DDP,
    ranks other than 0 make the same checks (so under SLURM, where all ranks start at once,
    they stop too rather than wait for a rank 0 that never trains) but do not hold the
    folder: rank 0 holds it for the whole run.
    """
    output_dir = Path(cfg.paths.output_dir)
    with hold_output_dir(output_dir) if _is_rank_zero() else nullcontext():
        definition = run_definition(cfg)
        if check_same_run(output_dir, definition):
            finished = _finished_record(output_dir)
            if finished is not None:
                log.info(
                    "run %s already finished; nothing to do. Its record: %s",
                    finished.get("run_name"),
                    output_dir / RECORD_FILENAME,
                )
                return finished
        return _fit_and_test(cfg, output_dir, definition)


def _finished_record(output_dir: Path) -> dict[str, Any] | None:
    path = output_dir / RECORD_FILENAME
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("status") == "finished" else None


def _fit_and_test(cfg: DictConfig, output_dir: Path, definition: dict[str, Any]) -> dict[str, Any]:
    record = RecordWriter(
        output_dir,
        table_cell(cfg),
        epochs=OmegaConf.select(cfg, "trainer.max_epochs"),
        config=definition,
        write=_is_rank_zero(),
    )
    logger: Logger | None = None
    trainer: pl.Trainer | None = None
    try:
        validate_config(cfg)
        provenance.set_threads(cfg.get("threads"))
        resume_from = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
        if _is_rank_zero():
            save_definition(output_dir, definition)
        record.save()
        pl.seed_everything(cfg.seed, workers=True)
        model = build(cfg.model)  # refuses bad model values before any data is read
        datamodule = build_datamodule(cfg)
        logger = build_logger(cfg, output_dir, record.data["run_name"])
        if logger is not None:
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
            record.data["logger"] = {
                "name": type(logger).__name__.removesuffix("Logger").lower(),
                "run_id": str(logger.version) if logger.version is not None else None,
                "project": cfg.logger.get("project"),
                "group": getattr(logger, "_wandb_init", {}).get("group"),
                "dir": str(logger.save_dir) if logger.save_dir else None,
            }
        callbacks = build_callbacks(cfg, logger is not None, datamodule.has_val)
        callbacks.append(RNGStateCallback())
        limit_val = {} if datamodule.has_val else {"limit_val_batches": 0}
        trainer = build(
            cfg.trainer,
            "trainer",
            callbacks=callbacks,
            logger=logger or False,
            plugins=[AtomicCheckpointIO()],
            **limit_val,
        )
        check_distributed(cfg, trainer)
        record.data["provenance"] = provenance.collect(trainer, datamodule)
        if resume_from:
            log.info("resuming from %s", resume_from)
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from)
        record.update_metrics(_metrics(trainer))
        if cfg.get("test"):
            ckpt = "best" if cfg.test_ckpt == "best" and datamodule.has_val else None
            trainer.test(model, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
            record.update_metrics(_metrics(trainer))
            _save_predictions(model, trainer, output_dir, record, logger)
        record.finish()
        if logger is not None:  # after finish(): the W&B copy must say "finished" too
            _log_summary(logger, record)
    except BaseException as exc:
        interruption = _interruption(trainer, exc)
        if interruption:
            record.interrupt(interruption[0])
        else:
            record.fail(exc)
        if logger is not None:
            _log_summary(logger, record)
        if interruption:
            # Stopped from outside: stop the whole sweep with the conventional status
            # instead of starting the next job.
            raise SystemExit(interruption[1]) from exc
        raise
    finally:
        _finish_wandb(logger)
    return record.data


RESUME_HINT = "resume with the same command (ckpt_path=last continues from checkpoints/last.ckpt)"


def _interruption(trainer: pl.Trainer | None, exc: BaseException) -> tuple[str, int] | None:
    """``(record error, exit status)`` when the run was stopped from outside, else None.

    Ctrl-C: Lightning catches the KeyboardInterrupt, marks the trainer interrupted and calls
    ``sys.exit(1)``; outside ``fit`` it arrives as KeyboardInterrupt. SIGTERM: Lightning's
    own SIGTERMException exits with status 0, and DataLoader workers that die first surface
    as a RuntimeError; ``trainer.received_sigterm`` tells either way. Exit statuses are the
    shell's 128 + signal number.
    """
    if trainer is not None and trainer.received_sigterm:
        return f"interrupted by SIGTERM; {RESUME_HINT}", 143
    if isinstance(exc, KeyboardInterrupt) or (
        isinstance(exc, SystemExit) and trainer is not None and trainer.interrupted
    ):
        return f"interrupted by Ctrl-C; {RESUME_HINT}", 130
    return None


def _save_predictions(
    model: pl.LightningModule,
    trainer: pl.Trainer,
    output_dir: Path,
    record: RecordWriter,
    logger: Logger | None,
) -> None:
    """Write the test's per-image predictions next to the record; log them to W&B.

    Every rank holds the gathered predictions, so every rank's record names the file; only
    rank 0 writes it and logs it (an artifact of type ``predictions``).
    """
    columns = getattr(model, "test_predictions", None)
    if columns is None:
        return
    record.data["predictions"] = PREDICTIONS_FILENAME
    if not trainer.is_global_zero:
        return
    path = output_dir / PREDICTIONS_FILENAME
    label, pred = columns["label"], columns["pred"]
    predictions = Predictions(
        columns["image_id"], label, pred, label == pred, columns["correct_top5"], source=str(path)
    )
    write_predictions(path, predictions)
    if logger is not None and type(logger).__name__.startswith("Wandb"):
        import wandb

        run = logger.experiment
        artifact = wandb.Artifact(f"predictions-{run.id}", type="predictions")
        artifact.add_file(str(path))
        run.log_artifact(artifact)


def _log_summary(logger: Logger, record: RecordWriter) -> None:
    """Store the record as the W&B run summary key ``record`` (what the table reads).

    Rank 0 only: elsewhere ``logger.experiment`` is Lightning's no-op stand-in.
    """
    if not _is_rank_zero():
        return
    experiment = getattr(logger, "experiment", None)
    summary = getattr(experiment, "summary", None)
    if summary is not None:
        summary["record"] = dict(record.data)


def _finish_wandb(logger: Logger | None) -> None:
    """End this job's W&B run, or the next multirun job would log into it."""
    if logger is None or not type(logger).__name__.startswith("Wandb") or not _is_rank_zero():
        return
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=0 if sys.exc_info()[0] is None else 1)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=CONFIG_NAME)
def main(cfg: DictConfig) -> float | None:
    """Hydra task: one run. Returns test accuracy (for sweepers that optimise it)."""
    try:
        record = train(cfg)
    except StnreproError as exc:
        log.error("error: %s", one_line(exc))
        if _is_multirun():
            return None
        print(f"error: {one_line(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception:
        if _is_multirun():  # one failure never costs the sweep: it is in metrics.json
            log.exception("job failed; the sweep goes on")
            return None
        raise
    metrics = record["metrics"]
    log.info(
        "run %s finished: %s; record %s",
        record["run_name"],
        ", ".join(
            f"{k}={v:.4f}" for k, v in metrics.items() if k.endswith("/acc") and v is not None
        ),
        Path(record["output_dir"]) / RECORD_FILENAME,
    )
    return metrics.get("test/acc")


if __name__ == "__main__":
    main()
