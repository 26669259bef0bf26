"""Where the Hydra configs live, and composing them outside ``@hydra.main``.

The configs are package data (``stnrepro/conf``; the checkout's top-level ``conf/`` is a
link to it), found through Hydra's package search path ``pkg://stnrepro.conf``, so an
installed wheel works from any folder. Users add their own config folder with
``--config-dir DIR`` (searched before the packaged one) or ``hydra.searchpath=[file://DIR]``.
Tools that need the training config (the benchmark, the attention tool, the tests) compose
it here, so what they build is what ``stn-train`` builds.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from hydra import compose, initialize_config_module
from omegaconf import DictConfig

CONFIG_MODULE = "stnrepro.conf"
CONFIG_PATH = f"pkg://{CONFIG_MODULE}"
CONFIG_NAME = "train"


def config_dir() -> Path:
    """The packaged config folder on disk (for listing experiments and the like)."""
    return Path(str(resources.files(CONFIG_MODULE)))


def compose_config(
    overrides: Sequence[str] = (), return_hydra_config: bool = False
) -> DictConfig:
    """The ``train`` config composed with ``overrides``, as ``stn-train`` would compose it."""
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        return compose(CONFIG_NAME, overrides=list(overrides), return_hydra_config=return_hydra_config)
