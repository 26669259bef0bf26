"""One output folder, one run: reruns change nothing, other runs are refused, one process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cub_fixture import write_tiny_cub
from filelock import FileLock

from stnrepro.errors import ConfigError
from stnrepro.records.definition import ADDED_KEYS, run_definition
from stnrepro.run.folder import HOLDER_NAME, LOCK_NAME
from stnrepro.train import train


@pytest.fixture(scope="module")
def cub_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "CUB_200_2011"
    return write_tiny_cub(root, num_classes=3, per_class=6, size=(48, 40))


def tiny(cub_root: Path) -> list[str]:
    return [
        "data=cub", f"data.root={cub_root}", "data.num_classes=3", "data.image_size=32",
        "data.batch_size=4", "data.num_workers=0", "model.num_transformers=2",
        "model.crop_size=16", "trainer=cpu", "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false", "logger=csv",
    ]  # fmt: skip


def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.name not in (LOCK_NAME,)
    }


def test_rerunning_a_finished_run_changes_nothing(cub_root, make_cfg, caplog):
    cfg = make_cfg(tiny(cub_root))
    first = train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    before = snapshot(run_dir)
    assert "csv/metrics.csv" in before and "val/acc" in first["metrics"]
    with caplog.at_level("INFO", logger="stnrepro"):
        again = train(make_cfg(tiny(cub_root)))
    assert again == first
    assert snapshot(run_dir) == before  # record, CSV, checkpoints: byte for byte
    assert f"already finished; nothing to do. Its record: {run_dir / 'metrics.json'}" in caplog.text


@pytest.mark.parametrize(
    "change,named",
    [
        ("seed=1", "seed 0 -> 1"),
        ("model.optimizer.lr=0.1", "model.optimizer.lr 0.01 -> 0.1"),
        ("model.fixed_scale=0.3", "model.fixed_scale 0.5 -> 0.3"),
        ("data.val_fraction=0.3", "data.val_fraction 0.1 -> 0.3"),
        ("model.num_transformers=4", "model.num_transformers 2 -> 4"),
    ],
)
def test_another_run_in_the_same_folder_is_refused_naming_the_keys(
    cub_root, make_cfg, change, named
):
    cfg = make_cfg(tiny(cub_root))
    train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    before = snapshot(run_dir)
    with pytest.raises(ConfigError, match="holds another run") as info:
        train(make_cfg([*tiny(cub_root), change]))
    message = str(info.value)
    assert named in message and "\n" not in message and "Use a new output folder" in message
    assert snapshot(run_dir) == before  # the finished record is not touched


def test_a_folder_from_an_older_version_is_refused_not_mixed(cub_root, make_cfg):
    cfg = make_cfg(tiny(cub_root))
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps({"status": "finished"}))
    with pytest.raises(ConfigError, match=re.escape("without run_config.json")):
        train(cfg)


def test_a_finished_folder_written_before_the_regroup_is_still_this_run(cub_root, make_cfg):
    """Its run_config.json names the old module paths; it is the same run, not another."""
    cfg = make_cfg(tiny(cub_root))
    first = train(cfg)
    path = Path(cfg.paths.output_dir) / "run_config.json"
    definition = json.loads(path.read_text())
    assert definition["model._target_"] == "stnrepro.lightning.module.STCNNModule"
    definition["model._target_"] = "stnrepro.module.STCNNModule"  # as the old layout wrote it
    path.write_text(json.dumps(definition))
    assert train(make_cfg(tiny(cub_root))) == first  # finished: nothing to do, not refused


def test_a_finished_folder_written_before_a_key_was_added_is_still_this_run(cub_root, make_cfg):
    """Its run_config.json lacks keys added since (init_from); absent means their default."""
    cfg = make_cfg(tiny(cub_root))
    first = train(cfg)
    path = Path(cfg.paths.output_dir) / "run_config.json"
    definition = json.loads(path.read_text())
    for key in ADDED_KEYS:
        del definition[key]  # as a version before the key wrote it
    path.write_text(json.dumps(definition))
    assert train(make_cfg(tiny(cub_root))) == first  # finished: nothing to do, not refused


def test_added_keys_mean_what_their_config_default_means(cub_root, make_cfg):
    """An absent key is read as the config's default: if a default changes, old folders
    would silently be read as the new default; this test makes that a decision."""
    definition = run_definition(make_cfg(tiny(cub_root)))
    assert {k: definition[k] for k in ADDED_KEYS} == ADDED_KEYS


def test_keys_that_cannot_change_results_do_not_define_the_run(cub_root, make_cfg):
    base = run_definition(make_cfg(tiny(cub_root)))
    other = run_definition(
        make_cfg([*tiny(cub_root), "logger=wandb", "data.num_workers=2", "tags=[x]",
                  "trainer.log_every_n_steps=3", "ckpt_path=null"])
    )  # fmt: skip
    assert base == other
    assert base["seed"] == 0 and base["model.optimizer.lr"] == 0.01
    assert not any(k.startswith(("logger", "paths")) for k in base)
    # Of the callbacks only what picks the "best" checkpoint (test_ckpt=best) defines a run.
    assert [k for k in base if k.startswith("callbacks")] == [
        "callbacks.best_checkpoint.mode", "callbacks.best_checkpoint.monitor",
    ]  # fmt: skip


def test_a_second_process_in_the_same_folder_is_refused_naming_the_holder(cub_root, make_cfg):
    cfg = make_cfg(tiny(cub_root))
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True)
    (run_dir / HOLDER_NAME).write_text("pid 4242 on node7 since 2026-12-01T10:00:00+00:00\n")
    # FileLock: another holder (a separate file descriptor)
    with (
        FileLock(str(run_dir / LOCK_NAME)),
        pytest.raises(ConfigError, match="in use by pid 4242 on node7"),
    ):
        train(cfg)
    assert not (run_dir / "metrics.json").exists()


@pytest.mark.slow
def test_a_second_sweep_into_the_same_folder_does_not_reuse_the_first(cub_root, tmp_path):
    sweep = tmp_path / "sweep"
    env = os.environ | {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}

    def run(seeds: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "stnrepro.train", "-m", *tiny(cub_root), f"seed={seeds}",
             f"hydra.sweep.dir={sweep}"],
            capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path,
        )  # fmt: skip

    assert run("0,1").returncode == 0
    before = {p: p.read_bytes() for p in sorted(sweep.glob("*/metrics.json"))}
    second = run("2,3")
    # data.seed follows seed (${seed} in the data configs), so both keys differ.
    assert "holds another run: data.seed 0 -> 2, seed 0 -> 2" in second.stdout + second.stderr
    after = {p: p.read_bytes() for p in sorted(sweep.glob("*/metrics.json"))}
    assert after == before  # s0/s1 keep their numbers; no s2/s3 record carries them
    names = {json.loads(b)["run_name"] for b in after.values()}
    assert names == {"2xST-32-s0", "2xST-32-s1"}


def test_a_run_refused_for_a_bad_value_leaves_its_folder_free_for_the_fix(cub_root, make_cfg):
    """A failed record without checkpoints holds nothing to resume or protect."""
    bad = make_cfg([*tiny(cub_root), "model.fixed_scale=1.5"])
    with pytest.raises(ConfigError, match=re.escape("model.fixed_scale=1.5")):
        train(bad)
    run_dir = Path(bad.paths.output_dir)
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "failed"
    fixed = train(make_cfg(tiny(cub_root)))
    assert fixed["status"] == "finished"
    assert json.loads((run_dir / "run_config.json").read_text())["model.fixed_scale"] == 0.5


def test_resuming_waits_while_the_killed_runs_wandb_process_holds_the_id(monkeypatch):
    """After a SIGKILL, W&B's service can keep the run id for a while ("is in use")."""
    from stnrepro.run import tracking

    class Logger:
        calls = 0

        @property
        def experiment(self):
            Logger.calls += 1
            if Logger.calls < 3:
                raise RuntimeError("run ID af28a287cba2 is in use")
            return object()

    monkeypatch.setattr(tracking.time, "sleep", lambda s: None)
    tracking._start_run(Logger())
    assert Logger.calls == 3
    Logger.calls = -(10**9)  # never released: the wait ends with the error
    monkeypatch.setattr(tracking, "RUN_ID_WAIT_S", 0.0)
    with pytest.raises(RuntimeError, match="is in use"):
        tracking._start_run(Logger())


def test_eval_batch_size_changes_the_losses_only_at_float_rounding(cub_root, tmp_path):
    """What NOT_RUN_DEFINING says of data.eval_batch_size, measured."""
    from conftest import compose_train

    records = [
        train(
            compose_train(
                [*tiny(cub_root), "logger=none", f"data.eval_batch_size={b}"], tmp_path / str(b)
            )
        )
        for b in (1, 7)
    ]
    one, seven = (r["metrics"] for r in records)
    for key in ("val/acc", "test/acc"):
        assert one[key] == seven[key], key
    for key in ("val/loss", "test/loss"):
        assert one[key] == pytest.approx(seven[key], rel=1e-5), key
    files = [(tmp_path / str(b) / "predictions.csv").read_bytes() for b in (1, 7)]
    assert files[0] == files[1]
