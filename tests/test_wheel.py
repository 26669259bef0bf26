"""A non-editable wheel install works from any folder: configs and tools travel inside it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOLS = ("stn-train", "stn-table", "stn-data", "stn-attention", "stn-bench", "stn-dash")


def run(args: list, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc


@pytest.mark.slow
def test_the_wheel_installs_and_trains_from_an_unrelated_folder(tmp_path):
    dist, site, elsewhere = tmp_path / "dist", tmp_path / "site", tmp_path / "elsewhere"
    pip = [sys.executable, "-m", "pip", "-q"]
    source = tmp_path / "source"  # a copy: building writes build/ and egg-info next to it
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", dist, source], timeout=300)
    (wheel,) = dist.glob("stnrepro-*.whl")
    run([*pip, "install", "--no-deps", "--no-index", "--target", site, wheel], timeout=300)
    elsewhere.mkdir()
    env = os.environ | {"PYTHONPATH": str(site), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.pop("STNREPRO_ROOT", None)

    # The installed copy is the one imported, and its configs are package data.
    where = run([sys.executable, "-c", "import stnrepro.config as c; print(c.config_dir())"],
                env=env, cwd=elsewhere)  # fmt: skip
    assert Path(where.stdout.strip()).is_relative_to(site)
    assert (Path(where.stdout.strip()) / "experiment" / "cub_4st_448.yaml").is_file()
    for tool in TOOLS:
        assert (site / "bin" / tool).is_file(), tool

    job = run([site / "bin" / "stn-train", "experiment=cub_4st_448", "--cfg", "job"],
              env=env, cwd=elsewhere, timeout=120)  # fmt: skip
    assert "num_transformers: 4" in job.stdout and "image_size: 448" in job.stdout

    run([site / "bin" / "stn-train", "data=synth_birds_tiny", "data.num_workers=0",
         "model.num_transformers=2", "model.crop_size=32", "trainer=cpu",
         "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "logger=csv"],
        env=env, cwd=elsewhere, timeout=300)  # fmt: skip
    (record,) = elsewhere.glob("logs/train/runs/*/metrics.json")
    data = json.loads(record.read_text())
    assert data["status"] == "finished" and 0.0 <= data["metrics"]["test/acc"] <= 1.0
    assert list(elsewhere.glob("data/synth_birds_tiny-*/images.txt"))  # generated here

    table = run([site / "bin" / "stn-table", "--runs", elsewhere / "logs", "--out",
                 elsewhere / "results"], env=env, cwd=elsewhere, timeout=120)  # fmt: skip
    assert "2xST" in table.stdout
    assert (elsewhere / "results" / "synth_birds_tiny_table.md").is_file()
