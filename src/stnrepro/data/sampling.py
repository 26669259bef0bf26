"""The training order and every augmentation seed, as pure functions of (seed, epoch, item).

Why: a worker process's RNG stream depends on how many workers there are and, with
``persistent_workers``, on how many epochs that process has already served.  A run resumed
from a checkpoint starts fresh workers, so augmentation drawn from worker RNGs differs from
the uninterrupted run's, and so do its metrics.  Here the main process decides everything
random about an epoch: :class:`SeededEpochSampler` yields ``(index, aug_seed)`` pairs and the
dataset draws that item's view from ``aug_seed`` alone (:func:`stnrepro.data.transforms.
sample_view`).  Nothing random then happens in the workers, so their number and lifetime
cannot change a batch.

Conventions:

* The order is torch's :class:`~torch.utils.data.DistributedSampler` order for
  ``(seed, epoch)``: a permutation seeded with ``seed + epoch``, padded to a multiple of the
  number of ranks and dealt out ``rank::num_replicas``.  With one rank it is a plain shuffle.
* An item's ``aug_seed`` is looked up by its dataset index (from a NumPy generator seeded with
  ``[seed, epoch]``), not by its position in the epoch, so it does not depend on the shuffle
  or on which DDP rank reads it: an image is augmented the same on any number of devices.
* The epoch: Lightning's fit loop calls ``set_epoch(epoch)`` (0-based) before each epoch.  On
  a resume it creates the loader's iterator BEFORE that call, and a multi-process loader draws
  its first indices at once, so the data module also passes the epoch being resumed to the
  constructor.  Without Lightning, call ``set_epoch`` yourself; the default epoch is 0.
* DDP: being a ``DistributedSampler``, it is not replaced by Lightning
  (``use_distributed_sampler`` then only shards the evaluation loaders); the data module gives
  it the trainer's world size and rank.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import TYPE_CHECKING, Any

import numpy as np
from torch.utils.data import DistributedSampler

from stnrepro.errors import ConfigError

if TYPE_CHECKING:
    import pytorch_lightning as pl

#: Seeds are drawn below 2**63 so they fit torch.manual_seed and int64 tensors.
_SEED_BOUND = 2**63


def check_seed(key: str, value: Any) -> int:
    """``value`` as a non-negative int (what NumPy's SeedSequence accepts), else ConfigError."""
    try:
        seed = int(value)
    except (TypeError, ValueError):
        seed = -1
    if seed < 0 or seed != value:
        raise ConfigError(f"{key}={value!r}: expected an integer >= 0")
    return seed


def fit_epoch(trainer: pl.Trainer | None) -> int:
    """The epoch ``trainer``'s fit loop is about to run (the one being resumed); 0 without one."""
    if trainer is None:
        return 0
    # Lightning types `current` as the base progress tracker; the fit loop's counts `processed`.
    return trainer.fit_loop.epoch_progress.current.processed  # type: ignore[attr-defined]


def item_seeds(seed: int, epoch: int, num_items: int) -> np.ndarray:
    """int64 ``(num_items,)``: the augmentation seed of each item in epoch ``epoch``."""
    rng = np.random.default_rng([seed, epoch])
    return rng.integers(0, _SEED_BOUND, size=num_items, dtype=np.int64)


class SeededEpochSampler(DistributedSampler):
    """Yields this rank's share of ``dataset``'s indices for one epoch as ``(index, aug_seed)``."""

    def __init__(
        self, dataset: Sized, seed: int, num_replicas: int = 1, rank: int = 0, epoch: int = 0
    ) -> None:
        super().__init__(
            dataset,  # type: ignore[arg-type]  # only its length is read
            num_replicas=num_replicas,
            rank=rank,
            shuffle=True,
            seed=check_seed("data.seed", seed),
            drop_last=False,
        )
        self.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        # torch types the sampler's dataset as a Dataset, which declares no __len__.
        seeds = item_seeds(self.seed, self.epoch, len(self.dataset))  # type: ignore[arg-type]
        return iter([(int(i), int(seeds[i])) for i in super().__iter__()])
