"""Writes a tiny, valid CUB-200-2011-format folder for tests.

Import from any test module in ``tests/`` (pytest puts this folder on ``sys.path``)::

    from cub_fixture import write_tiny_cub

    root = write_tiny_cub(tmp_path / "CUB_200_2011")

Every image is a dark, class-coloured background with the bird box ``box`` painted white,
so tests can check that boxes and pixels stay aligned under crops and flips.  Image 1 is
saved as greyscale ('L') and image 2 as CMYK, like the odd ones in the real dataset.

The ``tiny_cub`` pytest fixture (a fresh folder under ``tmp_path``) can be shared by adding
``from cub_fixture import tiny_cub  # noqa: F401`` to ``tests/conftest.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

#: Part names (with spaces, as in the real parts.txt) and their positions relative to the box.
PART_NAMES = ("beak", "left wing", "right eye")
#: Default bird box ``x, y, w, h`` in pixels for a (60, 40) image.
DEFAULT_BOX = (10.0, 5.0, 30.0, 20.0)


def part_locations(box: tuple[float, float, float, float]) -> list[tuple[float, float, int]]:
    """Parts for ``box``: top-left-ish visible, bottom-right-ish visible, third invisible."""
    x, y, w, h = box
    return [(x + 5.0, y + 5.0, 1), (x + w - 5.0, y + h - 5.0, 1), (0.0, 0.0, 0)]


def _class_colour(c: int) -> tuple[int, int, int]:
    return (20 + 50 * (c % 3), 20 + 30 * (c % 4), 20 + 40 * (c % 2))


def write_tiny_cub(
    root: str | Path,
    num_classes: int = 3,
    per_class: int = 4,
    size: tuple[int, int] = (60, 40),
    *,
    train_per_class: int | None = None,
    box: tuple[float, float, float, float] | None = None,
    with_boxes: bool = True,
    with_parts: bool = True,
    greyscale_id: int | None = 1,
    cmyk_id: int | None = 2,
    bad_line: tuple[str, int, str | None] | None = None,
) -> Path:
    """Write a CUB folder at ``root`` (the ``CUB_200_2011`` folder itself); returns ``root``.

    Image ids run 1..num_classes*per_class, class by class; within each class the first
    ``train_per_class`` (default: half, rounded up) are train.  ``box`` defaults to
    :data:`DEFAULT_BOX` scaled to ``size``.  ``bad_line=(relative_file, lineno, text)``
    replaces 1-based line ``lineno`` of that index file with ``text`` (``None`` deletes it;
    ``lineno`` one past the end appends).
    """
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    width, height = size
    if box is None:
        sx, sy = width / 60.0, height / 40.0
        x, y, w, h = DEFAULT_BOX
        box = (x * sx, y * sy, w * sx, h * sy)
    if train_per_class is None:
        train_per_class = per_class - per_class // 2

    files: dict[str, list[str]] = {
        "images.txt": [],
        "image_class_labels.txt": [],
        "train_test_split.txt": [],
        "classes.txt": [],
        "bounding_boxes.txt": [],
        "parts/parts.txt": [f"{i} {name}" for i, name in enumerate(PART_NAMES, 1)],
        "parts/part_locs.txt": [],
    }
    bx, by, bw, bh = box
    image_id = 0
    for c in range(1, num_classes + 1):
        cname = f"{c:03d}.Class_{c}"
        files["classes.txt"].append(f"{c} {cname}")
        (root / "images" / cname).mkdir(exist_ok=True)
        for k in range(per_class):
            image_id += 1
            rel = f"{cname}/Class_{c}_{k + 1:04d}.jpg"
            img = Image.new("RGB", size, _class_colour(c))
            img.paste((255, 255, 255), (round(bx), round(by), round(bx + bw), round(by + bh)))
            if image_id == greyscale_id:
                img = img.convert("L")
            elif image_id == cmyk_id:
                img = img.convert("CMYK")
            img.save(root / "images" / rel, format="JPEG", quality=95)
            files["images.txt"].append(f"{image_id} {rel}")
            files["image_class_labels.txt"].append(f"{image_id} {c}")
            files["train_test_split.txt"].append(f"{image_id} {int(k < train_per_class)}")
            files["bounding_boxes.txt"].append(f"{image_id} {bx:.1f} {by:.1f} {bw:.1f} {bh:.1f}")
            for p, (px, py, vis) in enumerate(part_locations(box), 1):
                files["parts/part_locs.txt"].append(f"{image_id} {p} {px:.1f} {py:.1f} {vis}")

    if not with_boxes:
        del files["bounding_boxes.txt"]
    if not with_parts:
        del files["parts/parts.txt"], files["parts/part_locs.txt"]
    if bad_line is not None:
        name, lineno, text = bad_line
        lines = files[name]
        if lineno == len(lines) + 1:
            lines.append(text if text is not None else "")
        elif text is None:
            del lines[lineno - 1]
        else:
            lines[lineno - 1] = text
    for name, lines in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(line + "\n" for line in lines))
    return root


@pytest.fixture
def tiny_cub(tmp_path: Path) -> Path:
    """A default tiny CUB folder (3 classes x 4 images, 60x40, boxes + 3 parts)."""
    return write_tiny_cub(tmp_path / "CUB_200_2011")
