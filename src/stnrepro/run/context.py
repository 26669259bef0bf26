"""Where this process runs: which one owns the run's files, and whether it is a sweep's job.

Under DDP every rank runs the job with the same config, but only global rank 0 holds the
output folder and writes files or W&B runs; in a Hydra multirun a job's failure is recorded
and the sweep goes on. Both facts are read from the environment Lightning and Hydra set up.
"""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from pytorch_lightning.utilities.rank_zero import rank_zero_only


def is_rank_zero() -> bool:
    """True in the process that owns the run's files: the only one, or DDP's global rank 0.

    Under DDP every rank runs :func:`train` with the same config, but only rank 0 holds the
    output folder, writes ``run_config.json``, the record, ``predictions.csv`` and the W&B
    run; the other ranks train and write nothing. Lightning's ``rank_zero_only.rank`` is
    read from the environment (``RANK``, ``LOCAL_RANK``, ``SLURM_PROCID``) when Lightning is
    imported, so it is right before the Trainer exists, and the DDP strategy updates it.
    """
    # Lightning sets `rank` on the function at import; its overloaded signature does not say so.
    return rank_zero_only.rank == 0  # type: ignore[attr-defined]


def is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
