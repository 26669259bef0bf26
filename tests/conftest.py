"""Shared test helpers: compose the real Hydra configs the way the CLI does."""

from __future__ import annotations

import gzip
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from stnrepro.config import compose_config
from stnrepro.data.digits import IDX_FILES

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


@dataclass(frozen=True)
class CliResult:
    """What a command left: its exit status and what it wrote (as ``CompletedProcess``)."""

    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def stn_train(capsys, monkeypatch):
    """``stn_train([args])`` runs ``stn-train args`` in this process: Hydra's own argument
    parsing and config composition, the entry point's error handling and exit status.

    Seconds faster than a subprocess (no fresh torch/Lightning import), for the tests whose
    point is a refusal, not the process: what only a process shows (signals, an uncaught
    exception's traceback, the console script) stays in subprocess tests. Hydra's logging
    set-up is undone afterwards, so later tests do not log into this test's captured streams.
    An exception other than SystemExit propagates, failing the test with its traceback.
    """
    from stnrepro.train import main

    def _run(args: list[str]) -> CliResult:
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["stn-train", *args])
        code = 0
        try:
            main()
        except SystemExit as exc:  # as the interpreter: None is 0, a message is 1
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        finally:
            for handler in root.handlers[:]:
                if handler not in handlers:
                    root.removeHandler(handler)
                    handler.close()
            root.setLevel(level)
        out = capsys.readouterr()
        return CliResult(code, out.out, out.err)

    return _run


@pytest.fixture
def make_cfg(tmp_path):
    """``make_cfg([overrides])`` -> config whose outputs go under tmp_path/run."""

    def _make(overrides: list[str], data_dir: Path | None = None) -> DictConfig:
        return compose_train(overrides, tmp_path / "run", data_dir)

    return _make


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    head = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return head + array.astype(np.uint8).tobytes()


def write_digits(root: Path, n_train: int = 40, n_test: int = 20, gz: bool = True) -> Path:
    """Tiny idx files: a bright square at a class-dependent place on a 28x28 black image."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = np.arange(n) % 10
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        for i, c in enumerate(labels):
            r, col = 4 + 2 * (c % 5), 6 + 8 * (c // 5)
            images[i, r : r + 8, col : col + 6] = 200 + rng.integers(0, 55)
        for kind, arr, magic in (("images", images, 2051), ("labels", labels, 2049)):
            data = idx_bytes(arr, magic)
            name = IDX_FILES[(split, kind)]
            if gz:
                (root / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (root / name).write_bytes(data)
    return root


@pytest.fixture
def digits_root(tmp_path) -> Path:
    """A folder of tiny MNIST-format idx files (40 training, 20 test images)."""
    return write_digits(tmp_path / "digits")
