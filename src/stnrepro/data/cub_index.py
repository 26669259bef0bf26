"""CUB-200-2011's index files: parsed and checked up front, with one-line errors.

A broken download fails in seconds with a message naming the file and line (``path:line:
expected ...``), not an hour into training. :meth:`CUBIndex.load` with ``check_images``
also opens every listed image's header (a missing file, an unreadable header, a bird box
outside its image); decoding errors are found lazily, when a worker decodes the image. All
ids in the files are 1-based, as in CUB; rows here are 0-based positions in ``images.txt``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from stnrepro.data.transforms import file_problem
from stnrepro.errors import DataError, one_line

__all__ = ["INDEX_FILES", "REQUIRED_FILES", "CUBIndex"]

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
        problem = file_problem(path)
        if problem is not None:
            return problem
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
