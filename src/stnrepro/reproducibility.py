"""Resuming runs exactly: which checkpoint to resume from, and the RNG state that goes with it.

Lightning checkpoints restore weights, optimizer, scheduler and loop counters but not the
random number generators, so a resumed run would draw dropout masks differently from an
uninterrupted one. :class:`RNGStateCallback` stores the Python, NumPy and torch (CPU and
CUDA) generator states in every checkpoint and restores them on resume. The data pipeline
does not use these generators: the training order and augmentation are functions of
``(seed, epoch, image)`` (:mod:`stnrepro.data.sampling`), and each DataLoader draws its
worker seeds from a generator of its own.
"""

from __future__ import annotations

import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from stnrepro.errors import ConfigError


def resolve_ckpt_path(value: str | None, output_dir: Path) -> str | None:
    """``ckpt_path`` -> a checkpoint file or None (fresh start).

    ``last`` resumes from ``<output_dir>/checkpoints/last.ckpt`` when it exists, so rerunning
    a command in the same output directory (or a requeued SLURM job) continues the run.
    A checkpoint that is not a whole ``torch.save`` file is refused before anything starts.
    """
    if value is None or str(value).lower() in ("", "none", "null"):
        return None
    if value == "last":
        last = output_dir / "checkpoints" / "last.ckpt"
        if not last.is_file():
            return None
        path = last
    else:
        path = Path(value)
        if not path.is_file():
            raise ConfigError(
                f"ckpt_path={value}: file not found (expected a Lightning checkpoint file, "
                "'last' or null)"
            )
    _check_readable(path)
    return str(path)


def _check_readable(path: Path) -> None:
    """Cheap check that ``path`` is a whole checkpoint, not one cut short (a full disk, a kill).

    ``torch.save`` writes zip archives whose central directory is at the very end, so
    opening one reads only that directory and fails on a truncated file.
    """
    try:
        with zipfile.ZipFile(path):
            pass
    except (zipfile.BadZipFile, OSError) as exc:
        raise ConfigError(
            f"{path}: not a readable checkpoint ({exc}), e.g. cut short by a full disk; "
            "delete it and rerun (the run starts over), or pass ckpt_path=null"
        ) from None


def _numpy_state_to_plain(state: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = state
    return {
        "name": str(name),
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def _numpy_state_from_plain(state: dict[str, Any]) -> tuple:
    keys = state["keys"].numpy().astype(np.uint32)
    return (state["name"], keys, state["pos"], state["has_gauss"], state["cached_gaussian"])


class RNGStateCallback(pl.Callback):
    """Saves and restores the global RNG states with each checkpoint."""

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "python": random.getstate(),
            # Plain types only: Lightning loads checkpoints with torch.load(weights_only=True).
            "numpy": _numpy_state_to_plain(np.random.get_state()),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        random.setstate(state_dict["python"])
        np.random.set_state(_numpy_state_from_plain(state_dict["numpy"]))
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
