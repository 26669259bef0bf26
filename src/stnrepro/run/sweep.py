"""The end of a sweep: one summary line, and a non-zero exit status when a job did not finish.

A sweep's jobs record how they ended (``metrics.json``, ``status``) and the sweep goes on past
a failed one; without this the sweep command exited 0 either way, so a CI pipeline or a
script could not tell. :class:`SweepStatus` is a Hydra callback (``hydra.callbacks`` in
``conf/hydra/default.yaml``), so it runs for every launcher (joblib, submitit local and
SLURM) once all jobs have returned.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from stnrepro.records.reader import recorded

__all__ = ["SweepStatus", "summarise"]


def summarise(sweep_dir: Path, jobs: int | None = None) -> tuple[str, bool]:
    """``(one line, all finished)`` for the job folders under ``sweep_dir``.

    A job folder without a readable record (the job never started, or was killed before
    its first write) counts as ``no record``; ``running`` means killed without warning.
    """
    folders = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit())
    counts: Counter[str] = Counter()
    for folder in folders:
        try:
            record = recorded(folder)
        except Exception:  # a malformed record is not a finished run
            record = None
        counts[(record or {}).get("status") or "no record"] += 1
    missing = max((jobs or 0) - len(folders), 0)
    if missing:
        counts["no record"] += missing
    order = ("finished", "failed", "interrupted", "running", "no record")
    parts = [f"{counts[k]} {k}" for k in order if counts[k] or k == "finished"]
    ok = sum(counts.values()) > 0 and counts["finished"] == sum(counts.values())
    line = f"sweep: {', '.join(parts)}; records under {sweep_dir}/<job>/metrics.json"
    return line, ok


class SweepStatus(Callback):
    """After a multirun: print the summary line; exit 1 when any job did not finish."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        line, ok = summarise(sweep_dir)
        print(line, file=sys.stderr if not ok else sys.stdout, flush=True)
        if not ok:
            raise SystemExit(1)
