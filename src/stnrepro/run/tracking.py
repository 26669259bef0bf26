"""Weights & Biases: the logger, its run identity, the summaries the dashboard shows, and
ending each job's run.

Only the process that owns the run's files (:func:`stnrepro.run.context.is_rank_zero`)
creates a W&B run. A run's W&B id is kept in its output folder, so a resumed run continues
the same W&B run; without credentials W&B logs offline.
"""

from __future__ import annotations

import json
import logging
import netrc
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from pytorch_lightning.loggers import Logger

from stnrepro.errors import ServiceError, one_line
from stnrepro.records.writer import RecordWriter
from stnrepro.run.build import build
from stnrepro.run.context import is_multirun, is_rank_zero

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


def wandb_run_id(output_dir: Path) -> str | None:
    """One W&B run id per output directory, so a resumed run continues the same W&B run.

    Made and stored by rank 0; other DDP ranks create no W&B run and only read it (None
    when it is not there yet, as under SLURM where all ranks start at once).
    """
    path = output_dir / "wandb_run_id.txt"
    if path.exists():
        return path.read_text().strip()
    if not is_rank_zero():
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
    if target.endswith("WandbLogger") and os.environ.get("WANDB_MODE") == "disabled":
        log.info("W&B: WANDB_MODE=disabled, so this run logs nothing to W&B")
        return None
    if target.endswith("WandbLogger"):
        group = cfg.logger.get("group")
        if group is None and is_multirun():
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
            "id": wandb_run_id(output_dir),
            "resume": "allow",
            "save_dir": str(output_dir),
        }
    logger = build(cfg.logger, "logger", **kwargs)
    if target.endswith("WandbLogger"):
        _start_run(logger)
        define_summaries(logger)
    return logger


# How long a resumed run waits for W&B to release its run id (see _start_run).
RUN_ID_WAIT_S = 120.0


def _start_run(logger: Logger) -> None:
    """Start (or resume) the W&B run, waiting while its id is still held.

    After a SIGKILL the killed run's W&B service process can outlive it for a while and
    keep the run id: resuming at once then fails with "run ID ... is in use". The id is
    released when that process notices; until then the start is retried.
    """
    deadline = time.monotonic() + RUN_ID_WAIT_S
    while True:
        try:
            # Creates the run (rank 0; a stand-in elsewhere). Lightning's Logger base class
            # declares no `experiment`; every concrete logger has one.
            logger.experiment  # type: ignore[attr-defined]  # noqa: B018
            return
        except Exception as exc:
            if "is in use" in str(exc) and time.monotonic() <= deadline:
                log.info("W&B run id still held by the interrupted run's process; waiting")
                time.sleep(2.0)
                continue
            if type(exc).__module__.startswith("wandb"):  # CommError, UsageError, ...
                raise ServiceError(
                    f"W&B could not start the run ({type(exc).__name__}: {one_line(exc)[:300]}); "
                    "check the network and your W&B login, or log offline: WANDB_MODE=offline "
                    "(upload later with `wandb sync`)"
                ) from None
            raise


# Run-table summaries: the best validation accuracy over epochs, the final test accuracy.
WANDB_SUMMARIES = {"val/acc": "max", "test/acc": "last", "test/acc_top5": "last"}


def define_summaries(logger: Logger) -> None:
    """Make W&B's run table show ``WANDB_SUMMARIES`` (not just each key's last value)."""
    # A no-op stand-in on ranks other than 0. (Lightning's Logger base class declares no
    # `experiment`; every concrete logger has one.)
    experiment = logger.experiment  # type: ignore[attr-defined]
    for key, summary in WANDB_SUMMARIES.items():
        experiment.define_metric(key, summary=summary)


def log_summary(logger: Logger, record: RecordWriter) -> None:
    """Store the record in the W&B run summary, with its status and cell beside it.

    ``record`` holds the whole record as JSON text (what ``stn-table --wandb`` reads back);
    ``status`` and ``cell`` repeat the two parts a dashboard should show at a glance. As one
    text value the record is one summary entry: as a nested dict its config and provenance
    made some 300 entries, which buried ``test/acc`` and ``val/acc`` in the summary list of
    W&B's local dashboard (``wandb leet``, which lists every key) and added as many columns
    to the cloud runs table. Rank 0 only: elsewhere ``logger.experiment`` is Lightning's
    no-op stand-in.
    """
    if not is_rank_zero():
        return
    experiment = getattr(logger, "experiment", None)
    summary = getattr(experiment, "summary", None)
    if summary is not None:
        data = record.data
        summary.update(
            {"record": json.dumps(data), "status": data["status"], "cell": dict(data["cell"])}
        )


def log_artifact(logger: Logger | None, path: Path, kind: str) -> None:
    """Log the file ``path`` to this job's W&B run as an artifact of type ``kind`` (rank 0)."""
    if logger is None or not type(logger).__name__.startswith("Wandb") or not is_rank_zero():
        return
    import wandb

    run = logger.experiment  # type: ignore[attr-defined]  # a WandbLogger's: see above
    artifact = wandb.Artifact(f"{kind}-{run.id}", type=kind)
    artifact.add_file(str(path))
    run.log_artifact(artifact)


def finish_wandb(logger: Logger | None) -> None:
    """End this job's W&B run, or the next multirun job would log into it."""
    if logger is None or not type(logger).__name__.startswith("Wandb") or not is_rank_zero():
        return
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=0 if sys.exc_info()[0] is None else 1)
