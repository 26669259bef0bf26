"""What defines a run: its resolved config minus the keys that cannot change its results.

A run's *definition* is the resolved config as ``{dotted.key: value}`` without
:data:`NOT_RUN_DEFINING` (where outputs and logs go, how often to log or draw, how to
resume, how many loader processes decode images). It is stored in the run folder
(``run_config.json``), in the record (``config``) and in every checkpoint, and compared
wherever two things must be the same run: a folder and the command run in it
(:mod:`stnrepro.run.folder`), a checkpoint and the run resuming from it, the runs of one
table cell (:mod:`stnrepro.results.agreement`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf

from stnrepro.errors import ConfigError
from stnrepro.utils.atomic import write_json_atomic

DEFINITION_NAME = "run_config.json"
# Where a checkpoint keeps the definition of the run that wrote it.
CHECKPOINT_KEY = "stnrepro_run_definition"

# Dotted keys (a key or the start of one) that cannot change a run's results, with why.
# docs/runs.md lists them; everything else in the resolved config defines the run.
NOT_RUN_DEFINING: dict[str, str] = {
    "paths": "where data and outputs live, not what is computed",
    "logger": "where metrics are sent (W&B, CSV or none)",
    "callbacks": "checkpoint files, LR logging and attention figures (drawn on a forked RNG); "
    "except which checkpoint counts as best (below), which test_ckpt=best tests",
    "ckpt_path": "how to resume, not what is trained",
    "tags": "labels for the dashboard",
    "task_name": "the name of the output folder",
    "trainer.default_root_dir": "the output folder",
    "trainer.enable_progress_bar": "console output",
    "trainer.log_every_n_steps": "how often training metrics are logged",
    "data.root": "where the dataset is read from (its fingerprint is in the provenance)",
    "data.cache_dir": "where generated data is kept",
    "data.gen_workers": "processes that generate synthetic data (byte-identical for any count)",
    "data.num_workers": "loader processes (augmentation is seeded per image, not per worker)",
    "data.pin_memory": "host-to-GPU copy mode",
    "data.persistent_workers": "whether loader processes are kept between epochs",
    "data.eval_batch_size": "evaluation batch (eval mode has no batch statistics); float kernels "
    "differ by batch size, so val/test losses can differ in the 7th significant digit, and an "
    "accuracy only where two classes' scores tie to float32 rounding",
}


# Keys under a non-defining prefix that still define the run.
DEFINING_AFTER_ALL = ("callbacks.best_checkpoint.monitor", "callbacks.best_checkpoint.mode")

# Classes of ours that moved, old ``_target_`` -> new: definitions written before the move
# (run folders, records, W&B configs) name the old path, and still define the same run.
MOVED_TARGETS: dict[str, str] = {
    "stnrepro.module.STCNNModule": "stnrepro.lightning.module.STCNNModule",
    "stnrepro.callbacks.AttentionFigureCallback": (
        "stnrepro.lightning.callbacks.AttentionFigureCallback"
    ),
    "stnrepro.loggers.CSVLogger": "stnrepro.lightning.csv_logger.CSVLogger",
}


# Run-defining keys added after run folders were first written, with the value that means
# what happened before the key existed. A definition without one of them is read as having
# that value, so a folder or record written before the key was added is still its run.
ADDED_KEYS: dict[str, Any] = {
    "init_from": None,  # no weights from elsewhere: training started from the model's init
    # The digit models' keys: their absence is the bird ST-CNN as it always was.
    "model.localisation": "shared",
    "model.warp_bound": None,
    "model.tps_grid": 4,
    "model.trunk_widths": None,
    "model.scheduler_interval": "epoch",  # schedulers stepped once per epoch
}


def _not_defining(key: str) -> bool:
    if key in DEFINING_AFTER_ALL:
        return False
    return any(key == k or key.startswith(k + ".") for k in NOT_RUN_DEFINING)


def _flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from _flatten(v, f"{prefix}{k}.")
    else:
        yield prefix.rstrip("."), value


def run_definition(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as ``{dotted.key: value}``, minus :data:`NOT_RUN_DEFINING`."""
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    return definition_of(cast("dict[str, Any]", container))  # a DictConfig's: str keys


def definition_of(config: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`run_definition` of an already resolved, nested config (e.g. W&B's run config)."""
    flat = dict(_flatten(config))
    return current_names({k: v for k, v in sorted(flat.items()) if not _not_defining(k)})


def current_names(definition: Mapping[str, Any]) -> dict[str, Any]:
    """``definition`` in today's terms: the ``_target_`` values of moved classes
    (:data:`MOVED_TARGETS`) replaced by their current paths, and keys added since
    (:data:`ADDED_KEYS`) filled in with what they mean when absent, so a definition written
    before a move or a new key still compares equal to the same run defined now. An empty
    definition (none recorded) stays empty."""
    if not definition:
        return {}
    current = {
        k: MOVED_TARGETS.get(v, v) if k.endswith("_target_") and isinstance(v, str) else v
        for k, v in definition.items()
    }
    for key, value in ADDED_KEYS.items():
        current.setdefault(key, value)
    return dict(sorted(current.items()))


def differing_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k, "<unset>") != new.get(k, "<unset>"))


def describe_differences(old: Mapping[str, Any], new: Mapping[str, Any], keys: list[str]) -> str:
    shown = [f"{k} {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}" for k in keys[:6]]
    more = f" (+{len(keys) - 6} more)" if len(keys) > 6 else ""
    return ", ".join(shown) + more


def load_definition(output_dir: Path) -> dict[str, Any] | None:
    path = output_dir / DEFINITION_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(
            f"{path}: unreadable run definition ({exc}); this folder's run cannot be checked: "
            "use a new output folder"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object of config keys; use a new output folder")
    return current_names(data)


def save_definition(output_dir: Path, definition: Mapping[str, Any]) -> None:
    write_json_atomic(output_dir / DEFINITION_NAME, dict(definition))
