"""Random generator state in every checkpoint, so a resumed run draws what the first would have.

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
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch


def _numpy_legacy_state() -> tuple:
    state = np.random.get_state(legacy=True)
    assert isinstance(state, tuple)  # the global generator is MT19937: its legacy state
    return state


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
            "numpy": _numpy_state_to_plain(_numpy_legacy_state()),
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
