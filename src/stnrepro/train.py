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
from stnrepro.errors import StnreproError, one_line
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
