"""CUB-200-2011: the Dataset and the Lightning DataModule (index files: ``cub_index``).

``CUBDataModule.validate`` loads and checks the index files and every image header up front
(:mod:`stnrepro.data.cub_index`), before any model is trained; decoding errors are found
lazily, when a worker decodes the image.

Transforms (see :mod:`stnrepro.data.transforms` for the coordinate conventions):

* eval: the WHOLE image is resized to ``S x S`` (aspect ratio not preserved) so the whole bird
  is always in view; localisation is then measured on the full photo.
* train (``augment=True``): a mild random-resized-crop (``crop_scale``, ratio 3/4..4/3) and a
  p=0.5 horizontal flip, with the bird box and parts mapped through the same view.  The view
  is a pure function of a per-item seed that the training sampler sends with the index
  (:mod:`stnrepro.data.sampling`), so it is the same for any number of loader workers and
  after a resume.
"""

from __future__ import annotations

import hashlib
import math
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.seed import pl_worker_init_function
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, Sampler

from stnrepro.data.cub_index import INDEX_FILES, CUBIndex
from stnrepro.data.sampling import SeededEpochSampler, check_seed, fit_epoch
from stnrepro.data.transforms import (
    DEFAULT_RATIO,
    View,
    full_view,
    load_view,
    map_box,
    map_parts,
    sample_view,
    to_normalised_tensor,
)
from stnrepro.errors import ConfigError, DataError
from stnrepro.utils.config_values import check_value

__all__ = [
    "CUBDataModule",
    "CUBDataset",
    "stratified_val_split",
]

# --------------------------------------------------------------------------- workers

#: Signals a cluster sends to every process of a job step: SLURM's time-limit warning
#: (``--signal=USR2@N``, what submitit asks for) and Lightning's requeue signal (USR1).
JOB_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


def ignore_job_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: loader workers ignore the job's signals, then seed as
    Lightning would.

    Forked workers inherit the main process's handlers (submitit's checkpoint-and-requeue on
    USR2), and SLURM signals every process of the step: without this, several processes
    checkpointed and requeued at once, a worker died, and the job was neither requeued nor
    recorded as such. Only the main process must handle them. A loader with its own
    ``worker_init_fn`` gets none from Lightning, so Lightning's seeding (when
    ``seed_everything(workers=True)`` asked for it) is called from here.
    """
    for signum in JOB_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        pl_worker_init_function(worker_id)


# --------------------------------------------------------------------------- dataset


class CUBDataset(Dataset):
    """Rows ``rows`` of a :class:`CUBIndex` as dicts of tensors (boxes/parts for eval only).

    Keys are a position ``i`` or a pair ``(i, aug_seed)`` as yielded by
    :class:`~stnrepro.data.sampling.SeededEpochSampler`.  A dataset with random views needs
    the pair (its view is drawn from ``aug_seed`` alone); the others ignore the seed.
    """

    def __init__(
        self,
        index: CUBIndex,
        rows: np.ndarray,
        image_size: int,
        train: bool,
        augment: bool = True,
        crop_scale: tuple[float, float] = (0.6, 1.0),
        hflip: bool = True,
    ) -> None:
        self.index = index
        self.rows = np.asarray(rows, dtype=np.int64)
        self.image_size = int(image_size)
        self.train = bool(train)
        self.augment = bool(augment)
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.hflip = bool(hflip)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def random_views(self) -> bool:
        """True when items are randomly cropped/flipped (training with augmentation)."""
        return self.train and self.augment

    def _view_fn(self, aug_seed: int | None) -> Callable[[int, int], View]:
        if not self.random_views:
            return full_view
        if aug_seed is None:
            raise TypeError(
                "CUBDataset with random views: expected an (index, aug_seed) key from "
                "SeededEpochSampler, got a bare index (its view would not be reproducible)"
            )
        scale, hflip = self.crop_scale, self.hflip
        return lambda w, h: sample_view(w, h, aug_seed, scale, DEFAULT_RATIO, hflip)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        if np.ndim(key) == 0:
            i, aug_seed = cast(int, key), None
        else:  # SeededEpochSampler's (index, aug_seed)
            pair = cast("tuple[int, int]", key)
            i, aug_seed = int(pair[0]), int(pair[1])
        row = int(self.rows[i])
        index = self.index
        img, view = load_view(index.image_path(row), self.image_size, self._view_fn(aug_seed))
        bbox = map_box(index.bboxes[row] if index.bboxes is not None else None, view)
        parts = map_parts(index.parts[row] if index.parts is not None else None, view)
        return {
            "image": to_normalised_tensor(img),
            "label": torch.tensor(int(index.labels[row]), dtype=torch.int64),
            "bbox": torch.from_numpy(bbox),
            "parts": torch.from_numpy(parts),
            "image_id": torch.tensor(int(index.image_ids[row]), dtype=torch.int64),
        }


def stratified_val_split(
    labels: np.ndarray, train_rows: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Carve ``fraction`` of each class's train rows into a validation set.

    Per class: ``round(fraction * n)`` rows, at least 1 when ``n >= 2`` and never all of them.
    Deterministic for a given seed and index (classes are visited in label order).
    Returns sorted ``(train_rows, val_rows)``.
    """
    train_rows = np.sort(np.asarray(train_rows, dtype=np.int64))
    if fraction <= 0:
        return train_rows, np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    row_labels = labels[train_rows]
    val: list[np.ndarray] = []
    for c in np.unique(row_labels):
        members = train_rows[row_labels == c]
        n = len(members)
        if n < 2:
            continue
        k = min(max(1, math.floor(fraction * n + 0.5)), n - 1)
        val.append(rng.permutation(members)[:k])
    val_rows = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    return np.setdiff1d(train_rows, val_rows), val_rows


# --------------------------------------------------------------------------- datamodule


class CUBDataModule(pl.LightningDataModule):
    """Official CUB train/test split plus a stratified validation split carved from train.

    ``seed`` (the run's ``seed`` via ``data.seed: ${seed}``) fixes the training order and every
    augmentation per epoch (:class:`~stnrepro.data.sampling.SeededEpochSampler`); ``split_seed``
    fixes only the validation split.  Evaluation loaders are in index order, without random
    views.
    """

    def __init__(
        self,
        root: str,
        name: str = "cub",
        num_classes: int = 200,
        image_size: int = 224,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        augment: bool = True,
        crop_scale: tuple[float, float] = (0.6, 1.0),
        hflip: bool = True,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for key, value in (
            ("val_fraction", val_fraction), ("num_classes", num_classes),
            ("image_size", image_size), ("batch_size", batch_size),
            ("eval_batch_size", eval_batch_size), ("num_workers", num_workers),
        ):  # fmt: skip
            check_value(f"data.{key}", value)
        lo, hi = (float(v) for v in crop_scale)
        if not 0 < lo <= hi <= 1:
            raise ConfigError(
                f"data.crop_scale=[{lo}, {hi}]: expected 0 < min <= max <= 1 (area fractions)"
            )
        self.root = str(root)
        self.name = name
        self.num_classes = int(num_classes)
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.val_fraction = float(val_fraction)
        self.split_seed = int(split_seed)
        self.augment = bool(augment)
        self.crop_scale = (lo, hi)
        self.hflip = bool(hflip)
        self.pin_memory = bool(pin_memory)
        self.persistent_workers = bool(persistent_workers)
        self.seed = check_seed("data.seed", seed)
        self._index: CUBIndex | None = None
        self.train_set: CUBDataset | None = None
        self.val_set: CUBDataset | None = None
        self.test_set: CUBDataset | None = None

    # -- validation -------------------------------------------------------------------------

    def validate(self) -> CUBIndex:
        """Check the index files and every image's header now (before training); cached.

        Refuses, each in one line: a broken index file, a split without training or test
        images, missing or unreadable images (first few named, with the count) and bird boxes
        outside their image.  About a second for CUB's 11,788 images from a warm cache.
        """
        if self._index is not None:
            return self._index
        index = CUBIndex.load(self.root, key="data.root", check_images=True)
        n_train = int(index.is_train.sum())
        if n_train in (0, index.num_images):  # fit or test would run on nothing
            flag, which = (0, "training") if n_train == 0 else (1, "test")
            raise DataError(
                f"{index.root / 'train_test_split.txt'}: no {which} images (all "
                f"{index.num_images} have is_training_image {flag}); expected both training (1) "
                "and test (0) images"
            )
        if index.num_classes != self.num_classes:
            raise ConfigError(
                f"data.num_classes={self.num_classes} but {index.root / 'classes.txt'} "
                f"lists {index.num_classes} classes"
            )
        self._index = index
        return index

    @property
    def index(self) -> CUBIndex:
        return self.validate()

    @property
    def has_val(self) -> bool:
        return self.val_fraction > 0

    @property
    def num_parts(self) -> int:
        return self.validate().num_parts

    @property
    def class_names(self) -> list[str]:
        return self.validate().class_names

    # -- datasets ---------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        """Build all three datasets (cheap: no image is opened); idempotent."""
        index = self.validate()
        if self.train_set is not None:
            return
        train_rows = np.flatnonzero(index.is_train)
        test_rows = np.flatnonzero(~index.is_train)
        train_rows, val_rows = stratified_val_split(
            index.labels, train_rows, self.val_fraction, self.split_seed
        )
        s = self.image_size
        self.train_set = CUBDataset(
            index,
            train_rows,
            s,
            train=True,
            augment=self.augment,
            crop_scale=self.crop_scale,
            hflip=self.hflip,
        )
        self.val_set = CUBDataset(index, val_rows, s, train=False) if self.has_val else None
        self.test_set = CUBDataset(index, test_rows, s, train=False)

    def _train_sampler(self, dataset: CUBDataset) -> SeededEpochSampler:
        """This rank's sampler, at the epoch the trainer is about to run (see sampling.py)."""
        trainer = self.trainer  # set by Lightning while it runs; None when called by hand
        if trainer is None:
            return SeededEpochSampler(dataset, self.seed)
        return SeededEpochSampler(
            dataset,
            self.seed,
            num_replicas=trainer.world_size,
            rank=trainer.global_rank,
            epoch=fit_epoch(trainer),
        )

    def _eval_sampler(self, dataset: CUBDataset) -> Sampler | None:
        """Under DDP, this rank's share of the images in order, with no image repeated.

        Lightning's own DistributedSampler repeats up to ``world_size - 1`` images so that
        every rank gets as many; for evaluation that would count them twice in test/acc.
        """
        trainer = self.trainer
        if trainer is None or trainer.world_size <= 1:
            return None
        return UnrepeatedDistributedSampler(
            dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
        )

    def _loader(self, dataset: CUBDataset, batch_size: int, train: bool) -> DataLoader:
        """Training: shuffled ``(index, aug_seed)`` pairs (Lightning calls the sampler's
        ``set_epoch``; under DDP each rank's sampler takes its share).  Evaluation: plain
        indices in order (under DDP each rank's share, none repeated).

        Each loader has its own torch generator: a DataLoader draws its workers' base seed
        from it on every new iterator, which with the global generator would shift the
        model's random stream (dropout) by how often workers are (re)started, i.e. by
        ``persistent_workers`` and by a resume.
        """
        workers = self.num_workers
        sampler = self._train_sampler(dataset) if train else self._eval_sampler(dataset)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            generator=torch.Generator().manual_seed(self.seed),
            drop_last=False,
            num_workers=workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers and workers > 0,
            worker_init_fn=ignore_job_signals if workers > 0 else None,
        )

    def _datasets(self) -> tuple[CUBDataset, CUBDataset | None, CUBDataset]:
        if self.train_set is None:
            self.setup()
        assert self.train_set is not None and self.test_set is not None
        return self.train_set, self.val_set, self.test_set

    def train_dataloader(self) -> DataLoader:
        return self._loader(self._datasets()[0], self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader | list:
        val = self._datasets()[1]
        if val is None:
            return []
        return self._loader(val, self.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._datasets()[2], self.eval_batch_size, train=False)

    # -- provenance -------------------------------------------------------------------------

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the data (the run record's ``provenance.dataset``).

        ``index_sha256`` hashes the index files in ``INDEX_FILES`` order (each as its name,
        a NUL, its bytes), so a changed split, label or box changes it; the images are not
        read (too slow for 12k files), they are named by images.txt.
        """
        root = Path(self.root).expanduser().absolute()
        digest = hashlib.sha256()
        hashed = []
        for name in INDEX_FILES:
            path = root / name
            if path.is_file():
                digest.update(name.encode() + b"\0" + path.read_bytes())
                hashed.append(name)
        return {
            "kind": "cub",
            "name": self.name,
            "index_files": hashed,
            "index_sha256": digest.hexdigest(),
        }
