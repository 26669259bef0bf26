"""Interrupted runs resume to the same result; same seed, same config -> same metrics."""

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

from stnrepro.errors import ConfigError
from stnrepro.train import train

EPOCHS = 3


@pytest.fixture(scope="module")
def cub_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "CUB_200_2011"
    return write_tiny_cub(root, num_classes=3, per_class=12, size=(64, 48))


def overrides(cub_root: Path, run_dir: Path) -> list[str]:
    """The data config's own loader settings (worker processes, persistent between epochs)."""
    return [
        "data=cub", f"data.root={cub_root}", "data.num_classes=3", "data.image_size=48",
        "data.batch_size=4", "data.val_fraction=0.2",
        "model.num_transformers=2", "model.crop_size=24", "model.loc_lr_mult=1.0",
        "trainer=cpu", f"trainer.max_epochs={EPOCHS}", "trainer.deterministic=true",
        "trainer.enable_progress_bar=false", "logger=wandb", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip


def start(args: list[str]) -> subprocess.Popen:
    env = os.environ | {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    return subprocess.Popen(
        [sys.executable, "-m", "stnrepro.train", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True,
    )  # fmt: skip


def record(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.slow
def test_sigkilled_run_resumes_to_the_same_metrics(cub_root, make_cfg, tmp_path):
    workers = make_cfg(overrides(cub_root, tmp_path)).data
    assert workers.num_workers > 0 and workers.persistent_workers  # the issue-11 setting
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    proc = start(overrides(cub_root, reference_dir))
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]
    reference = record(reference_dir)

    proc = start(overrides(cub_root, killed_dir))
    last = killed_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up
    proc.wait(timeout=60)
    interrupted = record(killed_dir)
    assert interrupted["status"] == "running", "the run ended before it could be killed"
    first_id = (killed_dir / "wandb_run_id.txt").read_text()

    env = os.environ | {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    again = subprocess.run(  # the same command again
        [sys.executable, "-m", "stnrepro.train", *overrides(cub_root, killed_dir)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    # It continued from the checkpoint (a fresh restart would also match the reference).
    assert f"resuming from {last}" in again.stdout + again.stderr
    resumed = record(killed_dir)
    assert resumed["status"] == "finished"
    assert (killed_dir / "wandb_run_id.txt").read_text() == first_id
    assert resumed["logger"]["run_id"] == first_id.strip()  # the same W&B run continues
    for key in ("val/acc", "val/loss", "test/acc", "test/loss", "test/st0/tx_mean"):
        assert resumed["metrics"][key] == reference["metrics"][key], key  # bit for bit


def test_same_seed_same_metrics_on_cpu(cub_root, make_cfg, tmp_path):
    results = []
    for name in ("a", "b"):
        args = ["logger=none", "ckpt_path=null", "data.num_workers=0"]
        cfg = make_cfg(overrides(cub_root, tmp_path / name) + args)
        cfg.paths.output_dir = str(tmp_path / name)
        cfg.trainer.max_epochs = 2
        results.append(train(cfg)["metrics"])
    assert results[0] == results[1]


def test_missing_checkpoint_path_is_refused(cub_root, make_cfg, tmp_path):
    cfg = make_cfg([*overrides(cub_root, tmp_path), "logger=none", f"ckpt_path={tmp_path}/x.ckpt"])
    with pytest.raises(ConfigError, match=r"ckpt_path=.*x\.ckpt: file not found"):
        train(cfg)


# The last commit before the package was regrouped into run/, lightning/, attention/, utils/.
BEFORE_REGROUP = "baa5d4db02db8ecca96e99f04747e1eb0c99c5c3"
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_run_folder_of_the_old_layout_resumes_and_its_checkpoint_loads(cub_root, tmp_path):
    """A run killed under the version before the regroup (whose run_config.json names the
    old ``_target_`` paths) resumes under this one, and stn-attention reads its checkpoint."""
    from stnrepro.cli.attention import main as stn_attention

    have = subprocess.run(
        ["git", "-C", str(REPO), "cat-file", "-e", f"{BEFORE_REGROUP}^{{commit}}"]
    )
    if have.returncode != 0:
        pytest.skip(f"commit {BEFORE_REGROUP[:7]} is not in this clone (shallow?): cannot run it")
    old = tmp_path / "old"
    old.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", BEFORE_REGROUP, "src"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
    run_dir = tmp_path / "run"
    env = os.environ | {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "stnrepro.train", *overrides(cub_root, run_dir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env=env | {"PYTHONPATH": str(old / "src")},
    )  # fmt: skip
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert record(run_dir)["status"] == "running", "the old run ended before it could be killed"
    definition = json.loads((run_dir / "run_config.json").read_text())
    assert definition["model._target_"] == "stnrepro.module.STCNNModule"
    out = tmp_path / "crops.png"
    argv = [str(last), "--images", "2", "--out", str(out), "--device", "cpu"]
    assert stn_attention([*argv, "--num-workers", "0"]) == 0  # the old folder's .hydra config
    assert out.stat().st_size > 0

    again = subprocess.run(
        [sys.executable, "-m", "stnrepro.train", *overrides(cub_root, run_dir)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming from {last}" in again.stdout + again.stderr
    assert record(run_dir)["status"] == "finished"
