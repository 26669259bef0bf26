"""Sweeps through the real Hydra CLI: N jobs -> N records, N W&B runs, one table."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cub_fixture import write_tiny_cub

from stnrepro.records.reader import load_records
from stnrepro.results.aggregate import aggregate

pytestmark = pytest.mark.slow  # every test here runs the real CLI in subprocesses


@pytest.fixture(scope="module")
def cub_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "CUB_200_2011"
    return write_tiny_cub(root, num_classes=3, per_class=6, size=(48, 40))


def tiny(cub_root: Path) -> list[str]:
    return [
        "data=cub", f"data.root={cub_root}", "data.num_classes=3", "data.num_workers=0",
        "data.batch_size=4", "model.crop_size=16", "debug=tiny",
    ]  # fmt: skip


def run_cli(args: list[str], tmp_path: Path, status: int = 0) -> subprocess.CompletedProcess:
    env = os.environ | {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}
    env.pop("WANDB_API_KEY", None)
    proc = subprocess.run(
        [sys.executable, "-m", "stnrepro.train", "-m", *args],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == status, proc.stderr[-3000:]
    return proc


def test_2x2_multirun_gives_4_records_4_wandb_runs_and_a_4_cell_table(cub_root, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        [*tiny(cub_root), "data.image_size=32,48", "model.num_transformers=0,2", "logger=wandb",
         f"hydra.sweep.dir={sweep}"],
        tmp_path,
    )  # fmt: skip
    assert "logging offline" in proc.stdout + proc.stderr
    records = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    assert len(records) == 4 and {r["status"] for r in records} == {"finished"}
    # One W&B run per job (wandb.finish per job), all in the sweep's group.
    runs = sorted(sweep.glob("*/wandb/offline-run-*"))
    assert len(runs) == 4 and len({p.parent.parent for p in runs}) == 4
    ids = {r["logger"]["run_id"] for r in records}
    assert len(ids) == 4 and all(any(p.name.endswith(i) for p in runs) for i in ids)
    assert len({r["logger"]["group"] for r in records}) == 1
    assert {r["run_name"] for r in records} == {
        "CNN-32-s0",
        "2xST-32-s0",
        "CNN-48-s0",
        "2xST-48-s0",
    }
    table = aggregate(load_records(sweep))
    filled = [row for row in table.rows if row.stats is not None and row.stats.n > 0]
    assert len(filled) == 4 and table.n_used == 4


def test_a_failing_job_does_not_stop_the_sweep(cub_root, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        [*tiny(cub_root), "data.image_size=32", "model.fixed_scale=0.5,7.0",
         "model.num_transformers=2", "logger=none", f"hydra.sweep.dir={sweep}"],
        tmp_path,
        status=1,  # the sweep went on, and its exit status says a job failed
    )  # fmt: skip
    assert f"sweep: 1 finished, 1 failed; records under {sweep}" in proc.stderr
    statuses = {
        json.loads(p.read_text())["status"]: json.loads(p.read_text())
        for p in sweep.glob("*/metrics.json")
    }
    assert set(statuses) == {"finished", "failed"}
    assert "model.fixed_scale=7.0" in statuses["failed"]["error"]
    table = aggregate(load_records(sweep))
    assert table.n_failed == 1 and table.n_used == 1


def test_submitit_local_launcher_runs_a_2_job_sweep(cub_root, tmp_path):
    sweep = tmp_path / "sweep"
    run_cli(
        [*tiny(cub_root), "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
         "hydra.launcher.cpus_per_task=1", "data.image_size=32", "model.num_transformers=0,2",
         "logger=csv", f"hydra.sweep.dir={sweep}"],
        tmp_path,
    )  # fmt: skip
    records = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    assert [r["status"] for r in records] == ["finished", "finished"]
    assert any((sweep / ".submitit").iterdir())  # really went through submitit


@pytest.mark.parametrize("workers", [0, 1])
def test_sigterm_stops_the_sweep_instead_of_starting_the_next_job(cub_root, tmp_path, workers):
    """Like a cluster kill: SIGTERM reaches the job (and its DataLoader workers, if any).

    Without workers Lightning raises its SIGTERMException (exit status 0 by itself); with a
    worker, the worker often dies first and the loader raises a RuntimeError.
    """
    sweep = tmp_path / "sweep"
    env = os.environ | {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "stnrepro.train", "-m", *tiny(cub_root), "data.image_size=32",
         f"data.num_workers={workers}", "trainer.max_epochs=200", "model.num_transformers=0,2",
         "logger=none", f"hydra.sweep.dir={sweep}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
    )  # fmt: skip
    last = sweep / "0" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "job 0 ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=120) != 0
    record = json.loads((sweep / "0" / "metrics.json").read_text())
    assert record["status"] == "interrupted" and record["error"] == (
        "interrupted by SIGTERM; resume with the same command "
        "(ckpt_path=last continues from checkpoints/last.ckpt)"
    )
    assert not (sweep / "1").exists()


def test_a_sweep_without_an_explicit_folder_goes_under_the_current_folder(cub_root, tmp_path):
    """The default sweep folder is resolved before any ${hydra:...} value exists; a root
    that needed one made every `stn-train -m` without hydra.sweep.dir fail (make demo did)."""
    run_cli([*tiny(cub_root), "logger=none", "seed=0"], tmp_path)
    (record,) = tmp_path.glob("logs/train/multiruns/*/0/metrics.json")
    assert json.loads(record.read_text())["status"] == "finished"
