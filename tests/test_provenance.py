"""Provenance in the run record: code, libraries, machine, threads, device and data."""

from __future__ import annotations

import importlib
import json
import os
import platform
import shutil
import subprocess
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from cub_fixture import write_tiny_cub
from test_train import tiny_overrides

from stnrepro.data.cub import CUBDataModule
from stnrepro.data.synth_settings import (
    GENERATOR_KEYS,
    GENERATOR_VERSION,
    preset_settings,
    settings_hash,
)
from stnrepro.data.synthetic import SynthBirdsDataModule
from stnrepro.errors import ConfigError
from stnrepro.records.definition import run_definition
from stnrepro.records.reader import read_record_file
from stnrepro.run import provenance
from stnrepro.train import train

FIELDS = {
    "git", "versions", "os", "cpu", "cpu_capability", "threads", "gpu", "precision", "dataset",
    "init_from",
}  # fmt: skip


@pytest.fixture
def torch_threads(monkeypatch):
    """Restore torch's thread count and OMP_NUM_THREADS: both are process-wide."""
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # restored after the test
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cub_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "CUB_200_2011"
    return write_tiny_cub(root, num_classes=3, per_class=6, size=(48, 40))


def test_short_cpu_run_records_its_provenance_and_config(cub_root, make_cfg, torch_threads):
    cfg = make_cfg([*tiny_overrides(cub_root, 0), "trainer.max_epochs=1", "threads=1"])
    record = train(cfg)
    path = Path(cfg.paths.output_dir) / "metrics.json"
    assert json.loads(path.read_text()) == record
    prov = record["provenance"]
    assert set(prov) == FIELDS
    assert prov["threads"] == 1 == torch.get_num_threads()
    versions = prov["versions"]
    assert versions["python"] == platform.python_version()
    for key, module in provenance.LIBRARIES.items():
        assert versions[key] == importlib.import_module(module).__version__, key
    assert prov["os"] == platform.platform() and prov["cpu"]
    assert prov["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert prov["gpu"] is None and prov["precision"] == "32-true"
    assert set(prov["git"]) == {"commit", "dirty"}
    assert prov["dataset"] == CUBDataModule(root=str(cub_root), num_classes=3).fingerprint()
    assert record["config"] == run_definition(cfg) and record["config"]["threads"] == 1
    parsed = read_record_file(path)
    assert parsed.provenance == prov and parsed.config == record["config"]


@pytest.mark.parametrize("value", [0, -2, 1.5, "two", True])
def test_bad_threads_is_one_line_naming_the_key(cub_root, make_cfg, value):
    cfg = make_cfg([*tiny_overrides(cub_root, 0), f"threads={value}"])
    with pytest.raises(ConfigError, match=r"^threads=.*: expected an integer >= 1 or null$"):
        train(cfg)


def test_threads_null_keeps_torchs_default(torch_threads):
    assert provenance.set_threads(None) == torch.get_num_threads()
    assert provenance.set_threads(1) == 1 == torch.get_num_threads()
    assert os.environ["OMP_NUM_THREADS"] == "1"  # else Lightning's DDP launcher resets it


def test_demo_fixes_one_thread_per_job(make_cfg):
    assert make_cfg(["experiment=demo_table"]).threads == 1
    assert make_cfg([]).threads is None


def test_git_state_outside_a_checkout_is_null(monkeypatch, tmp_path):
    monkeypatch.setattr(provenance, "_PACKAGE_DIR", tmp_path)
    assert provenance.git_state() == {"commit": None, "dirty": None}


def test_git_state_in_this_checkout(tmp_path):
    here = Path(provenance.__file__).parent
    head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=False)  # fmt: skip
    if shutil.which("git") is None or head.returncode != 0:
        pytest.skip("the package is not in a git checkout (an installed wheel)")
    state = provenance.git_state()
    assert state["commit"] == head.stdout.strip() and isinstance(state["dirty"], bool)


def _synth(tmp_path: Path, gen_seed: int) -> SynthBirdsDataModule:
    settings = asdict(preset_settings("synth_birds_tiny", gen_seed=gen_seed))
    generator = {k: v for k, v in settings.items() if k in GENERATOR_KEYS}
    return SynthBirdsDataModule(
        preset="synth_birds_tiny", gen_seed=gen_seed, cache_dir=tmp_path, **generator
    )


def test_synthetic_fingerprint_is_stable_and_follows_the_generator_seed(tmp_path):
    a, b, other = _synth(tmp_path, 0), _synth(tmp_path, 0), _synth(tmp_path, 1)
    assert a.fingerprint() == b.fingerprint() != other.fingerprint()
    fp = a.fingerprint()
    assert fp["generator_version"] == GENERATOR_VERSION and fp["preset"] == "synth_birds_tiny"
    assert fp["gen_seed"] == 0 and fp["settings_hash"] == settings_hash(a.settings)


def test_cub_fingerprint_is_stable_and_follows_the_index_files(tmp_path):
    root = write_tiny_cub(tmp_path / "CUB_200_2011", num_classes=3, per_class=4)
    dm = CUBDataModule(root=str(root), num_classes=3)
    first = dm.fingerprint()
    assert first == CUBDataModule(root=str(root), num_classes=3).fingerprint()
    assert "bounding_boxes.txt" in first["index_files"]
    split = root / "train_test_split.txt"
    lines = split.read_text().splitlines()
    iid, is_train = lines[0].split()
    split.write_text("\n".join([f"{iid} {1 - int(is_train)}", *lines[1:]]) + "\n")
    assert dm.fingerprint()["index_sha256"] != first["index_sha256"]
