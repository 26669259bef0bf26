"""Checkpoints and resume: last.ckpt is the newest state and is never left half written; a
corrupt one is refused in one line; a resumed run continues its CSV history; Ctrl-C is
recorded with how to resume."""

from __future__ import annotations

import csv
import errno
import json
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import compose_train
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
    cfg = make_cfg([*tiny(cub_root), "data.val_fraction=0", "test_ckpt=last"])
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
    assert "\n" not in message and message.startswith(f"ckpt_path={cut}: not a readable checkpoint")
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


def _hear_ctrl_c() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(args: list[str]) -> subprocess.Popen:
    """``stn-train`` as a child that hears Ctrl-C even when this test process does not.

    A command a non-interactive shell starts with ``&`` (a CI script run in the background)
    inherits SIGINT ignored, and so would the child; Python then installs no KeyboardInterrupt
    handler and the run trains on through the test's SIGINT.
    """
    return subprocess.Popen(
        [sys.executable, "-m", "stnrepro.train", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=_hear_ctrl_c,
    )  # fmt: skip


@pytest.mark.slow
def test_ctrl_c_is_recorded_with_how_to_resume(cub_root, tmp_path):
    run_dir = tmp_path / "run"
    args = [*tiny(cub_root, epochs=6), f"hydra.run.dir={run_dir}"]
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
    probe = make_cfg([*tiny(cub_root, epochs=1), "logger=none"])
    train(probe)
    size = (Path(probe.paths.output_dir) / "checkpoints" / "last.ckpt").stat().st_size
    disk = small_disk(int(size * 1.3))  # the best checkpoint fits, then last.ckpt does not
    cfg = make_cfg([*tiny(cub_root, epochs=2), "logger=none"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(disk / "run")
    with pytest.raises(OSError, match="No space left on device"):
        train(cfg)
    record = record_of(cfg)
    assert record["status"] == "failed" and "No space left on device" in record["error"]
    checkpoints = sorted((disk / "run" / "checkpoints").iterdir())
    assert [p.name for p in checkpoints] == ["best-epoch000.ckpt"]  # no half file, no temp
    assert epoch_of(checkpoints[0]) == 0


def test_testing_the_best_checkpoint_without_a_validation_set_is_refused(cub_root, make_cfg):
    """It used to test the last weights while the record said best."""
    cfg = make_cfg([*tiny(cub_root), "data.val_fraction=0", "test_ckpt=best"])
    with pytest.raises(ConfigError, match=re.escape("test_ckpt=best with data.val_fraction=0")):
        train(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


@pytest.fixture(scope="module")
def seed0(cub_root, tmp_path_factory) -> Path:
    """A finished one-epoch run with seed 0; its folder."""
    run = tmp_path_factory.mktemp("seed0")
    assert train(compose_train(tiny(cub_root, epochs=1), run))["status"] == "finished"
    return run


def test_a_checkpoint_of_another_run_is_refused_naming_the_keys(cub_root, seed0, tmp_path):
    """Resuming seed 1 from seed 0's checkpoint made a 'seed 1' that was seed 0."""
    last = seed0 / "checkpoints" / "last.ckpt"
    cfg = compose_train([*tiny(cub_root, epochs=1), "seed=1", f"ckpt_path={last}"], tmp_path)
    with pytest.raises(ConfigError) as err:
        train(cfg)
    message = str(err.value)
    assert message.startswith(f"ckpt_path={last}: a checkpoint of another run (")
    assert "seed 0 -> 1" in message
    assert f"init_from={last}" in message and "\n" not in message
    assert not (tmp_path / "predictions.csv").exists() and record_of(cfg)["status"] == "failed"


def test_every_checkpoint_names_its_run(seed0):
    saved = torch.load(seed0 / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    definition = json.loads((seed0 / "run_config.json").read_text())
    assert saved["stnrepro_run_definition"] == definition


def _zip_that_is_not_torch(path: Path) -> None:
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("hello.txt", "not a checkpoint")


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (_zip_that_is_not_torch, "not a torch checkpoint"),
        (lambda p: torch.save({"foo": 1}, p), "not a Lightning checkpoint (no state_dict)"),
        (lambda p: torch.save({"state_dict": {}}, p), "names no run definition"),
    ],
)
def test_a_file_that_is_no_checkpoint_of_a_run_is_one_line(cub_root, tmp_path, make, said):
    path = tmp_path / "given.ckpt"
    make(path)
    cfg = compose_train([*tiny(cub_root, epochs=1), f"ckpt_path={path}"], tmp_path / "run")
    with pytest.raises(ConfigError, match=re.escape(said)) as err:
        train(cfg)
    assert str(err.value).startswith(f"ckpt_path={path}: ")


def test_a_checkpoint_of_another_architecture_is_refused(cub_root, seed0, tmp_path):
    last = seed0 / "checkpoints" / "last.ckpt"
    overrides = [*tiny(cub_root, epochs=1), "model.num_transformers=2", f"ckpt_path={last}"]
    with pytest.raises(ConfigError, match=re.escape("model.num_transformers 1 -> 2")):
        train(compose_train(overrides, tmp_path))


def test_init_from_loads_the_weights_only_and_is_recorded(cub_root, seed0, tmp_path):
    import hashlib

    last = seed0 / "checkpoints" / "last.ckpt"
    cfg = compose_train([*tiny(cub_root, epochs=1), "seed=1", f"init_from={last}"], tmp_path)
    record = train(cfg)
    assert record["status"] == "finished"
    assert record["config"]["init_from"] == str(last)  # part of what defines this run
    assert record["provenance"]["init_from"] == {
        "path": str(last.resolve()),
        "sha256": hashlib.sha256(last.read_bytes()).hexdigest(),
    }
    # Weights only: the new run trains its own epoch 0 (the old one's counters stay there).
    assert epoch_of(tmp_path / "checkpoints" / "last.ckpt") == 0
    assert record["metrics"]["test/acc"] is not None


def test_init_from_weights_of_another_architecture_is_one_line(cub_root, seed0, tmp_path):
    last = seed0 / "checkpoints" / "last.ckpt"
    overrides = [*tiny(cub_root, epochs=1), "model.num_transformers=2", f"init_from={last}"]
    with pytest.raises(ConfigError) as err:
        train(compose_train(overrides, tmp_path))
    message = str(err.value)
    assert message.startswith(f"init_from={last}: its weights do not fit this model (")
    assert "\n" not in message


def test_a_resume_after_the_last_epoch_keeps_the_fit_metrics(cub_root, tmp_path):
    """Interrupted in the test phase, then run again: nothing is left to fit, so the record
    keeps what the first attempt recorded of the fit and adds the test."""
    cfg = compose_train(tiny(cub_root, epochs=1), tmp_path)
    finished = train(cfg)
    path = tmp_path / "metrics.json"
    interrupted = json.loads(path.read_text())
    interrupted["status"] = "interrupted"
    interrupted["metrics"] = {
        k: v for k, v in finished["metrics"].items() if not k.startswith("test/")
    }
    path.write_text(json.dumps(interrupted))
    again = train(compose_train(tiny(cub_root, epochs=1), tmp_path))
    assert again["status"] == "finished"
    assert sorted(again["metrics"]) == sorted(finished["metrics"])
    assert again["metrics"]["val/acc"] == finished["metrics"]["val/acc"]


def test_a_disk_that_fills_up_in_the_test_phase_is_recorded_and_one_line(
    cub_root, make_cfg, small_disk, monkeypatch
):
    """Two chained tracebacks, and a record left 'running', before."""
    from stnrepro.lightning.module import STCNNModule

    disk = small_disk(64 * 1024 * 1024)  # room for training and its checkpoints
    filled = []

    def fill_the_disk(self):
        """To the last byte: big blocks first, then ever smaller ones."""
        with open(disk / "filler", "wb", buffering=0) as f:
            block = 1 << 20
            while block:
                try:
                    f.write(bytes(block))
                except OSError:
                    block //= 2
        filled.append(True)

    monkeypatch.setattr(STCNNModule, "on_test_start", fill_the_disk, raising=False)
    cfg = make_cfg([*tiny(cub_root, epochs=1), "logger=none"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(disk / "run")
    with pytest.raises(OSError, match="No space left on device"):
        train(cfg)
    assert filled, "the disk was to fill up in the test phase, not before"
    record = record_of(cfg)
    assert record["status"] == "failed" and "No space left on device" in record["error"]
    assert not (disk / "run" / "predictions.csv").exists()
    assert not list((disk / "run").glob(".*.tmp"))  # nothing half written is left


def test_a_storage_failure_ends_the_command_in_one_line(tmp_path, monkeypatch, stn_train):
    """The run records it (above); the command says it once, exit 1, not a traceback."""
    import errno

    import stnrepro.train as entry

    def full(cfg):
        raise OSError(errno.ENOSPC, "No space left on device", "/x/predictions.csv")

    monkeypatch.setattr(entry, "train", full)
    proc = stn_train([f"hydra.run.dir={tmp_path}", "logger=none"])
    assert proc.returncode == 1
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert err == ["error: /x/predictions.csv: No space left on device; the run's record says so"]
