"""The job's signals (SLURM's time-limit warning, USR2; Lightning's requeue signal, USR1)
are handled by the main process only, never by DataLoader workers, and the DDP check knows
when the cluster starts the ranks. Fast: no SLURM needed."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import pytorch_lightning as pl
from cub_fixture import write_tiny_cub
from pytorch_lightning.plugins.environments import SLURMEnvironment
from torch.utils.data import DataLoader, Dataset

from stnrepro.data.cub import CUBDataModule
from stnrepro.run.checks import check_distributed


class SignalsItself(Dataset):
    """Each item sends SIGUSR2 to the process that loads it (a worker), as SLURM does."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> int:
        os.kill(os.getpid(), signal.SIGUSR2)
        return os.getpid()


def test_loader_workers_ignore_the_jobs_signals(tmp_path: Path) -> None:
    root = write_tiny_cub(tmp_path / "CUB_200_2011")
    dm = CUBDataModule(str(root), num_classes=3, image_size=16, batch_size=2, num_workers=1)
    init = dm.train_dataloader().worker_init_fn
    handled: list[int] = []
    marker = tmp_path / "handled"

    def handler(signum, frame):  # what submitit's checkpoint-and-requeue stands for
        marker.write_text(str(os.getpid()))
        handled.append(os.getpid())

    old = signal.signal(signal.SIGUSR2, handler)
    try:
        loader = DataLoader(SignalsItself(), batch_size=1, num_workers=1, worker_init_fn=init)
        pids = [int(b) for b in loader]
    finally:
        signal.signal(signal.SIGUSR2, old)
    assert len(pids) == 2 and os.getpid() not in pids
    assert not marker.exists(), f"a loader worker (pid {marker.read_text()}) ran the handler"


def test_ddp_under_slurm_is_not_refused_in_a_multirun(monkeypatch) -> None:
    """Under SLURM the ranks are SLURM's tasks: Lightning keeps its subprocess launcher
    class but starts nothing, so a multirun's DDP job is fine there."""
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "2")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_LOCALID", "0")
    monkeypatch.setenv("SLURM_NODEID", "0")
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "1")
    monkeypatch.setenv("SLURM_NODELIST", "vm")
    monkeypatch.setattr("stnrepro.run.checks.is_multirun", lambda: True)
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", plugins=[SLURMEnvironment()],
        logger=False, enable_progress_bar=False, enable_checkpointing=False,
    )  # fmt: skip
    assert trainer.strategy.cluster_environment.creates_processes_externally
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"trainer": {"strategy": "ddp", "devices": 2, "sync_batchnorm": False}})
    check_distributed(cfg, trainer)  # no error: SLURM starts the ranks


@pytest.mark.parametrize("devices", [2])
def test_ddp_without_a_cluster_is_still_refused_in_a_multirun(monkeypatch, devices) -> None:
    for key in list(os.environ):
        if key.startswith("SLURM_"):
            monkeypatch.delenv(key)
    monkeypatch.setattr("stnrepro.run.checks.is_multirun", lambda: True)
    trainer = pl.Trainer(
        accelerator="cpu", devices=devices, strategy="ddp", logger=False,
        enable_progress_bar=False, enable_checkpointing=False,
    )  # fmt: skip
    from omegaconf import OmegaConf

    from stnrepro.errors import ConfigError

    cfg = OmegaConf.create({"trainer": {"strategy": "ddp", "devices": 2, "sync_batchnorm": False}})
    with pytest.raises(ConfigError, match="rerunning the whole sweep"):
        check_distributed(cfg, trainer)


def test_sweep_summary_and_exit_status(tmp_path: Path) -> None:
    """A sweep with a failed job ends with one line and exit status 1; all finished: 0."""
    from omegaconf import OmegaConf

    from stnrepro.records.writer import RecordWriter
    from stnrepro.run.sweep import SweepStatus, summarise

    cell = {"num_transformers": 0, "image_size": 32, "seed": 0}
    for job, end in (("0", "finish"), ("1", "fail")):
        writer = RecordWriter(tmp_path / job, cell, epochs=1)
        (tmp_path / job).mkdir()
        getattr(writer, end)(*(() if end == "finish" else ("ValueError: boom",)))
    line, ok = summarise(tmp_path)
    assert not ok and line == (
        f"sweep: 1 finished, 1 failed; records under {tmp_path}/<job>/metrics.json"
    )
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    with pytest.raises(SystemExit) as stopped:
        SweepStatus().on_multirun_end(config)
    assert stopped.value.code == 1
    (tmp_path / "1" / "metrics.json").unlink()
    (tmp_path / "1").rmdir()
    SweepStatus().on_multirun_end(config)  # only finished jobs: no exit
