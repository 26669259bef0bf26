"""Put a finished table on the W&B dashboard: one run of ``job_type="table"`` in the sweep's
group, holding the table and the claims as ``wandb.Table``s (raw numbers, the CSV columns),
the plot as a ``wandb.Image`` and an artifact (type ``table``) with every written file.

Offline (``mode="offline"``) it writes an offline run under ``<dir>/wandb/`` like every
training run, to upload later with ``wandb sync``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from stnrepro.records.reader import TABLE_JOB_TYPE as JOB_TYPE
from stnrepro.results.csv_rows import claims_csv_rows, csv_rows
from stnrepro.results.digits import DigitTable
from stnrepro.results.model import TableData


def log_table(
    table: TableData | DigitTable,
    paths: Sequence[Path],
    *,
    name: str,
    project: str,
    entity: str | None,
    group: str | None,
    mode: Literal["online", "offline", "disabled"],
    save_dir: str | os.PathLike[str],
) -> str:
    """Log ``table`` and its written files ``paths`` as one W&B run; returns the run's dir."""
    import wandb  # deferred: slow to import, and only this path needs it

    run = wandb.init(
        project=project,
        entity=entity,
        group=group,
        job_type=JOB_TYPE,
        name=name,
        dir=str(save_dir),
        mode=mode,
        config={"metric": table.metric, "dataset": table.dataset, "backbone": table.backbone},
    )
    try:
        header, rows = csv_rows(table)
        data: dict[str, object] = {"table": wandb.Table(columns=list(header), data=rows)}
        if table.claims is not None:
            header, rows = claims_csv_rows(table)
            data["claims"] = wandb.Table(columns=list(header), data=rows)
        for path in paths:
            if path.suffix == ".png":
                data["plot"] = wandb.Image(str(path))
        run.log(data)
        # W&B names allow letters, digits, "-", "_" and "." only (--split-by names have "=").
        artifact = wandb.Artifact(re.sub(r"[^A-Za-z0-9_.-]", "_", name), type=JOB_TYPE)
        for path in paths:
            artifact.add_file(str(path))
        run.log_artifact(artifact)
        return str(run.dir)
    finally:
        run.finish()
