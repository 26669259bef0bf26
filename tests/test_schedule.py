"""LR schedules: stepped per epoch or per optimizer step, and a one-cycle's length."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stnrepro.errors import ConfigError
from stnrepro.run.build import build
from stnrepro.train import train


def digit_overrides(root: Path, schedule: str) -> list[str]:
    return [
        "data=fashion_mnist", f"data.root={root}", "data.val_fraction=0", "data.batch_size=8",
        "model=digits/cnn", f"model/scheduler={schedule}", "model.optimizer.lr=0.05",
        "debug=tiny", "trainer.max_epochs=2", "logger=csv", "test=false",
    ]  # fmt: skip


def test_one_cycle_steps_per_batch_over_the_whole_fit(digits_root, make_cfg):
    cfg = make_cfg(digit_overrides(digits_root, "onecycle"))
    assert train(cfg)["status"] == "finished"
    ckpt = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=False)
    (state,) = ckpt["lr_schedulers"]
    # 40 training images in batches of 8, 2 epochs: 10 steps, all of them scheduled.
    assert state["total_steps"] == 10 and state["last_epoch"] == 10
    group = ckpt["optimizer_states"][0]["param_groups"][0]
    assert group["max_lr"] == pytest.approx(0.05)  # max_lr is the optimizer's lr
    assert group["min_lr"] == pytest.approx(0.05 / 25 / 1e4)


def test_cosine_steps_per_epoch(digits_root, make_cfg):
    cfg = make_cfg(digit_overrides(digits_root, "cosine"))
    assert train(cfg)["status"] == "finished"
    ckpt = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["lr_schedulers"][0]["last_epoch"] == 2


def test_bad_interval_is_one_line_naming_the_key(make_cfg):
    cfg = make_cfg(["model=digits/cnn", "data=fashion_mnist", "model.scheduler_interval=batch"])
    with pytest.raises(
        ConfigError, match=r"^model\.scheduler_interval='batch': expected epoch or step$"
    ):
        build(cfg.model)


def test_one_cycle_keeps_the_localisation_and_classifier_multipliers(digits_root, make_cfg):
    overrides = [
        *digit_overrides(digits_root, "onecycle"),
        "model=digits/st_cnn_aff", "model.loc_lr_mult=0.1", "model.head_lr_mult=2",
    ]  # fmt: skip
    cfg = make_cfg(overrides)
    assert train(cfg)["status"] == "finished"
    ckpt = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=False)
    peaks = {g["name"]: g["max_lr"] for g in ckpt["optimizer_states"][0]["param_groups"]}
    assert peaks == pytest.approx({"parts": 0.05, "classifier": 0.1, "localisation": 0.005})
