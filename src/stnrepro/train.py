"""Training entry point: ``python -m stnrepro.train [overrides]`` (console script ``stn-train``).

:func:`train` instantiates the data module, model, logger, callbacks and trainer from the
Hydra config, fits, tests, and writes the run record (``metrics.json``) it returns. Bad
config values and bad data are refused before training starts with one line naming the
key, file or value. In a multirun a failing job records ``status: failed`` and the sweep
goes on with the next job.
"""

from __future__ import annotations

import logging
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger

from stnrepro import provenance
from stnrepro.building import (
    build,
    build_callbacks,
    build_datamodule,
    check_distributed,
    validate_config,
)
from stnrepro.checkpoint_io import AtomicCheckpointIO
from stnrepro.config import CONFIG_NAME, CONFIG_PATH
from stnrepro.errors import StnreproError, one_line
from stnrepro.lifecycle import (
    check_same_run,
    hold_output_dir,
    recorded,
    run_definition,
    save_definition,
)
from stnrepro.records.schema import PREDICTIONS_FILENAME, RECORD_FILENAME
from stnrepro.records.writer import RecordWriter, table_cell
from stnrepro.reproducibility import RNGStateCallback, resolve_ckpt_path
from stnrepro.results.stats import Predictions, write_predictions
from stnrepro.tracking import (
    build_logger,
    finish_wandb,
    is_multirun,
    is_rank_zero,
    log_artifact,
    log_summary,
)

log = logging.getLogger("stnrepro")


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
    )
    logger: Logger | None = None
    trainer: pl.Trainer | None = None
    try:
        validate_config(cfg)
        provenance.set_threads(cfg.get("threads"))
        resume_from = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
        if is_rank_zero():
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
        record.data["provenance"] = provenance.collect(trainer, datamodule)
        if resume_from:
            log.info("resuming from %s", resume_from)
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from)
        # What training ran with: Lightning's DDP launcher may set the count inside fit.
        record.data["provenance"]["threads"] = torch.get_num_threads()
        record.update_metrics(_metrics(trainer))
        if cfg.get("test"):
            ckpt = "best" if cfg.test_ckpt == "best" and datamodule.has_val else None
            trainer.test(model, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
            record.update_metrics(_metrics(trainer))
            _save_predictions(model, trainer, output_dir, record, logger)
        record.finish()
        if logger is not None:  # after finish(): the W&B copy must say "finished" too
            log_summary(logger, record)
    except BaseException as exc:
        interruption = _interruption(trainer, exc)
        if interruption:
            record.interrupt(interruption[0])
        else:
            record.fail(exc)
        if logger is not None:
            log_summary(logger, record)
        if interruption:
            # Stopped from outside: stop the whole sweep with the conventional status
            # instead of starting the next job.
            raise SystemExit(interruption[1]) from exc
        raise
    finally:
        finish_wandb(logger)
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
    log_artifact(logger, path, "predictions")


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=CONFIG_NAME)
def main(cfg: DictConfig) -> float | None:
    """Hydra task: one run. Returns test accuracy (for sweepers that optimise it)."""
    try:
        record = train(cfg)
    except StnreproError as exc:
        log.error("error: %s", one_line(exc))
        if is_multirun():
            return None
        print(f"error: {one_line(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception:
        if is_multirun():  # one failure never costs the sweep: it is in metrics.json
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
