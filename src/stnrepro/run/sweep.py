"""The end of a sweep: one summary line, and a non-zero exit status when a job did not finish.

A sweep's jobs record how they ended (``metrics.json``, ``status``) and the sweep goes on past
a failed one; without this the sweep command exited 0 either way, so a CI pipeline or a
script could not tell. :class:`SweepStatus` is a Hydra callback (``hydra.callbacks`` in
``conf/hydra/default.yaml``), so it runs for every launcher (joblib, submitit local and
SLURM) once all jobs have returned.

On SLURM it also watches the sweep while submitit waits for its jobs
(:class:`stnrepro.run.slurm.PendingWatch`): a job SLURM will never start as asked (more CPUs,
memory or time than the partition offers: ``PENDING (PartitionConfig)``) is reported in one
line naming the launcher keys to size, and cancelled, instead of a sweep that waits forever.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from stnrepro.records.reader import recorded
from stnrepro.run.slurm import SIZE_KEYS, PendingWatch

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


def is_slurm(config: DictConfig) -> bool:
    """Whether the sweep's launcher is Hydra's submitit SLURM launcher (any of its configs)."""
    target = OmegaConf.select(config, "hydra.launcher._target_", default="") or ""
    return str(target).endswith("submitit_launcher.SlurmLauncher")


class SweepStatus(Callback):
    """After a multirun: print the summary line; exit 1 when any job did not finish.

    On SLURM, from the sweep's start: watch for jobs that will never run
    (:class:`~stnrepro.run.slurm.PendingWatch`).
    """

    def __init__(self) -> None:
        self.watch: PendingWatch | None = None

    def __getstate__(self) -> dict[str, Any]:
        # submitit pickles the launcher, and with it Hydra's callbacks, into every job: the
        # watch (a thread) stays in the sweep's process.
        return {**self.__dict__, "watch": None}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not is_slurm(config):
            return
        launcher = {
            key: OmegaConf.select(
                config, f"hydra.launcher.{key}", throw_on_resolution_failure=False
            )
            for key in (*SIZE_KEYS, "partition", "submitit_folder")
        }
        self.watch = PendingWatch(launcher, sys.stderr).start()
        if OmegaConf.select(config, "hydra.launcher.max_num_timeout", default=None) == 0:
            print(
                "sweep: hydra.launcher.max_num_timeout=0: a job that reaches its SLURM time "
                "limit is not requeued and ends failed (hydra/launcher=slurm_cpu and "
                "slurm_gpu allow 3 requeues)",
                file=sys.stderr,
                flush=True,
            )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.watch is not None:
            self.watch.stop()
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        line, ok = summarise(sweep_dir)
        print(line, file=sys.stderr if not ok else sys.stdout, flush=True)
        if not ok:
            raise SystemExit(1)
