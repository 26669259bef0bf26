"""Checkpoints and resume: last.ckpt is the newest state and is never left half written; a
corrupt one is refused in one line; a resumed run continues its CSV history; Ctrl-C is
recorded with how to resume."""

from __future__ import annotations

import csv
import errno
import json
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from cub_fixture import write_tiny_cub
from hydra.utils import get_class
from omegaconf import DictConfig, open_dict

from stnrepro.errors import ConfigError
from stnrepro.train import train


@pytest.fixture(scope="module")
def cub_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "CUB_200_2011"
    return write_tiny_cub(root, num_classes=3, per_class=6, size=(48, 40))


def tiny(cub_root: Path, epochs: int = 2) -> list[str]:
    return [
        "data=cub", f"data.root={cub_root}", "data.num_classes=3", "data.image_size=32",
        "data.batch_size=4", "data.num_workers=0", "data.val_fraction=0.2",
        "model.backbone=small", "model.pretrained=false", "model.num_transformers=1",
        "model.crop_size=16", "trainer=cpu", f"trainer.max_epochs={epochs}",
        "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false", "logger=csv",
    ]  # fmt: skip


def best_only_in_epoch_0(cfg: DictConfig) -> DictConfig:
    """Every monitored checkpoint watches ``epoch`` (min): the best is epoch 0, never again."""
    with open_dict(cfg):
        for cb in cfg.callbacks.values():
            if cb and cb.get("monitor"):
                cb.monitor, cb.mode = "epoch", "min"
    return cfg


def epoch_of(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["epoch"]


def record_of(cfg: DictConfig) -> dict:
    return json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())


def test_last_ckpt_is_the_final_epoch_when_that_epoch_is_not_the_best(cub_root, make_cfg):
    cfg = best_only_in_epoch_0(make_cfg(tiny(cub_root, epochs=3)))
    assert train(cfg)["status"] == "finished"
    checkpoints = Path(cfg.paths.output_dir) / "checkpoints"
    assert epoch_of(checkpoints / "last.ckpt") == 2
    assert [p.name for p in checkpoints.glob("best-*.ckpt")] == ["best-epoch000.ckpt"]


def test_runs_without_validation_still_save_last_ckpt(cub_root, make_cfg):
    cfg = make_cfg(tiny(cub_root) + ["data.val_fraction=0", "test_ckpt=best"])
    assert train(cfg)["status"] == "finished"
    checkpoints = Path(cfg.paths.output_dir) / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt"]
    assert epoch_of(checkpoints / "last.ckpt") == 1


@pytest.fixture
def file_size_limit_after_first_last_ckpt(monkeypatch):
    """A real write failure: once last.ckpt is first written, files may grow to only half its
    size (RLIMIT_FSIZE), so the next checkpoint write fails part way with EFBIG, as a full
    disk fails with ENOSPC; every smaller file (record, CSV) is still written."""
    original = pl.Trainer.save_checkpoint
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill

    def save_checkpoint(self, filepath, *args, **kwargs):
        original(self, filepath, *args, **kwargs)
        if (
            Path(filepath).name == "last.ckpt"
            and soft == resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        ):
            resource.setrlimit(resource.RLIMIT_FSIZE, (Path(filepath).stat().st_size // 2, hard))

    monkeypatch.setattr(pl.Trainer, "save_checkpoint", save_checkpoint)
    try:
        yield lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)


def test_failed_checkpoint_write_keeps_the_previous_one(
    cub_root, make_cfg, file_size_limit_after_first_last_ckpt
):
    cfg = best_only_in_epoch_0(make_cfg(tiny(cub_root, epochs=2)))
    with pytest.raises(OSError) as caught:
        train(cfg)
    assert caught.value.errno == errno.EFBIG
    lift_limit = file_size_limit_after_first_last_ckpt
    lift_limit()
    checkpoints = Path(cfg.paths.output_dir) / "checkpoints"
    assert epoch_of(checkpoints / "last.ckpt") == 0  # whole, and the previous state
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best-epoch000.ckpt", "last.ckpt"]
    record = record_of(cfg)
    assert record["status"] == "failed" and "File too large" in record["error"]
    again = train(cfg)  # the same command resumes from the intact last.ckpt
    assert again["status"] == "finished"
    assert epoch_of(checkpoints / "last.ckpt") == 1


def test_truncated_checkpoint_is_refused_in_one_line(cub_root, make_cfg, tmp_path):
    cfg = make_cfg(tiny(cub_root, epochs=1))
    train(cfg)
    whole = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 4 // 10])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "other")
        cfg.ckpt_path = str(cut)
    with pytest.raises(ConfigError) as caught:
        train(cfg)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{cut}: not a readable checkpoint")
    assert "delete it" in message and "ckpt_path=null" in message
    assert record_of(cfg)["status"] == "failed"


def csv_rows(cfg: DictConfig) -> list[dict[str, str]]:
    with open(Path(cfg.paths.output_dir) / "csv" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_resumed_run_continues_its_csv_history(cub_root, make_cfg, monkeypatch):
    cfg = make_cfg(tiny(cub_root, epochs=2))
    module = get_class(cfg.model._target_)

    def fail_in_epoch_1(self, batch, batch_idx):
        if self.current_epoch == 1 and batch_idx == 1:  # after logging epoch 1's first step
            raise RuntimeError("lost power")

    monkeypatch.setattr(module, "on_train_batch_start", fail_in_epoch_1, raising=False)
    with pytest.raises(RuntimeError, match="lost power"):
        train(cfg)
    first = csv_rows(cfg)
    resumed_at = min(int(r["step"]) for r in first if r["epoch"] == "1")
    before = [r for r in first if int(r["step"]) < resumed_at]
    assert any(r["epoch"] == "0" and r["val/acc"] for r in before)
    monkeypatch.undo()

    assert train(cfg)["status"] == "finished"  # resumes from epoch 0's last.ckpt
    rows = csv_rows(cfg)
    assert [{k: r[k] for k in first[0]} for r in rows[: len(before)]] == before  # kept as it was
    assert any(r["epoch"] == "1" and r["val/acc"] for r in rows[len(before) :])
    steps = [r["step"] for r in rows if r["train/loss_step"]]
    assert len(steps) == len(set(steps))  # epoch 1's first step once, not twice
    assert any(r["test/acc"] for r in rows)


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "stnrepro.train", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


@pytest.mark.slow
def test_ctrl_c_is_recorded_with_how_to_resume(cub_root, tmp_path):
    run_dir = tmp_path / "run"
    args = tiny(cub_root, epochs=6) + [f"hydra.run.dir={run_dir}"]
    proc = start(args)
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, output[-2000:]
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "interrupted"
    assert record["error"] == (
        "interrupted by Ctrl-C; resume with the same command "
        "(ckpt_path=last continues from checkpoints/last.ckpt)"
    )
    again = subprocess.run(
        [sys.executable, "-m", "stnrepro.train", *args], capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming from {last}" in again.stdout + again.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "finished"


@pytest.fixture
def small_disk(tmp_path):
    """``mount(size_bytes) -> folder`` on a tmpfs of that size (root only), unmounted after."""
    mounted: list[Path] = []

    def mount(size: int) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
            capture_output=True, text=True,
        )  # fmt: skip
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_disk_never_leaves_a_truncated_checkpoint(cub_root, make_cfg, small_disk):
    """The issue's case: a small file system as output folder, room for one checkpoint and a
    bit. Lightning's own writer copied its temporary file over last.ckpt from the system temp
    folder (another file system), truncating it when the disk filled up; every resume then
    crashed on it."""
    probe = make_cfg(tiny(cub_root, epochs=1) + ["logger=none"])
    train(probe)
    size = (Path(probe.paths.output_dir) / "checkpoints" / "last.ckpt").stat().st_size
    disk = small_disk(int(size * 1.3))  # the best checkpoint fits, then last.ckpt does not
    cfg = make_cfg(tiny(cub_root, epochs=2) + ["logger=none"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(disk / "run")
    with pytest.raises(OSError, match="No space left on device"):
        train(cfg)
    record = record_of(cfg)
    assert record["status"] == "failed" and "No space left on device" in record["error"]
    checkpoints = sorted((disk / "run" / "checkpoints").iterdir())
    assert [p.name for p in checkpoints] == ["best-epoch000.ckpt"]  # no half file, no temp
    assert epoch_of(checkpoints[0]) == 0
