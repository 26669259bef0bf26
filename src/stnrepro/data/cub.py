"""CUB-200-2011: index parsing/validation, the Dataset, and the Lightning DataModule.

The index files are parsed and checked up front (``CUBDataModule.validate``) so that a broken
download fails in seconds with a one-line message naming the file and line, not an hour into
training.  The data module also opens every listed image's header up front (a missing file,
an unreadable header, a bird box outside its image); decoding errors are found lazily, when a
worker decodes the image.

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
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from stnrepro.data.sampling import SeededEpochSampler, check_seed
from stnrepro.data.transforms import (
    DEFAULT_RATIO,
    IMAGENET_MEAN,
    IMAGENET_STD,
    View,
    denormalize,
    full_view,
    load_view,
    map_box,
    map_parts,
    sample_view,
    to_normalised_tensor,
)
from stnrepro.errors import ConfigError, DataError, one_line

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CUBDataModule",
    "CUBDataset",
    "CUBIndex",
    "denormalize",
    "stratified_val_split",
]

REQUIRED_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")
# The files whose hash identifies a CUB folder (``CUBDataModule.fingerprint``).
INDEX_FILES = (*REQUIRED_FILES, "bounding_boxes.txt")
_ROOT_HINT = "expected the extracted CUB_200_2011 folder containing images.txt"
_INT = re.compile(r"[+-]?\d+")
# Image headers are read by this many threads: the pass is I/O bound on a cold cache.
_HEADER_THREADS = 8
# How many example paths a one-line "N files are missing" message names.
_EXAMPLES = 3


# --------------------------------------------------------------------------- index parsing


@dataclass
class _Row:
    lineno: int
    line: str
    values: list[Any]


def _bad_line(path: Path, lineno: int, fmt: str, line: str) -> DataError:
    text = line if len(line) <= 80 else line[:77] + "..."
    return DataError(f"{path}:{lineno}: expected '{fmt}', got {text!r}")


def _parse(path: Path, fmt: str, kinds: str) -> list[_Row]:
    """Parse a whitespace-separated table; ``kinds`` is one letter per field.

    ``i`` = integer, ``f`` = finite float, ``s`` = the rest of the line as text (last field
    only, so class/part names may contain spaces).  Blank lines are skipped.
    """
    try:
        raw = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (invalid byte at offset {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    n = len(kinds)
    text_last = kinds.endswith("s")
    rows: list[_Row] = []
    for lineno, line in enumerate(raw.split("\n"), 1):
        line = line.rstrip("\r")
        stripped = line.strip()
        if not stripped:
            continue
        fields = stripped.split(None, n - 1) if text_last else stripped.split()
        if len(fields) != n:
            raise _bad_line(path, lineno, fmt, line)
        values: list[Any] = []
        for kind, tok in zip(kinds, fields, strict=True):
            if kind == "i":
                if not _INT.fullmatch(tok):
                    raise _bad_line(path, lineno, fmt, line)
                values.append(int(tok))
            elif kind == "f":
                try:
                    v = float(tok)
                except ValueError:
                    raise _bad_line(path, lineno, fmt, line) from None
                if not math.isfinite(v) or "_" in tok:
                    raise _bad_line(path, lineno, fmt, line)
                values.append(v)
            else:
                values.append(tok)
        rows.append(_Row(lineno, line, values))
    return rows


def _align(path: Path, rows: list[_Row], id_to_row: dict[int, int], ids: Sequence[int]) -> None:
    """Check ``rows`` (keyed by image id in field 0) cover exactly the images.txt ids, once."""
    seen: dict[int, int] = {}
    for row in rows:
        iid = row.values[0]
        r = id_to_row.get(iid)
        if r is None:
            raise DataError(f"{path}:{row.lineno}: image id {iid} is not listed in images.txt")
        if r in seen:
            raise DataError(
                f"{path}:{row.lineno}: duplicate image id {iid} (first at line {seen[r]})"
            )
        seen[r] = row.lineno
    if len(seen) != len(ids):
        missing = [ids[r] for r in range(len(ids)) if r not in seen]
        raise DataError(
            f"{path}: {len(missing)} image id(s) from images.txt are missing "
            f"(e.g. {missing[0]}); is the file truncated?"
        )


def _numbered_names(path: Path, what: str) -> list[str]:
    """Parse ``<id> <name>`` files whose ids must be exactly 1..N (classes, parts)."""
    rows = _parse(path, f"<{what}_id> <name>", "is")
    if not rows:
        raise DataError(f"{path}: no {'classes' if what == 'class' else what + 's'} listed")
    by_id: dict[int, _Row] = {}
    for row in rows:
        cid = row.values[0]
        if cid in by_id:
            raise DataError(
                f"{path}:{row.lineno}: duplicate {what} id {cid} "
                f"(first at line {by_id[cid].lineno})"
            )
        by_id[cid] = row
    n = len(rows)
    for row in rows:
        cid = row.values[0]
        if not 1 <= cid <= n:
            raise DataError(
                f"{path}:{row.lineno}: {what} id {cid} outside 1..{n} "
                f"(ids must be 1..N without gaps, N = number of lines)"
            )
    return [by_id[i].values[1] for i in range(1, n + 1)]


def _check_relpath(path: Path, row: _Row) -> None:
    rel = PurePosixPath(row.values[1])
    if rel.is_absolute() or ".." in rel.parts:
        raise DataError(
            f"{path}:{row.lineno}: image path must be relative to images/ without '..', "
            f"got {row.values[1]!r}"
        )


def _header_size(path: Path) -> tuple[int, int] | str:
    """``(width, height)`` from the image header (PIL reads no pixels), or why it failed.

    A missing file gives ``""``.
    """
    try:
        with Image.open(path) as img:
            return img.size
    except FileNotFoundError:
        return ""
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return one_line(exc)


def _image_sizes(images_path: Path, image_dir: Path, paths: list[str]) -> np.ndarray:
    """Every listed image's ``(width, height)``; DataError naming the first missing/bad files.

    The up-front pass that makes a missing or unreadable image fail in seconds instead of when
    a worker reaches it (for the test split: after all of training).  Reading the headers of
    CUB's 11,788 JPEGs takes about a second from a warm cache.
    """
    with ThreadPoolExecutor(_HEADER_THREADS) as pool:
        results = list(pool.map(_header_size, (image_dir / rel for rel in paths)))
    missing = [rel for rel, r in zip(paths, results, strict=True) if r == ""]
    if missing:
        raise DataError(
            f"{images_path}: {len(missing)} of {len(paths)} listed image file(s) not found "
            f"under {image_dir} (first: {', '.join(missing[:_EXAMPLES])})"
        )
    bad = [(rel, r) for rel, r in zip(paths, results, strict=True) if isinstance(r, str)]
    if bad:
        rel, reason = bad[0]
        raise DataError(
            f"{images_path}: {len(bad)} of {len(paths)} listed image(s) cannot be read "
            f"(first: {image_dir / rel}: {reason})"
        )
    return np.asarray(results, dtype=np.int64).reshape(len(paths), 2)


@dataclass(frozen=True, eq=False)
class CUBIndex:
    """Parsed and validated CUB index files (rows follow images.txt order)."""

    root: Path
    image_ids: np.ndarray  # int64 (M,)
    paths: list[str]  # relative to root / "images"
    labels: np.ndarray  # int64 (M,), 0-based
    is_train: np.ndarray  # bool (M,)
    class_names: list[str]  # index = 0-based label
    bboxes: np.ndarray | None  # float32 (M, 4) x, y, w, h pixels; None if absent
    part_names: list[str]  # [] if parts absent
    parts: np.ndarray | None  # float32 (M, P, 3) x, y, visible; None if absent

    @property
    def num_images(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_parts(self) -> int:
        return len(self.part_names)

    def image_path(self, row: int) -> Path:
        return self.root / "images" / self.paths[row]

    def summary(self) -> str:
        """One line for logs and the download script."""
        n_train = int(self.is_train.sum())
        return (
            f"{self.root}: {self.num_images} images, {self.num_classes} classes, "
            f"{n_train} train / {self.num_images - n_train} test, "
            f"boxes: {'yes' if self.bboxes is not None else 'no'}, parts: {self.num_parts}"
        )

    @classmethod
    def load(cls, root: str | Path, key: str | None = None, check_images: bool = False) -> CUBIndex:
        """Parse and cross-check all index files; raises DataError on anything wrong.

        ``key`` is the setting that named ``root`` (e.g. ``data.root``): messages about the
        folder itself then say ``key=<root>`` and how to set it.  With ``check_images``
        every listed image's header is read (missing and unreadable files are refused, and
        each bird box must overlap its image); without it only that ``images/`` exists is
        checked (tools that report every bad image themselves, such as ``stn-data check``,
        load without it).  No pixels are decoded.
        """
        root = Path(root).expanduser().absolute()
        where = f"{key}={root}" if key else str(root)
        if not root.is_dir():
            raise DataError(f"{where}: directory not found ({_ROOT_HINT})")
        if not (root / "images.txt").is_file() and (root / "CUB_200_2011" / "images.txt").is_file():
            fix = f"set {key}=" if key else "use "
            raise DataError(
                f"{where}: images.txt not found; the dataset is one level down, "
                f"{fix}{root / 'CUB_200_2011'}"
            )
        for name in REQUIRED_FILES:
            if not (root / name).is_file():
                raise DataError(f"{root / name}: file not found (required CUB index file)")
        if not (root / "images").is_dir():
            raise DataError(f"{root / 'images'}: directory not found (expected the JPEG folder)")

        # images.txt defines the row order and the id set every other file must match.
        images_path = root / "images.txt"
        image_rows = _parse(images_path, "<image_id> <path>", "is")
        if not image_rows:
            raise DataError(f"{images_path}: no images listed")
        id_to_row: dict[int, int] = {}
        for r, row in enumerate(image_rows):
            iid = row.values[0]
            if iid in id_to_row:
                first = image_rows[id_to_row[iid]].lineno
                raise DataError(
                    f"{images_path}:{row.lineno}: duplicate image id {iid} (first at line {first})"
                )
            _check_relpath(images_path, row)
            id_to_row[iid] = r
        ids = [row.values[0] for row in image_rows]
        m = len(ids)

        class_names = _numbered_names(root / "classes.txt", "class")
        c = len(class_names)

        labels_path = root / "image_class_labels.txt"
        label_rows = _parse(labels_path, "<image_id> <class_id>", "ii")
        _align(labels_path, label_rows, id_to_row, ids)
        labels = np.empty(m, dtype=np.int64)
        for row in label_rows:
            cid = row.values[1]
            if not 1 <= cid <= c:
                raise DataError(
                    f"{labels_path}:{row.lineno}: class id {cid} outside 1..{c} "
                    f"(classes.txt lists {c} classes)"
                )
            labels[id_to_row[row.values[0]]] = cid - 1

        split_path = root / "train_test_split.txt"
        split_rows = _parse(split_path, "<image_id> <is_training_image 0|1>", "ii")
        _align(split_path, split_rows, id_to_row, ids)
        is_train = np.empty(m, dtype=bool)
        for row in split_rows:
            flag = row.values[1]
            if flag not in (0, 1):
                raise DataError(
                    f"{split_path}:{row.lineno}: expected is_training_image 0 or 1, got {flag}"
                )
            is_train[id_to_row[row.values[0]]] = flag == 1

        paths = [row.values[1] for row in image_rows]
        sizes = _image_sizes(images_path, root / "images", paths) if check_images else None
        bboxes = cls._load_boxes(root / "bounding_boxes.txt", id_to_row, ids, sizes)
        part_names, parts = cls._load_parts(root / "parts", id_to_row, ids)

        return cls(
            root=root,
            image_ids=np.asarray(ids, dtype=np.int64),
            paths=paths,
            labels=labels,
            is_train=is_train,
            class_names=class_names,
            bboxes=bboxes,
            part_names=part_names,
            parts=parts,
        )

    @staticmethod
    def _load_boxes(
        path: Path, id_to_row: dict[int, int], ids: list[int], sizes: np.ndarray | None
    ) -> np.ndarray | None:
        """Boxes in pixels; each must overlap its image (``sizes``: (M, 2) width, height).

        A box partly outside the image is kept (it is clipped where it is used); one with no
        pixel in common with the image cannot be the bird.  Without ``sizes`` only boxes
        entirely left of or above every image are caught.
        """
        if not path.is_file():
            return None
        rows = _parse(path, "<image_id> <x> <y> <width> <height>", "iffff")
        _align(path, rows, id_to_row, ids)
        boxes = np.empty((len(ids), 4), dtype=np.float32)
        for row in rows:
            iid, x, y, w, h = row.values
            if w <= 0 or h <= 0:
                raise DataError(
                    f"{path}:{row.lineno}: box width and height must be > 0, got {row.line!r}"
                )
            r = id_to_row[iid]
            width, height = sizes[r] if sizes is not None else (math.inf, math.inf)
            if x + w <= 0 or y + h <= 0 or x >= width or y >= height:
                image = f" {width}x{height}" if sizes is not None else ""
                raise DataError(
                    f"{path}:{row.lineno}: box (x={x:g}, y={y:g}, w={w:g}, h={h:g}) lies "
                    f"outside the image{image} of image id {iid}; expected a box overlapping it"
                )
            boxes[r] = (x, y, w, h)
        return boxes

    @staticmethod
    def _load_parts(
        parts_dir: Path, id_to_row: dict[int, int], ids: list[int]
    ) -> tuple[list[str], np.ndarray | None]:
        names_path, locs_path = parts_dir / "parts.txt", parts_dir / "part_locs.txt"
        if not names_path.is_file() and not locs_path.is_file():
            return [], None
        for p, other in ((names_path, locs_path), (locs_path, names_path)):
            if not p.is_file():
                raise DataError(
                    f"{p}: file not found ({other.name} exists; parts need both files or neither)"
                )
        names = _numbered_names(names_path, "part")
        n_parts = len(names)
        rows = _parse(locs_path, "<image_id> <part_id> <x> <y> <visible 0|1>", "iiffi")
        parts = np.zeros((len(ids), n_parts, 3), dtype=np.float32)
        seen = np.zeros((len(ids), n_parts), dtype=np.int64)  # line number, 0 = not seen
        for row in rows:
            iid, pid, x, y, vis = row.values
            r = id_to_row.get(iid)
            if r is None:
                raise DataError(
                    f"{locs_path}:{row.lineno}: image id {iid} is not listed in images.txt"
                )
            if not 1 <= pid <= n_parts:
                raise DataError(
                    f"{locs_path}:{row.lineno}: part id {pid} outside 1..{n_parts} "
                    f"(parts.txt lists {n_parts} parts)"
                )
            if vis not in (0, 1):
                raise DataError(f"{locs_path}:{row.lineno}: expected visible 0 or 1, got {vis}")
            if seen[r, pid - 1]:
                raise DataError(
                    f"{locs_path}:{row.lineno}: duplicate entry for image id {iid} part id {pid} "
                    f"(first at line {seen[r, pid - 1]})"
                )
            seen[r, pid - 1] = row.lineno
            parts[r, pid - 1] = (x, y, vis)
        missing = np.argwhere(seen == 0)
        if len(missing):
            r, p = missing[0]
            raise DataError(
                f"{locs_path}: {len(missing)} (image, part) entries are missing "
                f"(e.g. image id {ids[r]} part id {p + 1}); is the file truncated?"
            )
        return names, parts


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
        i, aug_seed = (key, None) if np.ndim(key) == 0 else (int(key[0]), int(key[1]))
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
        if not 0 <= val_fraction < 1:
            raise ConfigError(f"data.val_fraction={val_fraction}: expected 0 <= val_fraction < 1")
        for key, value in (("num_classes", num_classes), ("image_size", image_size)):
            if int(value) < 1:
                raise ConfigError(f"data.{key}={value}: expected a positive integer")
        if int(batch_size) < 1:
            raise ConfigError(f"data.batch_size={batch_size}: expected a positive integer")
        if eval_batch_size is not None and int(eval_batch_size) < 1:
            raise ConfigError(
                f"data.eval_batch_size={eval_batch_size}: expected a positive integer or null"
            )
        if int(num_workers) < 0:
            raise ConfigError(f"data.num_workers={num_workers}: expected an integer >= 0")
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
            epoch=trainer.fit_loop.epoch_progress.current.processed,
        )

    def _loader(self, dataset: CUBDataset, batch_size: int, train: bool) -> DataLoader:
        """Training: shuffled ``(index, aug_seed)`` pairs (Lightning calls the sampler's
        ``set_epoch``; under DDP each rank's sampler takes its share).  Evaluation: plain
        indices in order (Lightning shards them under DDP).

        Each loader has its own torch generator: a DataLoader draws its workers' base seed
        from it on every new iterator, which with the global generator would shift the
        model's random stream (dropout) by how often workers are (re)started, i.e. by
        ``persistent_workers`` and by a resume.
        """
        workers = self.num_workers
        sampler = self._train_sampler(dataset) if train else None
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            generator=torch.Generator().manual_seed(self.seed),
            drop_last=False,
            num_workers=workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers and workers > 0,
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
