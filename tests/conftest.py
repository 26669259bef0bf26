"""Shared test helpers: compose the real Hydra configs the way the CLI does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from stnrepro.config import compose_config

# Tests never talk to W&B servers and never prompt.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_DISABLE_GIT", "true")


@pytest.fixture(autouse=True)
def _own_wandb_service(monkeypatch):
    """Subprocesses start their own W&B service, as a user's commands do.

    In-process W&B runs (earlier tests) leave WANDB_SERVICE in the environment; a child
    inheriting it registers its runs with this process's service, which outlives a killed
    child and keeps its run id "in use" until pytest exits.
    """
    monkeypatch.delenv("WANDB_SERVICE", raising=False)


def compose_train(
    overrides: list[str], output_dir: Path, data_dir: Path | None = None
) -> DictConfig:
    """The composed ``train`` config with the hydra node set, as inside ``@hydra.main``."""
    cfg = compose_config(overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # as in @hydra.main: the job config has no hydra node
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir / "logs")
        if data_dir is not None:
            cfg.paths.data_dir = str(data_dir)
    return cfg


@pytest.fixture
def make_cfg(tmp_path):
    """``make_cfg([overrides])`` -> config whose outputs go under tmp_path/run."""

    def _make(overrides: list[str], data_dir: Path | None = None) -> DictConfig:
        return compose_train(overrides, tmp_path / "run", data_dir)

    return _make
