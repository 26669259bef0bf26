"""Training entry point: ``python -m stnrepro.train [overrides]`` (console script ``stn-train``).

One Hydra job is one run (:func:`stnrepro.run.fit.train`: fit, test, write the record it
returns). Bad config values and bad data are one ``error: ...`` line and exit status 2. In
a multirun a failing job records ``status: failed`` and the sweep goes on with the next job.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from stnrepro.config import CONFIG_NAME, CONFIG_PATH
from stnrepro.errors import STORAGE_ERRORS, StnreproError, exit_status, one_line
from stnrepro.records.schema import RECORD_FILENAME
from stnrepro.run.context import is_multirun
from stnrepro.run.fit import train

__all__ = ["main", "train"]

log = logging.getLogger("stnrepro")


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=CONFIG_NAME)
def main(cfg: DictConfig) -> float | None:
    """Hydra task: one run. Returns test accuracy (for sweepers that optimise it)."""
    try:
        record = train(cfg)
    except StnreproError as exc:
        if is_multirun():  # the sweep goes on; the job's log says why this one stopped
            log.error("error: %s", one_line(exc))
            return None
        print(f"error: {one_line(exc)}", file=sys.stderr)  # once: not also through the log
        raise SystemExit(exit_status(exc)) from None
    except Exception as exc:
        if is_multirun():  # one failure never costs the sweep: it is in metrics.json
            log.exception("job failed; the sweep goes on")
            return None
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRORS:  # not a bug: say it once
            where = f"{exc.filename}: " if exc.filename else ""
            print(f"error: {where}{exc.strerror}; the run's record says so", file=sys.stderr)
            raise SystemExit(1) from None
        raise
    metrics = record["metrics"]
    log.info(
        "run %s finished: %s; record %s",
        record["run_name"],
        ", ".join(
            f"{k}={v:.4f}" for k, v in metrics.items() if k.endswith("/acc") and v is not None
        ),
        Path(cfg.paths.output_dir) / RECORD_FILENAME,  # this folder's, even when copied
    )
    return metrics.get("test/acc")


if __name__ == "__main__":
    main()
