"""The SLURM path through the real CLI, on a one-node SLURM cluster started for the session.

Needs root and Debian's slurm-wlm and munge (``.ci/run`` installs them; ``make test-slurm``
runs this module); without them every test here skips saying why (tests/slurm_cluster.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cub_fixture import write_tiny_cub
from slurm_cluster import SlurmCluster, SlurmUnavailable

pytestmark = pytest.mark.slow
SRC = str(Path(__file__).resolve().parents[1] / "src")
#: How many times the interruption tests run (``STNREPRO_SLURM_REPEAT=10 make test-slurm``
#: to check they are stable; each run is about a minute on a 2-core machine).
REPEAT = int(os.environ.get("STNREPRO_SLURM_REPEAT", "1"))


def pytest_generate_tests(metafunc):
    if "repeat" in metafunc.fixturenames:
        metafunc.parametrize("repeat", range(REPEAT))


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
    ],
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
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"no {what} after {timeout_s:.0f} s")


#: One 6-epoch run, default loader workers, through a packaged launcher sized to this node.
INTERRUPTED = ["trainer.max_epochs=6", "logger=csv", "model.num_transformers=2",
               "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=10"]  # fmt: skip
SLURM_GPU = ["hydra/launcher=slurm_gpu", "hydra.launcher.gpus_per_node=0",
             "hydra.launcher.mem_gb=2"]  # fmt: skip


@pytest.fixture(scope="module")
def reference(cluster, cub_root, tmp_path_factory) -> Path:
    """The uninterrupted run the interrupted ones must equal, byte for byte."""
    folder = tmp_path_factory.mktemp("reference") / "sweep"
    args = [*tiny(cub_root), *INTERRUPTED, "hydra/launcher=slurm_cpu"]
    done = sweep(cluster, [*args, f"hydra.sweep.dir={folder}"], folder.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder / "0"


def start_sweep(cluster: SlurmCluster, args: list[str], cwd: Path) -> subprocess.Popen:
    env = cluster.env | {"WANDB_MODE": "offline", "PYTHONPATH": SRC, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "stnrepro.train", "-m", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd,
    )  # fmt: skip


def running_job_after_epochs(cluster: SlurmCluster, run: Path, epochs: int = 3) -> str:
    """The id of the sweep's one job, once its CSV log holds ``epochs`` epochs' rows."""
    metrics = run / "csv" / "metrics.csv"
    _wait(
        lambda: metrics.is_file() and len(metrics.read_text().splitlines()) > epochs, 180, "epochs"
    )
    (job,) = [j["id"] for j in cluster.jobs() if j["state"] == "RUNNING"]
    return job


def assert_same_run(run: Path, reference: Path) -> None:
    for name in ("csv/metrics.csv", "predictions.csv"):
        assert (run / name).read_bytes() == (reference / name).read_bytes(), name


def test_time_limit_warning_requeues_and_resumes_exactly(
    cluster, cub_root, reference, tmp_path, repeat
):
    """``scancel --signal=USR2`` is what ``--signal=USR2@N`` sends before a time limit: the
    job checkpoints, is requeued, resumes, and ends byte-identical to an uninterrupted run,
    with the default loader workers (which must not handle the signal). The record lists
    both attempts, the first ended by the time limit, not "Ctrl-C"."""
    folder = tmp_path / "requeued"
    proc = start_sweep(
        cluster, [*tiny(cub_root), *INTERRUPTED, *SLURM_GPU, f"hydra.sweep.dir={folder}"], tmp_path
    )
    job = running_job_after_epochs(cluster, folder / "0")
    cluster.run(["scancel", "--signal=USR2", job])
    cluster.release(job)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]
    assert_same_run(folder / "0", reference)
    record = json.loads((folder / "0" / "metrics.json").read_text())
    assert record["status"] == "finished"
    first, last = record["attempts"]
    assert first["status"] == "interrupted" and first["job"] == last["job"] == job
    assert first["reason"].startswith(
        f"SLURM time limit (SIGUSR2 warning): checkpointed and requeued by submitit as job {job}"
    ), first["reason"]
    assert last == {**last, "status": "finished", "reason": None}
    assert last["started_at"] == record["started_at"] >= first["ended_at"]
    assert last["wall_time_s"] == record["wall_time_s"]
    assert not list((folder / ".submitit").rglob("*.save_tmp"))


def test_preemption_requeues_and_resumes_exactly(cluster, cub_root, reference, tmp_path, repeat):
    """``scontrol requeue`` (what a preemption with PreemptMode=REQUEUE does): SIGTERM, the
    job goes back to the queue, resumes from last.ckpt, and ends byte-identical; the first
    attempt's reason names the preemption."""
    folder = tmp_path / "preempted"
    proc = start_sweep(
        cluster,
        [*tiny(cub_root), *INTERRUPTED, "hydra/launcher=slurm_cpu", f"hydra.sweep.dir={folder}"],
        tmp_path,
    )
    job = running_job_after_epochs(cluster, folder / "0")
    cluster.run(["scontrol", "requeue", job])
    cluster.release(job)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]
    assert_same_run(folder / "0", reference)
    record = json.loads((folder / "0" / "metrics.json").read_text())
    assert record["status"] == "finished"
    first, last = record["attempts"]
    assert (first["status"], last["status"]) == ("interrupted", "finished")
    assert first["reason"].startswith(
        f"SLURM preemption (SIGTERM): job {job} requeued (a preemption or scontrol requeue)"
    ), first["reason"]


def test_a_job_out_of_requeues_fails_saying_why_and_the_sweep_exits_1(cluster, cub_root, tmp_path):
    """The plugin's submitit_slurm allows no time-limit requeue (max_num_timeout 0): the
    warning ends the run ``failed`` with submitit's reason, and the sweep exits 1."""
    folder = tmp_path / "exhausted"
    proc = start_sweep(
        cluster,
        [*tiny(cub_root), *INTERRUPTED, "hydra/launcher=submitit_slurm",
         f"hydra.sweep.dir={folder}"],
        tmp_path,
    )  # fmt: skip
    job = running_job_after_epochs(cluster, folder / "0", epochs=1)
    cluster.run(["scancel", "--signal=USR2", job])
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, output[-3000:]
    assert "hydra.launcher.max_num_timeout=0: a job that reaches its SLURM time limit" in output
    assert f"sweep: 0 finished, 1 failed; records under {folder}" in output
    record = json.loads((folder / "0" / "metrics.json").read_text())
    assert record["status"] == "failed"
    assert record["error"] == (
        "SLURM time limit (SIGUSR2 warning): not requeued: Job not requeued because: timed-out "
        "too many times. (hydra.launcher.max_num_timeout is how many time-limit requeues a "
        "job gets)"
    )
    assert [a["status"] for a in record["attempts"]] == ["failed"]


def test_a_job_too_big_for_the_partition_is_reported_and_cancelled(cluster, cub_root, tmp_path):
    """slurm_gpu's default cpus_per_task=8 on this node: SLURM would keep the job PENDING
    (PartitionConfig) forever; the sweep says so in one line and ends."""
    folder = tmp_path / "too-big"
    started = time.monotonic()
    done = sweep(
        cluster,
        [*tiny(cub_root), "hydra/launcher=slurm_gpu", "hydra.launcher.gpus_per_node=0",
         "logger=none", f"hydra.sweep.dir={folder}"],
        tmp_path,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]
    (line,) = [ln for ln in done.stderr.splitlines() if ln.startswith("sweep: SLURM keeps")]
    assert "PENDING (PartitionConfig)" in line and f"{cluster.cpus} CPUs" in line, line
    assert "cpus_per_task=8" in line and "hydra.launcher.nodes/tasks_per_node" in line, line
    job = line.split()[4]
    assert line.endswith(f"; job {job} cancelled"), line
    assert f"sweep: SLURM job {job} cancelled: PENDING (PartitionConfig), it would never start" in (
        done.stderr
    )
    assert time.monotonic() - started < 90
    assert not cluster.jobs()


def test_ddp_across_two_slurm_tasks_equals_single_node_ddp(cluster, cub_root, tmp_path):
    """trainer=ddp with 2 SLURM tasks (gloo, CPU): SLURM starts the ranks, the run has one
    record, and its metrics and predictions are those of the same DDP run on one node
    (Lightning starting rank 1 itself)."""
    ddp = [*tiny(cub_root), "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
           "trainer.sync_batchnorm=false", "trainer.precision=32-true", "trainer.max_epochs=2",
           "trainer.enable_progress_bar=false", "data.num_workers=0", "logger=csv",
           "model.num_transformers=2"]  # fmt: skip
    single = tmp_path / "single"
    env = os.environ | {"WANDB_MODE": "offline", "PYTHONPATH": SRC}
    env = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
    done = subprocess.run(
        [sys.executable, "-m", "stnrepro.train", *ddp, f"hydra.run.dir={single}"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    folder = tmp_path / "slurm"
    done = sweep(
        cluster,
        [*ddp, "hydra/launcher=slurm_cpu", "hydra.launcher.tasks_per_node=2",
         "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=10",
         f"hydra.sweep.dir={folder}"],
        tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert [p.relative_to(folder) for p in folder.rglob("metrics.json")] == [Path("0/metrics.json")]
    expected = json.loads((single / "metrics.json").read_text())
    record = json.loads((folder / "0" / "metrics.json").read_text())
    assert record["status"] == "finished", record["error"]
    for key in ("metrics", "cell", "predictions_sha256", "test_images", "epochs"):
        assert record[key] == expected[key], key
    assert (folder / "0" / "predictions.csv").read_bytes() == (
        single / "predictions.csv"
    ).read_bytes()
    assert len(record["attempts"]) == 1
