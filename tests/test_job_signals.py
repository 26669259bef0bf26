"""The job's signals (SLURM's time-limit warning, USR2; Lightning's requeue signal, USR1)
are handled by the main process only, never by DataLoader workers, and the DDP check knows
when the cluster starts the ranks. Fast: no SLURM needed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
from conftest import compose_train
from cub_fixture import write_tiny_cub
from pytorch_lightning.callbacks import Checkpoint
from pytorch_lightning.plugins.environments import SLURMEnvironment
from torch.utils.data import DataLoader, Dataset

from stnrepro.data.cub import CUBDataModule
from stnrepro.records.writer import RecordWriter
from stnrepro.run.checks import check_distributed
from stnrepro.run.fit import _ending
from stnrepro.run.slurm import JobSignals


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


# --------------------------------------------------------------------------- attempts


def _signal_ends(monkeypatch, handler) -> tuple[object, BaseException]:
    """Send SIGUSR2 to this process inside a SLURM job whose warning handler is
    ``handler`` (what submitit installs); return the JobSignals and what the handler raised."""
    from stnrepro.run.slurm import JobSignals

    monkeypatch.setenv("SLURM_JOB_ID", "41")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.delenv("SUBMITIT_PREEMPT_SIGNAL", raising=False)
    old = signal.signal(signal.SIGUSR2, handler)
    try:
        with JobSignals() as signals, pytest.raises(BaseException) as raised:
            os.kill(os.getpid(), signal.SIGUSR2)
        assert signal.getsignal(signal.SIGUSR2) == handler  # put back on leaving
    finally:
        signal.signal(signal.SIGUSR2, old)
    return signals, raised.value


def test_a_requeue_by_submitit_is_named_and_keeps_its_exit(monkeypatch) -> None:
    """submitit's handler requeues and calls sys.exit(-1), which Lightning turns into the
    same "interrupted" state as Ctrl-C: the ending names SLURM and leaves the exit as is."""

    def requeue(signum, frame):
        raise SystemExit(-1)

    signals, raised = _signal_ends(monkeypatch, requeue)
    assert isinstance(raised, SystemExit) and raised.code == -1
    ending = signals.ending(received_sigterm=False)
    assert ending.status == "interrupted" and ending.exit_status == -1
    assert ending.reason.startswith("SLURM time limit or preemption (SIGUSR2 warning): ")
    assert "requeued by submitit as job 41; the run resumes from checkpoints/last.ckpt" in (
        ending.reason
    )


def test_a_refused_requeue_is_a_failure_saying_why(monkeypatch) -> None:
    from submitit.core.utils import UncompletedJobError

    def refuse(signum, frame):
        raise UncompletedJobError("Job not requeued because: timed-out too many times.")

    signals, raised = _signal_ends(monkeypatch, refuse)
    assert isinstance(raised, UncompletedJobError)
    ending = signals.ending(received_sigterm=False)
    assert ending.status == "failed"
    assert "not requeued: Job not requeued because: timed-out too many times." in ending.reason
    assert "hydra.launcher.max_num_timeout" in ending.reason


def test_outside_slurm_nothing_is_wrapped(monkeypatch) -> None:
    from stnrepro.run.slurm import JobSignals

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    before = signal.getsignal(signal.SIGUSR2)
    with JobSignals() as signals:
        assert signal.getsignal(signal.SIGUSR2) == before
    assert signals.ending(received_sigterm=True) is None


def test_slurm_durations() -> None:
    from stnrepro.run.slurm import _seconds

    assert _seconds("00:10:00") == 600 and _seconds("1-02:00:05") == 93605
    assert _seconds("05:30") == 330 and _seconds("UNLIMITED") is None and _seconds(None) is None


def test_every_attempt_is_recorded_and_old_records_still_read(tmp_path: Path) -> None:
    """A run continued in its folder keeps one record listing each attempt; a record written
    before attempts existed stands for one attempt, and reads as it did."""
    import json

    from stnrepro.records.reader import read_record_file

    cell = {"dataset": "cub", "backbone": "small", "pretrained": False, "image_size": 32,
            "crop_size": 16, "num_transformers": 2, "transform": "affine", "seed": 0}  # fmt: skip
    first = RecordWriter(tmp_path, cell, epochs=2, job="7")
    first.interrupt("SLURM preemption (SIGTERM): job 7 requeued")
    old = json.loads((tmp_path / "metrics.json").read_text())
    old_style = {k: v for k, v in old.items() if k != "attempts"}
    (tmp_path / "metrics.json").write_text(json.dumps(old_style))
    assert read_record_file(tmp_path / "metrics.json").attempts is None
    assert read_record_file(tmp_path / "metrics.json").total_wall_time_s == old["wall_time_s"]

    second = RecordWriter(tmp_path, cell, epochs=2, job="7")
    second.carry_attempts(old_style)
    second.finish()
    record = read_record_file(tmp_path / "metrics.json")
    assert [a["status"] for a in record.attempts] == ["interrupted", "finished"]
    assert record.attempts[0] == {**old["attempts"][0], "job": None}  # from the old record
    assert record.attempts[1]["job"] == "7" and record.attempts[1]["reason"] is None
    assert record.started_at == record.attempts[1]["started_at"]
    assert record.total_wall_time_s == pytest.approx(
        old["wall_time_s"] + record.attempts[1]["wall_time_s"]
    )

    third = RecordWriter(tmp_path, cell, epochs=2)
    third.carry_attempts(json.loads((tmp_path / "metrics.json").read_text()))
    assert len(third.data["attempts"]) == 3 and third.data["attempts"][2]["status"] == "running"


@pytest.mark.parametrize(
    ("attempts", "message"),
    [
        ("x", "key 'attempts' must be a list, got 'x' (str)"),
        ([{"started_at": "noon"}], "key 'attempts[0].started_at' must be an ISO-8601 timestamp"),
        ([{}], "missing required key 'attempts[0].started_at'"),
    ],
)
def test_bad_attempts_are_one_line_naming_the_key(tmp_path: Path, attempts, message) -> None:
    import json

    from stnrepro.records.reader import read_record_file
    from stnrepro.records.schema import RecordError

    cell = {"dataset": "cub", "backbone": "small", "pretrained": False, "image_size": 32,
            "num_transformers": 0, "seed": 0}  # fmt: skip
    RecordWriter(tmp_path, cell, epochs=1).finish()
    data = json.loads((tmp_path / "metrics.json").read_text()) | {"attempts": attempts}
    (tmp_path / "metrics.json").write_text(json.dumps(data))
    with pytest.raises(RecordError, match=re.escape(message)):
        read_record_file(tmp_path / "metrics.json")


def test_both_slurm_launcher_configs_requeue_alike() -> None:
    """slurm_cpu and slurm_gpu: the same time limit, warning and time-limit requeues."""
    from stnrepro.config import compose_config

    keys = ("timeout_min", "signal_delay_s", "max_num_timeout")
    launchers = {
        name: compose_config([f"hydra/launcher={name}"], return_hydra_config=True).hydra.launcher
        for name in ("slurm_cpu", "slurm_gpu")
    }
    cpu, gpu = ({k: launchers[n][k] for k in keys} for n in ("slurm_cpu", "slurm_gpu"))
    assert cpu == gpu and cpu["max_num_timeout"] > 0
    assert launchers["slurm_cpu"].gpus_per_node is None


def test_the_ending_is_named_after_the_loader_workers_died(monkeypatch) -> None:
    """SLURM's SIGTERM kills the DataLoader workers with the job; torch's SIGCHLD handler then
    raises "DataLoader worker ... is killed by signal" at every child exit, e.g. inside the
    ``scontrol`` call that names the SIGTERM's cause (seen on the one-node cluster of
    tests/test_slurm.py). The handler here raises as torch's does; the ending must still be
    named (scontrol finds no job 999999, or is not installed)."""
    monkeypatch.setenv("SLURM_JOB_ID", "999999")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)

    def worker_died(signum, frame):
        raise RuntimeError("DataLoader worker (pid 1) is killed by signal: Terminated.")

    previous = signal.signal(signal.SIGCHLD, worker_died)
    try:
        with pytest.raises(RuntimeError, match="is killed by signal"):
            for _ in range(100):  # the handler runs at the next child's exit
                subprocess.run(["sleep", "0.01"], check=True)
        signal.signal(signal.SIGCHLD, worker_died)
        stopped = SimpleNamespace(received_sigterm=True, interrupted=False)
        ending = _ending(stopped, RuntimeError("worker killed"), JobSignals())
        assert ending is not None and ending.status == "interrupted"
        assert ending.reason.startswith("SIGTERM from SLURM to job 999999")
    finally:
        signal.signal(signal.SIGCHLD, previous)


class WarnAfterLastCheckpoint(Checkpoint):
    """Sends this process SLURM's warning in the first epoch's ``on_train_epoch_end``, right
    after ``last.ckpt`` is saved (Lightning calls checkpoint callbacks last, in their order)
    and before Lightning logs the epoch's training metrics: where a warning lost that row."""

    def __init__(self, marker: str) -> None:
        self.marker = Path(marker)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.marker.exists():
            self.marker.write_text(str(trainer.current_epoch))
            os.kill(os.getpid(), signal.SIGUSR2)


def test_a_warning_after_the_epochs_checkpoint_keeps_its_log_row(
    monkeypatch, make_cfg, tmp_path
) -> None:
    """A time-limit warning between ``last.ckpt`` and the epoch's training-metrics row: the
    attempt is requeued, the resumed run's metrics.csv equals an uninterrupted run's, byte
    for byte (seen once in CI on the one-node cluster: the resumed file lacked that row)."""
    from stnrepro.train import train

    root = write_tiny_cub(tmp_path / "CUB_200_2011")
    args = [
        "data=cub", f"data.root={root}", "data.num_classes=3", "data.batch_size=4",
        "data.image_size=32", "data.num_workers=0", "model.crop_size=16", "trainer=cpu",
        "trainer.max_epochs=2", "trainer.enable_progress_bar=false", "logger=csv", "threads=1",
    ]  # fmt: skip
    reference = compose_train(args, tmp_path / "reference")
    assert train(reference)["status"] == "finished"

    monkeypatch.setenv("SLURM_JOB_ID", "41")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.delenv("SUBMITIT_PREEMPT_SIGNAL", raising=False)
    warn = f"{__name__}.{WarnAfterLastCheckpoint.__name__}"
    marker = tmp_path / "warned"
    requeued = tmp_path / "requeued"
    args += [f"+callbacks.warn._target_={warn}", f"+callbacks.warn.marker={marker}"]

    def requeue(signum, frame):  # what submitit's handler does after `scontrol requeue`
        raise SystemExit(-1)

    old = signal.signal(signal.SIGUSR2, requeue)
    try:
        with pytest.raises(SystemExit):
            train(compose_train(args, requeued))
        first = json.loads((requeued / "metrics.json").read_text())
        assert marker.read_text() == "0" and first["status"] == "interrupted", first
        assert "requeued by submitit as job 41" in first["attempts"][-1]["reason"]
        assert train(compose_train(args, requeued))["status"] == "finished"
    finally:
        signal.signal(signal.SIGUSR2, old)
    name = "csv/metrics.csv"
    assert (requeued / name).read_bytes() == (tmp_path / "reference" / name).read_bytes()
