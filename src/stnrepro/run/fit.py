"""One run from start to finish: hold the folder, check it is this run, fit, test, record.

:func:`train` builds the data module, model, logger, callbacks and trainer from the Hydra
config (:mod:`stnrepro.run.build`), fits, tests, and writes the run record
(``metrics.json``) it returns, with the per-image test predictions beside it. Bad config
values and bad data are refused before training starts with one line naming the key, file
or value (:mod:`stnrepro.run.checks`). A failure or an interruption is recorded as such
before it propagates.
"""

from __future__ import annotations

import logging
import signal
import threading
from contextlib import nullcontext
from pathlib import Path
from typing import Any, cast

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger

from stnrepro.errors import one_line
from stnrepro.lightning.checkpoint_io import AtomicCheckpointIO
from stnrepro.lightning.identity import RunDefinitionCallback
from stnrepro.lightning.rng import RNGStateCallback
from stnrepro.records.definition import run_definition, save_definition
from stnrepro.records.predictions import Predictions, write_predictions
from stnrepro.records.reader import recorded
from stnrepro.records.schema import PREDICTIONS_FILENAME, RECORD_FILENAME
from stnrepro.records.writer import RecordWriter, table_cell
from stnrepro.run import provenance
from stnrepro.run.build import build, build_callbacks, build_datamodule
from stnrepro.run.checks import check_distributed, validate_config
from stnrepro.run.context import is_rank_zero
from stnrepro.run.folder import check_same_run, hold_output_dir
from stnrepro.run.resume import LAST_CHECKPOINT, init_weights, resolve_ckpt_path
from stnrepro.run.slurm import Ending, JobSignals, job_id
from stnrepro.run.tracking import build_logger, finish_wandb, log_artifact, log_summary

log = logging.getLogger("stnrepro")


def _metrics(trainer: pl.Trainer) -> dict[str, Any]:
    return {k: v for k, v in trainer.callback_metrics.items() if not k.startswith("train/st")}


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and test one run described by ``cfg``; return its record (also in metrics.json).

    The output directory holds this one run (``stnrepro.run.folder``): a finished run is left
    as it is, an unfinished one resumes, and a different run there is refused. Under DDP,
    ranks other than 0 make the same checks (so under SLURM, where all ranks start at once,
    they stop too rather than wait for a rank 0 that never trains) but do not hold the
    folder: rank 0 holds it for the whole run.
    """
    output_dir = Path(cfg.paths.output_dir)
    with hold_output_dir(output_dir) if is_rank_zero() else nullcontext():
        definition = run_definition(cfg)
        if check_same_run(output_dir, definition):
            finished = recorded(output_dir)
            if finished is not None and finished.get("status") == "finished":
                log.info(
                    "run %s already finished; nothing to do. Its record: %s",
                    finished.get("run_name"),
                    output_dir / RECORD_FILENAME,
                )
                return finished
        return _fit_and_test(cfg, output_dir, definition)


def _fit_and_test(cfg: DictConfig, output_dir: Path, definition: dict[str, Any]) -> dict[str, Any]:
    record = RecordWriter(
        output_dir,
        table_cell(cfg),
        epochs=OmegaConf.select(cfg, "trainer.max_epochs"),
        config=definition,
        write=is_rank_zero(),
        job=job_id(),
    )
    # This folder's earlier attempts of the same run (a resume, a requeue) stay listed.
    record.carry_attempts(recorded(output_dir))
    with JobSignals() as signals:
        return _attempt(cfg, output_dir, definition, record, signals)


def _attempt(
    cfg: DictConfig,
    output_dir: Path,
    definition: dict[str, Any],
    record: RecordWriter,
    signals: JobSignals,
) -> dict[str, Any]:
    logger: Logger | None = None
    trainer: pl.Trainer | None = None
    try:
        validate_config(cfg)
        provenance.set_threads(cfg.get("threads"))
        resume_from = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir, definition)
        if resume_from is not None and Path(resume_from) == output_dir / LAST_CHECKPOINT:
            # This folder's own run continues: what its last attempt recorded stands until
            # this one logs anew (a resume after the last epoch fits nothing).
            record.carry_metrics(recorded(output_dir))
        if is_rank_zero():
            save_definition(output_dir, definition)
        record.save()
        pl.seed_everything(cfg.seed, workers=True)
        model = build(cfg.model)  # refuses bad model values before any data is read
        init = None
        if cfg.get("init_from"):
            init = init_weights(model, str(cfg.init_from), load=resume_from is None)
        datamodule = build_datamodule(cfg)
        logger = build_logger(cfg, output_dir, record.data["run_name"])
        if logger is not None:
            hparams = OmegaConf.to_container(cfg, resolve=True)
            logger.log_hyperparams(cast("dict[str, Any]", hparams))  # a DictConfig's: str keys
            record.data["logger"] = {
                "name": type(logger).__name__.removesuffix("Logger").lower(),
                "run_id": str(logger.version) if logger.version is not None else None,
                "project": cfg.logger.get("project"),
                "group": getattr(logger, "_wandb_init", {}).get("group"),
                "dir": str(logger.save_dir) if logger.save_dir else None,
            }
            record.save()  # a run killed from now on still names its W&B run
        callbacks = build_callbacks(cfg, logger is not None, datamodule.has_val)
        callbacks += [RNGStateCallback(), RunDefinitionCallback(definition), signals.callback()]
        limit_val = {} if datamodule.has_val else {"limit_val_batches": 0}
        # Our checkpoint writer joins the plugins the config asks for (e.g. a SLURM
        # environment), which a plain plugins= argument would replace.
        plugins = [*build(cfg.trainer.get("plugins") or [], "trainer.plugins")]
        trainer = build(
            cfg.trainer,
            "trainer",
            callbacks=callbacks,
            logger=logger or False,
            plugins=[*plugins, AtomicCheckpointIO()],
            **limit_val,
        )
        check_distributed(cfg, trainer)
        record.data["provenance"] = provenance.collect(trainer, datamodule, init)
        if resume_from:
            log.info("resuming from %s", resume_from)
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from)
        # What training ran with: Lightning's DDP launcher may set the count inside fit.
        record.data["provenance"]["threads"] = torch.get_num_threads()
        record.update_metrics(_metrics(trainer))
        if cfg.get("test"):
            ckpt = "best" if cfg.test_ckpt == "best" else None
            trainer.test(model, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
            record.update_metrics(_metrics(trainer))
            _save_predictions(model, trainer, output_dir, record, logger)
        record.finish()
        if logger is not None:  # after finish(): the W&B copy must say "finished" too
            log_summary(logger, record)
    except BaseException as exc:
        ending = _ending(trainer, exc, signals)
        try:
            if ending is None:
                record.fail(exc)
            elif ending.status == "failed":
                record.fail(ending.reason)
            else:
                record.interrupt(ending.reason)
        except OSError as write_error:  # keep the run's own error, not the record's
            log.error("could not record how the run ended: %s", one_line(write_error))
        if logger is not None:
            log_summary(logger, record)
        if ending is not None and ending.status == "interrupted":
            # Stopped from outside: stop the whole sweep with the conventional status
            # instead of starting the next job; after submitit requeued the job, with
            # submitit's own exit, whatever else was raised meanwhile.
            raise SystemExit(ending.exit_status) from exc
        raise
    finally:
        finish_wandb(logger)
    return record.data


RESUME_HINT = "resume with the same command (ckpt_path=last continues from checkpoints/last.ckpt)"


def _stop_watching_loader_workers() -> None:
    """Let child processes exit unremarked again, now that the attempt is ending.

    A DataLoader with workers installs torch's SIGCHLD handler, which raises "DataLoader
    worker ... is killed" at every child exit once a worker has died. SLURM's SIGTERM kills
    the workers with the job, so the handler would raise inside whatever runs next, e.g.
    the ``scontrol`` call that names the SIGTERM's cause, and the attempt would end with
    its record still saying "running" and submitit counting the job as done.
    """
    if hasattr(signal, "SIGCHLD") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)


def _ending(trainer: pl.Trainer | None, exc: BaseException, signals: JobSignals) -> Ending | None:
    """How the attempt was stopped from outside, or None for a failure of the run itself.

    SLURM first (:mod:`stnrepro.run.slurm`: a time-limit warning that submitit requeued or
    refused to, a SIGTERM that SLURM says was a requeue), because submitit's exit after a
    requeue reaches Lightning just as Ctrl-C's does. Ctrl-C: Lightning catches the
    KeyboardInterrupt, marks the trainer interrupted and calls ``sys.exit(1)``; outside
    ``fit`` it arrives as KeyboardInterrupt. SIGTERM: Lightning's own SIGTERMException
    exits with status 0, and DataLoader workers that die first surface as a RuntimeError;
    ``trainer.received_sigterm`` tells either way. Exit statuses are the shell's
    128 + signal number.
    """
    _stop_watching_loader_workers()
    received_sigterm = trainer is not None and trainer.received_sigterm
    slurm = signals.ending(received_sigterm)
    if slurm is not None:
        return slurm
    if received_sigterm:
        return Ending("interrupted", f"interrupted by SIGTERM; {RESUME_HINT}", 143)
    if isinstance(exc, KeyboardInterrupt) or (
        isinstance(exc, SystemExit) and trainer is not None and trainer.interrupted
    ):
        return Ending("interrupted", f"interrupted by Ctrl-C; {RESUME_HINT}", 130)
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
    record.data["test_images"] = len(columns["image_id"])
    path = output_dir / PREDICTIONS_FILENAME
    label, pred = columns["label"], columns["pred"]
    predictions = Predictions(
        columns["image_id"], label, pred, label == pred, columns["correct_top5"], source=str(path)
    )
    if not trainer.is_global_zero:
        return
    record.data["predictions_sha256"] = write_predictions(path, predictions)
    log_artifact(logger, path, "predictions")
