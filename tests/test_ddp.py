"""``trainer=ddp`` through the real CLI on CPU: two ranks (gloo), one run's files.

Lightning starts rank 1 by rerunning the command with the same ``hydra.run.dir``; only rank 0
may hold the folder and write the record, the run definition, the predictions and the W&B
run. The tiny CUB set has 15 test images, an odd count: Lightning's DistributedSampler would
repeat one to even out the ranks, so the reduced test metrics must equal a single-process
test of the same weights only if evaluation shards without repeats.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
from cub_fixture import write_tiny_cub
from wandb_records import read_records

from stnrepro.errors import ConfigError
from stnrepro.lightning.module import STCNNModule
from stnrepro.run.build import build_datamodule
from stnrepro.train import train

pytestmark = pytest.mark.slow
ENV = os.environ | {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}


@pytest.fixture(scope="module")
def cub_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "CUB_200_2011"
    return write_tiny_cub(root, num_classes=3, per_class=8, train_per_class=3, size=(64, 48))


def data_overrides(cub_root: Path) -> list[str]:
    return [
        "data=cub", f"data.root={cub_root}", "data.num_classes=3", "data.image_size=48",
        "data.batch_size=4", "data.num_workers=0", "data.val_fraction=0.2",
        "model.num_transformers=2", "model.crop_size=24",
    ]  # fmt: skip


def ddp_command(cub_root: Path, run_dir: Path, epochs: int = 2) -> list[str]:
    return [
        sys.executable, "-m", "stnrepro.train", *data_overrides(cub_root),
        "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
        "trainer.sync_batchnorm=false", "trainer.precision=32-true",
        f"trainer.max_epochs={epochs}", "trainer.enable_progress_bar=false",
        "logger=wandb", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip


def run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=300)


def record(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def wandb_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def test_ddp_on_cpu_is_one_run_with_whole_test_set_metrics(cub_root, make_cfg, tmp_path):
    run_dir = tmp_path / "ddp"
    done = run(ddp_command(cub_root, run_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run_dir / "train_ddp_process_1.log").is_file(), "rank 1 never started"
    assert [p.name for p in run_dir.rglob("metrics.json")] == ["metrics.json"]
    assert [p.name for p in run_dir.rglob("run_config.json")] == ["run_config.json"]
    assert not (run_dir / ".stnrepro.holder").exists()
    result = record(run_dir)
    assert result["status"] == "finished", result["error"]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()

    # One W&B run, rank 0's, whose summary holds the finished record.
    run_id = (run_dir / "wandb_run_id.txt").read_text().strip()
    (wandb_dir,) = wandb_runs(run_dir)
    assert wandb_dir.name.endswith(run_id) and result["logger"]["run_id"] == run_id
    summary = {
        item.key: json.loads(item.value_json)
        for r in read_records(wandb_dir / f"run-{run_id}.wandb", wait_s=10)
        if r.WhichOneof("record_type") == "summary"
        for item in r.summary.update
    }
    assert json.loads(summary["record"])["status"] == summary["status"] == "finished"

    # The test set was covered once, and the logged metrics were reduced over both ranks:
    # a single-process test of the same (final = last.ckpt) weights gives the same values.
    lines = (run_dir / "predictions.csv").read_text().splitlines()[1:]
    ids = sorted(int(line.split(",")[0]) for line in lines)
    datamodule = build_datamodule(make_cfg([*data_overrides(cub_root), "logger=none"]))
    datamodule.setup("test")
    test_set = datamodule.test_set
    assert ids == sorted(int(test_set.index.image_ids[r]) for r in test_set.rows) and len(ids) == 15
    model = STCNNModule.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    single = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    (expected,) = single.test(model, datamodule=datamodule, verbose=False)
    for key in ("test/acc", "test/loss", "test/st0/iou", "test/st0/tx_mean", "test/st1/ty_std"):
        assert result["metrics"][key] == pytest.approx(expected[key], rel=1e-4, abs=1e-9), key

    # The same command again: nothing to do, nothing changed.
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    again = run(ddp_command(cub_root, run_dir))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already finished" in again.stdout + again.stderr
    after = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    changed = {p for p in after if before.get(p) != after[p]}
    # Hydra rewrites its own .hydra/*.yaml and appends to train.log on every command.
    assert {p for p in changed if ".hydra" not in p.parts and p.name != "train.log"} == set()


def test_ddp_run_killed_after_a_checkpoint_resumes(cub_root, tmp_path):
    run_dir = tmp_path / "killed"
    command = ddp_command(cub_root, run_dir, epochs=3)
    proc = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV,
        start_new_session=True,  # its own process group: rank 0, rank 1 and W&B's service
    )  # fmt: skip
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert record(run_dir)["status"] == "running", "the run ended before it could be killed"
    run_id = (run_dir / "wandb_run_id.txt").read_text().strip()

    again = run(command)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from {last}" in again.stdout + again.stderr
    resumed = record(run_dir)
    assert resumed["status"] == "finished", resumed["error"]
    assert resumed["logger"]["run_id"] == run_id
    assert all(d.name.endswith(run_id) for d in wandb_runs(run_dir))  # one W&B run, resumed


def test_sync_batchnorm_on_cpu_is_refused_before_processes_start(cub_root, make_cfg):
    cfg = make_cfg(
        # One device: DDP without a second process, so old code failed in this process.
        [
            *data_overrides(cub_root),
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=1",
            "logger=none",
        ]
    )
    with pytest.raises(ConfigError, match=r"^trainer\.sync_batchnorm=true: .*GPUs only"):
        train(cfg)


def test_ddp_in_a_local_multirun_is_refused(cub_root, tmp_path):
    sweep_dir = tmp_path / "sweep"
    command = ddp_command(cub_root, tmp_path / "unused")
    command[3:3] = ["-m", f"hydra.sweep.dir={sweep_dir}"]  # after `python -m stnrepro.train`
    done = run(command)
    assert done.returncode == 1, done.stderr[-3000:]  # the sweep went on; a job failed
    failed = record(sweep_dir / "0")
    assert failed["status"] == "failed"
    assert "rerunning the whole sweep" in failed["error"]
