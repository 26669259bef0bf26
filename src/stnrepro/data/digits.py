"""MNIST-format digits (MNIST, Fashion-MNIST) with the paper's Table 1 distortions.

Files: the four idx files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each optionally ``.gz``) in
``data.root``. :func:`read_idx` refuses a missing file, a bad magic number, a truncated file
and image/label counts that disagree, in one line naming the file, before training.

Distortions ([recalled] from the paper's appendix, not verified):

- ``R``: rotation uniform in +-90 deg.
- ``RTS``: rotation +-45 deg, scale 0.7-1.2, the 28x28 digit placed at a uniformly random
  position of a larger canvas (its side is ``data.image_size``, 42 in the paper, set by the
  ``data/distortion=RTS`` config; the centre moves by up to half the extra side, +-7 px).
- ``P``: scale 0.75, then each of the four corners moved by Gaussian noise, sigma = 5 px.
- ``E``: elastic ([open], our choice, Simard et al. 2003's setting): a per-pixel displacement
  drawn uniform in [-1, 1], smoothed by a Gaussian of sigma = 4 px, times alpha = 34 px.
- ``none``: the image as it is.

Every distortion is ONE sampling grid per batch (:func:`distort`, one ``grid_sample`` call),
bilinear, zero outside the digit (the background of both datasets is 0). Randomness: each
image's parameters come from its own seed alone. Training images get the seed the
:class:`~stnrepro.data.sampling.SeededEpochSampler` sends, a function of (seed, epoch,
image), so they are distorted afresh every epoch and exactly again after a resume; the
validation and test images are distorted once at setup from ``data.test_seed`` (not the run
seed), so every model and seed of a table sees the same distorted test images.
"""

from __future__ import annotations

import gzip
import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from stnrepro.data.cub import stratified_val_split
from stnrepro.data.sampling import SeededEpochSampler, check_seed, fit_epoch
from stnrepro.errors import ConfigError, DataError
from stnrepro.utils.config_values import check_value
from stnrepro.utils.warps import homography_from_points, homography_grid

__all__ = [
    "DISTORTIONS",
    "IDX_FILES",
    "DigitsDataModule",
    "check_canvas",
    "distort",
    "read_idx",
]

#: The four idx files, as (split, kind) -> base name (``.gz`` optional).
IDX_FILES: dict[tuple[str, str], str] = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
DISTORTIONS: tuple[str, ...] = ("none", "R", "RTS", "P", "E")
#: Where Debian's ``dataset-fashion-mnist`` package puts the files.
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
_MAGIC = {"images": 2051, "labels": 2049}  # 0x00000803 (ubyte, 3 dims), 0x00000801
# Normalisation of pixel values in [0, 1]: (x - 0.5) / 0.5, background -1.
_MEAN, _STD = 0.5, 0.5
ELASTIC_ALPHA_PX = 34.0
ELASTIC_SIGMA_PX = 4.0


# --------------------------------------------------------------------------- idx files


def find_idx(root: Path, name: str) -> Path:
    """``root/name.gz`` or ``root/name``; DataError naming both when neither exists."""
    for candidate in (root / f"{name}.gz", root / name):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"{root / name}.gz: missing (expected it or {root / name}; "
        "torchvision.datasets.MNIST or FashionMNIST(DIR, download=True) writes them to "
        "DIR/<class name>/raw)"
    )


def read_idx(path: Path, kind: str) -> np.ndarray:
    """An idx file as uint8: images (N, H, W) or labels (N,); one-line DataError otherwise."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read ({exc}); expected an idx file") from exc
    dims = 3 if kind == "images" else 1
    header = 4 + 4 * dims
    if len(raw) < header:
        raise DataError(f"{path}: truncated header ({len(raw)} bytes); expected an idx file")
    magic = int.from_bytes(raw[:4], "big")
    if magic != _MAGIC[kind]:
        raise DataError(
            f"{path}: bad magic number {magic:#010x}; expected {_MAGIC[kind]:#010x} "
            f"(idx {kind}: unsigned bytes, {dims} dimension{'s' if dims > 1 else ''})"
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * k : 8 + 4 * k], "big") for k in range(dims))
    size = math.prod(shape)
    if len(raw) - header != size:
        raise DataError(
            f"{path}: {len(raw) - header} data bytes; expected {size} for shape {shape} "
            "(truncated or corrupt file)"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def load_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    """Images (N, H, W) and labels (N,) of ``split``; refuses counts that disagree."""
    img_path = find_idx(root, IDX_FILES[(split, "images")])
    lab_path = find_idx(root, IDX_FILES[(split, "labels")])
    images, labels = read_idx(img_path, "images"), read_idx(lab_path, "labels")
    if len(images) != len(labels):
        raise DataError(
            f"{lab_path}: {len(labels)} labels but {img_path.name} has {len(images)} images; "
            "expected as many labels as images"
        )
    return images, labels, [img_path, lab_path]


# --------------------------------------------------------------------------- distortions


def check_canvas(distortion: str, canvas: int, side: int) -> None:
    """The output side ``canvas`` of ``distortion`` for ``side`` px images: RTS places the digit
    on a larger canvas, every other distortion keeps the image's side (one line if not)."""
    if distortion == "RTS" and canvas <= side:
        raise ConfigError(
            f"data.image_size={canvas}: distortion RTS places the {side} px images on a larger "
            "canvas; expected more than {side} (data/distortion=RTS sets the paper's 42)".replace(
                "{side}", str(side)
            )
        )
    if distortion != "RTS" and canvas != side:
        raise ConfigError(
            f"data.image_size={canvas}: distortion {distortion} keeps the {side} px images' "
            f"size; expected {side} (choose it with data/distortion={distortion})"
        )


def _rotation(angle: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    radius = math.ceil(3 * sigma)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(
        F.pad(x, (radius, radius, 0, 0), mode="reflect"),
        k.view(1, 1, 1, -1).repeat(c, 1, 1, 1),
        groups=c,
    )
    return F.conv2d(
        F.pad(x, (0, 0, radius, radius), mode="reflect"),
        k.view(1, 1, -1, 1).repeat(c, 1, 1, 1),
        groups=c,
    )


def distortion_grid(
    distortion: str, seeds: np.ndarray, size: int, canvas: int | None = None
) -> Tensor:
    """The sampling grids (B, S, S, 2) of ``distortion`` for images of side ``size``.

    One grid per image from its seed alone (so a batch's composition cannot change an
    image's distortion); the output side S is ``canvas`` (:func:`check_canvas`; None = the
    image's side). Units: 1 px of the input is ``2 / size`` in normalised coordinates.
    """
    if distortion not in DISTORTIONS:
        raise ConfigError(
            f"data.distortion={distortion!r}: expected one of {', '.join(DISTORTIONS)}"
        )
    out = size if canvas is None else int(canvas)
    check_canvas(distortion, out, size)
    b = len(seeds)
    shift = (out - size) / 2.0  # RTS: the digit's centre moves by up to this many px
    rngs = [np.random.default_rng(int(s)) for s in seeds]
    half_in, half_out = size / 2.0, out / 2.0
    eye = np.broadcast_to(np.eye(3), (b, 3, 3)).copy()
    if distortion in ("none", "E"):
        h = eye
    elif distortion == "R":
        angle = np.radians([r.uniform(-90, 90) for r in rngs])
        h = eye
        h[:, :2, :2] = _rotation(-angle)  # inverse rotation: output -> input
    elif distortion == "RTS":
        params = np.array(
            [
                [
                    r.uniform(-45, 45),
                    r.uniform(0.7, 1.2),
                    r.uniform(-shift, shift),
                    r.uniform(-shift, shift),
                ]
                for r in rngs
            ]
        )
        angle, scale, centre = np.radians(params[:, 0]), params[:, 1], params[:, 2:]
        # output px p_o (from canvas centre) = c + s R p_i  =>  p_i = R^-1 (p_o - c) / s
        inv = _rotation(-angle) / scale[:, None, None]
        lin = inv * (half_out / half_in)  # normalised output -> normalised input
        h = eye
        h[:, :2, :2] = lin
        h[:, :2, 2] = -np.einsum("bij,bj->bi", inv, centre) / half_in
    else:  # P
        corners = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
        noise = np.stack([r.normal(0.0, 5.0, size=(4, 2)) for r in rngs]) / half_in
        moved = 0.75 * corners[None] + noise  # where each input corner lands (output frame)
        hh = homography_from_points(
            torch.from_numpy(moved), torch.from_numpy(np.broadcast_to(corners, moved.shape).copy())
        )
        h = hh.numpy()
    grid = homography_grid(torch.from_numpy(h), out).float()
    if distortion == "E":
        noise = np.stack([r.uniform(-1, 1, size=(2, size, size)) for r in rngs]).astype(np.float32)
        field = _gaussian_blur(torch.from_numpy(noise), ELASTIC_SIGMA_PX) * ELASTIC_ALPHA_PX
        grid = grid + field.permute(0, 2, 3, 1) * (2.0 / size)
    return grid


def distort(
    images: Tensor, distortion: str, seeds: np.ndarray, canvas: int | None = None
) -> Tensor:
    """uint8 or [0, 1] images (B, H, W) -> distorted float (B, 1, S, S) in [0, 1], one call;
    S = ``canvas`` (None = the image's side; RTS needs a larger one)."""
    x = images.float()
    if images.dtype == torch.uint8:
        x = x / 255.0
    x = x.unsqueeze(1)
    if distortion == "none":
        return x
    grid = distortion_grid(distortion, np.asarray(seeds), x.shape[-1], canvas)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def fixed_seeds(seed: int, salt: int, count: int) -> np.ndarray:
    """Per-image seeds of a fixed (evaluation) distortion: a function of (seed, salt, image)."""
    return np.random.default_rng([seed, salt]).integers(0, 2**63, size=count, dtype=np.int64)


# --------------------------------------------------------------------------- datasets


class DistortedDigits(Dataset):
    """Training digits distorted per item seed, in batches (``__getitems__``).

    Keys are ``(index, aug_seed)`` pairs from :class:`SeededEpochSampler`; a bare index gets
    the undistorted ``none``-free fixed seed 0 (for figures only).
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        rows: np.ndarray,
        distortion: str,
        canvas: int | None = None,
    ) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(images[rows]))
        self.labels = torch.from_numpy(labels[rows].astype(np.int64))
        self.rows = np.asarray(rows, dtype=np.int64)
        self.distortion = distortion
        self.canvas = canvas

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, keys: list[Any]) -> list[dict[str, Tensor]]:
        pairs = [(k, 0) if np.ndim(k) == 0 else (int(k[0]), int(k[1])) for k in keys]
        idx = torch.tensor([p[0] for p in pairs], dtype=torch.int64)
        seeds = np.array([p[1] for p in pairs], dtype=np.int64)
        images = distort(self.images[idx], self.distortion, seeds, self.canvas)
        images = (images - _MEAN) / _STD
        labels = self.labels[idx]
        ids = torch.from_numpy(self.rows[idx.numpy()])
        return [
            {"image": images[j], "label": labels[j], "image_id": ids[j]} for j in range(len(pairs))
        ]

    def __getitem__(self, key: Any) -> dict[str, Tensor]:
        return self.__getitems__([key])[0]


class FixedDigits(Dataset):
    """Evaluation digits distorted once (already normalised tensors)."""

    def __init__(self, images: Tensor, labels: Tensor, image_ids: Tensor) -> None:
        self.images, self.labels, self.image_ids = images, labels, image_ids

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"image": self.images[i], "label": self.labels[i], "image_id": self.image_ids[i]}


def fixed_distorted(
    images: np.ndarray,
    labels: np.ndarray,
    rows: np.ndarray,
    distortion: str,
    seeds: np.ndarray,
    canvas: int | None = None,
) -> FixedDigits:
    """Distort ``rows`` once, in batches of 1,024 (one grid_sample per batch)."""
    side = images.shape[-1] if canvas is None else int(canvas)
    out = [torch.zeros(0, 1, side, side)]
    for start in range(0, len(rows), 1024):
        chunk = rows[start : start + 1024]
        out.append(distort(torch.from_numpy(images[chunk]), distortion, seeds[chunk], canvas))
    return FixedDigits(
        (torch.cat(out) - _MEAN) / _STD,
        torch.from_numpy(labels[rows].astype(np.int64)),
        torch.from_numpy(np.asarray(rows, dtype=np.int64)),
    )


# --------------------------------------------------------------------------- datamodule


def default_root(name: str) -> str:
    """Debian's Fashion-MNIST folder when it exists (for fashion_mnist), else data/<name>."""
    if name == "fashion_mnist" and Path(DEBIAN_FASHION_MNIST).is_dir():
        return DEBIAN_FASHION_MNIST
    return f"data/{name}"


class DigitsDataModule(pl.LightningDataModule):
    """MNIST-format train/test split, a stratified validation split carved from train.

    ``image_size`` is the distortion's output side (:func:`check_canvas`): the image's own
    side, or for RTS the larger canvas; the ``data/distortion`` configs set both together.
    Images are 1-channel, normalised ``(x - 0.5) / 0.5``. ``test_seed`` fixes the validation
    and test distortions; ``seed`` (the run's) the training order and distortions.
    """

    def __init__(
        self,
        root: str | None,
        name: str = "fashion_mnist",
        num_classes: int = 10,
        distortion: str = "none",
        image_size: int = 28,
        batch_size: int = 256,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_fraction: float = 1 / 12,
        split_seed: int = 0,
        test_seed: int = 0,
        train_limit: int | None = None,
        test_limit: int | None = None,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if distortion not in DISTORTIONS:
            raise ConfigError(
                f"data.distortion={distortion!r}: expected one of {', '.join(DISTORTIONS)}"
            )
        for key, value in (
            ("val_fraction", val_fraction), ("batch_size", batch_size),
            ("eval_batch_size", eval_batch_size), ("num_workers", num_workers),
            ("train_limit", train_limit), ("test_limit", test_limit),
        ):  # fmt: skip
            check_value(f"data.{key}", value)
        self.root = str(root) if root else default_root(name)
        self.name = name
        self.num_classes = int(num_classes)
        self.distortion = distortion
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.val_fraction = float(val_fraction)
        self.split_seed = int(split_seed)
        self.test_seed = check_seed("data.test_seed", test_seed)
        self.train_limit = train_limit
        self.test_limit = test_limit
        self.pin_memory = bool(pin_memory)
        self.persistent_workers = bool(persistent_workers)
        self.seed = check_seed("data.seed", seed)
        self._arrays: dict[str, Any] | None = None
        self.train_set: DistortedDigits | None = None
        self.val_set: FixedDigits | None = None
        self.test_set: FixedDigits | None = None

    @staticmethod
    def denormalize(images: Tensor) -> Tensor:
        """Undo the normalisation, back to [0, 1] (for figures)."""
        return images * _STD + _MEAN

    def validate(self) -> dict[str, Any]:
        """Read and check the four idx files now (before training); cached."""
        if self._arrays is not None:
            return self._arrays
        root = Path(self.root).expanduser()
        if not root.is_dir():
            raise DataError(
                f"data.root={self.root}: no such folder; expected the four idx files of "
                f"{self.name} (torchvision's downloader writes them to DIR/<class name>/raw"
                + (
                    ", or `apt-get install dataset-fashion-mnist`)"
                    if self.name == "fashion_mnist"
                    else ")"
                )
            )
        train_x, train_y, files = load_split(root, "train")
        test_x, test_y, test_files = load_split(root, "test")
        if train_x.shape[1:] != test_x.shape[1:]:
            raise DataError(
                f"{test_files[0]}: images of {test_x.shape[1:]}; expected "
                f"{train_x.shape[1:]} as in {files[0].name}"
            )
        check_canvas(self.distortion, self.image_size, train_x.shape[-1])
        for path, labels in ((files[1], train_y), (test_files[1], test_y)):
            if len(labels) and int(labels.max()) >= self.num_classes:
                raise DataError(
                    f"{path}: label {int(labels.max())}; expected labels below "
                    f"data.num_classes={self.num_classes}"
                )
        self._arrays = {
            "train": (train_x, train_y),
            "test": (test_x, test_y),
            "files": files + test_files,
        }
        return self._arrays

    @property
    def has_val(self) -> bool:
        return self.val_fraction > 0

    def setup(self, stage: str | None = None) -> None:
        arrays = self.validate()
        if self.train_set is not None:
            return
        (train_x, train_y), (test_x, test_y) = arrays["train"], arrays["test"]
        rows = np.arange(
            len(train_y) if self.train_limit is None else min(len(train_y), int(self.train_limit))
        )
        train_rows, val_rows = stratified_val_split(
            train_y, rows, self.val_fraction, self.split_seed
        )
        test_rows = np.arange(
            len(test_y) if self.test_limit is None else min(len(test_y), int(self.test_limit))
        )
        d, canvas = self.distortion, self.image_size
        self.train_set = DistortedDigits(train_x, train_y, train_rows, d, canvas)
        val_seeds = fixed_seeds(self.test_seed, 1, len(train_y))
        test_seeds = fixed_seeds(self.test_seed, 2, len(test_y))
        self.val_set = (
            fixed_distorted(train_x, train_y, val_rows, d, val_seeds, canvas)
            if self.has_val
            else None
        )
        self.test_set = fixed_distorted(test_x, test_y, test_rows, d, test_seeds, canvas)

    def _loader(self, dataset: Dataset, batch_size: int, train: bool) -> DataLoader:
        sampler = None
        if train:
            trainer = self.trainer
            sampler = SeededEpochSampler(
                dataset,  # type: ignore[arg-type]  # torch's Dataset declares no __len__; ours do
                self.seed,
                num_replicas=trainer.world_size if trainer else 1,
                rank=trainer.global_rank if trainer else 0,
                epoch=fit_epoch(trainer),
            )
        workers = self.num_workers
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            generator=torch.Generator().manual_seed(self.seed),
            num_workers=workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers and workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup()
        assert self.train_set is not None  # setup made it
        return self._loader(self.train_set, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader | list:
        self.setup()
        return (
            [] if self.val_set is None else self._loader(self.val_set, self.eval_batch_size, False)
        )

    def test_dataloader(self) -> DataLoader:
        self.setup()
        assert self.test_set is not None  # setup made it
        return self._loader(self.test_set, self.eval_batch_size, train=False)

    def fingerprint(self) -> dict[str, Any]:
        """The run record's ``provenance.dataset``: sha256 of the four idx files as stored."""
        files = self.validate()["files"]
        digest = hashlib.sha256()
        for path in files:
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
        return {
            "kind": "idx",
            "name": self.name,
            "distortion": self.distortion,
            "test_seed": self.test_seed,
            "index_files": [p.name for p in files],
            "index_sha256": digest.hexdigest(),
        }
