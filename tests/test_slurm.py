"""The SLURM path through the real CLI, on a one-node SLURM cluster started for the session.

Needs root and Debian's slurm-wlm and munge (``.ci/run`` installs them; ``make test-slurm``
runs this module); without them every test here skips saying why (tests/slurm_cluster.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cub_fixture import write_tiny_cub
from slurm_cluster import SlurmCluster, SlurmUnavailable

pytestmark = pytest.mark.slow
SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    try:
        running = SlurmCluster.start(tmp_path_factory.mktemp("slurm"))
    except SlurmUnavailable as exc:
        pytest.skip(str(exc))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def cub_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "CUB_200_2011"
    return write_tiny_cub(root, num_classes=3, per_class=6, size=(48, 40))


def tiny(cub_root: Path) -> list[str]:
    return [
        "data=cub", f"data.root={cub_root}", "data.num_classes=3", "data.batch_size=4",
        "data.image_size=32", "model.crop_size=16", "trainer=cpu", "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false", "threads=1",
    ]  # fmt: skip


def sweep(cluster: SlurmCluster, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = cluster.env | {
        "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]),
    }  # fmt: skip
    env.pop("WANDB_API_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "stnrepro.train", "-m", *args],
        capture_output=True, text=True, timeout=300, env=env, cwd=cwd,
    )  # fmt: skip


@pytest.mark.parametrize(
    "launcher",
    [
        ["hydra/launcher=submitit_slurm", "hydra.launcher.cpus_per_task=1"],
        [
            "hydra/launcher=slurm_gpu",
            "hydra.launcher.gpus_per_node=0",
            "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=2",
        ],
    ],  # fmt: skip
    ids=["submitit_slurm", "slurm_gpu"],
)
def test_a_sweep_on_slurm_gives_finished_records_and_one_wandb_run_each(
    cluster, cub_root, tmp_path, launcher
):
    folder = tmp_path / "sweep"
    done = sweep(
        cluster,
        [*tiny(cub_root), *launcher, "hydra.launcher.timeout_min=10", "logger=wandb",
         "data.num_workers=1", "model.num_transformers=0,2", f"hydra.sweep.dir={folder}"],
        tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"sweep: 2 finished; records under {folder}" in done.stdout
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("*/metrics.json"))]
    assert [r["status"] for r in records] == ["finished", "finished"]
    assert len(sorted(folder.glob("*/wandb/offline-run-*"))) == 2
    assert any((folder / ".submitit").iterdir())  # really went through sbatch


def test_a_failed_job_on_slurm_makes_the_sweep_exit_1(cluster, cub_root, tmp_path):
    folder = tmp_path / "sweep"
    done = sweep(
        cluster,
        [*tiny(cub_root), "hydra/launcher=submitit_slurm", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.timeout_min=10", "logger=none", "data.num_workers=0",
         "model.num_transformers=2", "model.fixed_scale=0.5,7.0", f"hydra.sweep.dir={folder}"],
        tmp_path,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]
    assert f"sweep: 1 finished, 1 failed; records under {folder}" in done.stderr


def _wait(condition, timeout_s: float, what: str) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"no {what} after {timeout_s:.0f} s")


def test_time_limit_warning_requeues_and_resumes_exactly(cluster, cub_root, tmp_path):
    """``scancel --signal=USR2`` is what ``--signal=USR2@N`` sends before a time limit: the
    job checkpoints, is requeued, resumes, and ends byte-identical to an uninterrupted run,
    with the default loader workers (which must not handle the signal)."""
    args = [*tiny(cub_root), "trainer.max_epochs=6", "logger=csv", "model.num_transformers=2",
            "hydra/launcher=slurm_gpu", "hydra.launcher.gpus_per_node=0",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2",
            "hydra.launcher.timeout_min=10"]  # fmt: skip
    reference = tmp_path / "reference"
    done = sweep(cluster, [*args, f"hydra.sweep.dir={reference}"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

    folder = tmp_path / "requeued"
    env = cluster.env | {"WANDB_MODE": "offline", "PYTHONPATH": SRC}
    proc = subprocess.Popen(
        [sys.executable, "-m", "stnrepro.train", "-m", *args, f"hydra.sweep.dir={folder}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    metrics = folder / "0" / "csv" / "metrics.csv"
    _wait(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) > 3, 180, "epochs")
    (job,) = [j["id"] for j in cluster.jobs() if j["state"] == "RUNNING"]
    cluster.run(["scancel", "--signal=USR2", job])
    _wait(lambda: cluster.job(job).get("Restarts", "0") != "0", 120, "requeue")
    cluster.release(job)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]
    for name in ("csv/metrics.csv", "predictions.csv"):
        assert (folder / "0" / name).read_bytes() == (reference / "0" / name).read_bytes(), name
    assert json.loads((folder / "0" / "metrics.json").read_text())["status"] == "finished"
    assert not list((folder / ".submitit").rglob("*.save_tmp"))
