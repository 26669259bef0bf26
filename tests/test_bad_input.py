"""Bad input through the real CLI: one clear line naming the key/file/value, exit 2.

One test runs ``stn-train`` as a process (the exit status and stderr a shell sees); the
others run the same entry point in this process (the ``stn_train`` fixture), which is
seconds faster and checks the same line and status.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from cub_fixture import write_tiny_cub

ARGS = ["logger=none", "trainer=cpu", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"]


@pytest.fixture
def cli(stn_train):
    """``cli(args, tmp_path, mode)``: stn-train [mode] with outputs in tmp_path/run."""

    def _cli(args: list[str], tmp_path: Path, mode: Sequence[str] = ()):
        return stn_train([*mode, f"hydra.run.dir={tmp_path}/run", *ARGS, *args])

    return _cli


def error_lines(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error: ")]


@pytest.fixture
def cub(tmp_path) -> list[str]:
    root = write_tiny_cub(tmp_path / "CUB_200_2011", num_classes=3, per_class=4, size=(48, 40))
    return ["data=cub", f"data.root={root}", "data.num_classes=3", "data.image_size=32",
            "data.batch_size=4", "model.crop_size=16", "model.num_transformers=2"]  # fmt: skip


def test_wrong_data_root_through_the_console_script(tmp_path):
    env = os.environ | {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "stn-train"), f"hydra.run.dir={tmp_path}/run",
         *ARGS, "data=cub", f"data.root={tmp_path}/missing"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 2
    [line] = error_lines(proc)
    assert f"{tmp_path}/missing" in line and "Traceback" not in proc.stderr


def test_truncated_image_found_by_a_worker_names_the_file(cub, tmp_path, cli):
    image = sorted((tmp_path / "CUB_200_2011" / "images").rglob("*.jpg"))[0]
    image.write_bytes(image.read_bytes()[:200])
    proc = cli([*cub, "data.num_workers=1", "data.val_fraction=0"], tmp_path)
    assert proc.returncode == 2
    [line] = error_lines(proc)
    assert str(image) in line and "Original Traceback" not in line
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["status"] == "failed" and str(image) in record["error"]


def test_num_classes_that_does_not_match_the_dataset(cub, tmp_path, cli):
    proc = cli([*cub, "data.num_classes=5"], tmp_path)
    assert proc.returncode == 2
    [line] = error_lines(proc)
    assert "data.num_classes=5" in line and "classes.txt" in line


def test_unknown_dataset_is_refused_by_hydra_naming_it(tmp_path, cli):
    proc = cli(["data=imagenet"], tmp_path)
    assert proc.returncode != 0
    assert "Could not find 'data/imagenet'" in proc.stderr
    assert "cub" in proc.stderr  # the available options are listed


@pytest.mark.parametrize("mode", ["run", "sweep"])
def test_an_output_folder_that_is_a_file_is_one_line(tmp_path, mode, cli):
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    key, args = ("hydra.run.dir", []) if mode == "run" else ("hydra.sweep.dir", ["seed=0,1"])
    proc = cli([*args, f"{key}={taken}/inside"], tmp_path, ["-m"] if mode == "sweep" else [])
    assert proc.returncode == 2, proc.stderr[-2000:]
    [line] = error_lines(proc)
    assert f"{key}={taken}/inside" in line and f"{taken} is a file" in line
    assert "Traceback" not in proc.stderr and taken.read_text() == "not a folder"


def test_folder_problem_names_the_file_in_the_way(tmp_path):
    from stnrepro.run.folder import folder_problem

    (tmp_path / "f").write_text("")
    assert folder_problem(tmp_path / "new" / "deeper") is None
    assert folder_problem(tmp_path) is None
    assert folder_problem(tmp_path / "f") == f"{tmp_path}/f is a file"
    assert (
        folder_problem(tmp_path / "f" / "x")
        == f"{tmp_path}/f is a file (a parent of {tmp_path}/f/x)"
    )


def test_check_data_lists_every_bad_image(tmp_path, capsys):
    from stnrepro.cli.data import main as stn_data

    root = write_tiny_cub(tmp_path / "CUB_200_2011", num_classes=2, per_class=3)
    assert stn_data(["check", str(root)]) == 0
    images = sorted((root / "images").rglob("*.jpg"))
    images[0].write_bytes(images[0].read_bytes()[:100])
    images[3].write_text("not an image")
    capsys.readouterr()
    assert stn_data(["check", str(root), "--workers", "2"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 2 and str(images[0]) in err[0] and str(images[3]) in err[1]
    assert stn_data(["check", str(tmp_path / "nope")]) == 2


def test_divergence_stops_the_run_with_a_clear_failed_record(cub, tmp_path, cli):
    proc = cli(
        [*cub, "data.num_workers=0", "model.optimizer.lr=1e38", "trainer.max_epochs=5"], tmp_path
    )
    assert proc.returncode == 2
    [line] = error_lines(proc)
    assert "training diverged" in line or "localisation network diverged" in line
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["status"] == "failed" and "diverged" in record["error"]


@pytest.mark.parametrize(
    ("override", "line"),
    [
        ("trainer.max_epochs=abc", "error: trainer.max_epochs='abc': expected an integer >= 1"),
        ("trainer.max_epochs=0", "error: trainer.max_epochs=0: expected an integer >= 1"),
    ],
)
def test_bad_numeric_value_is_one_line(cub, tmp_path, override, line, cli):
    proc = cli([*cub, override], tmp_path)
    assert proc.returncode == 2
    assert error_lines(proc) == [line] and "Traceback" not in proc.stderr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_trainer_on_a_cpu_machine_is_one_line(cub, tmp_path, cli):
    proc = cli([*cub, "trainer=gpu"], tmp_path)
    assert proc.returncode == 2
    assert error_lines(proc) == [
        "error: trainer.accelerator=gpu: no GPU is available on this machine; use trainer=cpu"
    ]
    assert "Traceback" not in proc.stderr


def test_missing_test_image_is_one_line_before_training(cub, tmp_path, cli):
    image = sorted((tmp_path / "CUB_200_2011" / "images").rglob("*.jpg"))[-1]
    image.unlink()
    proc = cli(cub, tmp_path)
    assert proc.returncode == 2
    [line] = error_lines(proc)
    assert "1 of 12 listed image file(s) not found" in line and image.name in line
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_wandb_online_without_a_network_is_one_line_that_says_how_to_go_offline(cub, tmp_path):
    """A CommError traceback after two minutes, before; now one line, exit 1 (a failure)."""
    env = os.environ | {
        "WANDB_MODE": "online",
        "WANDB_API_KEY": "a" * 40,
        "WANDB_BASE_URL": "http://127.0.0.1:9",  # nothing listens there
        "WANDB_INIT_TIMEOUT": "5",
        "WANDB_SILENT": "true",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "stnrepro.train", f"hydra.run.dir={tmp_path}/run", "logger=wandb",
         "trainer=cpu", "trainer.max_epochs=1", *cub],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    [line] = error_lines(proc)
    assert line.startswith("error: W&B could not start the run (") and "WANDB_MODE=offline" in line
    assert "Traceback" not in proc.stderr
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["status"] == "failed" and "W&B could not start the run" in record["error"]


def test_wandb_mode_disabled_is_honoured(cub, tmp_path, make_cfg, monkeypatch):
    """It used to be overridden to offline, writing W&B files anyway."""
    from stnrepro.train import train

    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = make_cfg([*cub, "logger=wandb", "trainer=cpu", "trainer.max_epochs=1",
                    "data.num_workers=0"])  # fmt: skip
    record = train(cfg)
    assert record["status"] == "finished" and record["logger"]["name"] == "none"
    assert not (Path(cfg.paths.output_dir) / "wandb").exists()


@pytest.mark.parametrize("extra", [1, 997])
def test_more_threads_than_usable_cores_is_refused(cub, make_cfg, extra):
    from stnrepro.errors import ConfigError
    from stnrepro.train import train

    cores = len(os.sched_getaffinity(0))
    threads = cores + extra
    with pytest.raises(
        ConfigError, match=rf"^threads={threads}: this machine lets the run use {cores}"
    ):
        train(make_cfg([*cub, "trainer=cpu", f"threads={threads}"]))


def test_usable_cores_follows_the_affinity_mask():
    from stnrepro.run.checks import usable_cores

    assert usable_cores() == len(os.sched_getaffinity(0))
