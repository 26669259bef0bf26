"""CUB image loading and geometry: one "view" (crop + optional flip) drives pixels AND boxes.

Coordinate conventions (why they matter: STN localisation is evaluated against these):

* Pixel coordinates are continuous, top-left origin: the left edge of the image is ``x = 0``
  and the right edge is ``x = W`` (a pixel ``k`` covers ``[k, k + 1)``).  CUB boxes
  (``x, y, width, height``) and part locations are read in this frame.
* Normalised coordinates match ``F.affine_grid(..., align_corners=False)``: ``-1`` is the
  left/top EDGE of the returned image and ``+1`` the right/bottom edge, so
  ``x_norm = 2 * (x - left) / width - 1`` for a view whose crop starts at ``left``.

A :class:`View` is a crop rectangle in original pixel coordinates plus a flip flag.  The image
is produced by resampling exactly that rectangle to ``S x S`` (PIL's resize ``box=`` uses the
same pixel-centre convention), and the annotations are mapped with the same rectangle, so
pixels and boxes cannot drift apart.
"""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile
from torchvision.transforms import RandomResizedCrop

from stnrepro.errors import DataError, one_line
from stnrepro.utils.imagenet import IMAGENET_MEAN, IMAGENET_STD

# Truncated JPEGs must fail loudly instead of decoding as grey padding.
ImageFile.LOAD_TRUNCATED_IMAGES = False

DEFAULT_RATIO: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)


@dataclass(frozen=True)
class View:
    """A crop ``[left, left + width] x [top, top + height]`` (original pixels), then a flip."""

    left: float
    top: float
    width: float
    height: float
    flip: bool = False


def full_view(width: int, height: int) -> View:
    """The eval view: the whole image (resized to a square, aspect ratio NOT preserved)."""
    return View(0.0, 0.0, float(width), float(height), False)


def sample_view(
    width: int,
    height: int,
    seed: int,
    crop_scale: tuple[float, float] = (0.6, 1.0),
    ratio: tuple[float, float] = DEFAULT_RATIO,
    hflip: bool = True,
) -> View:
    """A random training view, a pure function of its arguments: a random-resized-crop
    (torchvision's ``RandomResizedCrop.get_params``) and a p=0.5 horizontal flip.

    ``seed`` (0 <= seed < 2**63, see :mod:`stnrepro.data.sampling`) seeds a forked torch
    generator, so the view does not depend on, and does not advance, the process's RNG: the
    same item gets the same view in any worker and in the main process alike.
    """
    dummy = torch.empty(1, 1, 1).expand(1, height, width)  # only the shape is read
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        top, left, h, w = RandomResizedCrop.get_params(dummy, list(crop_scale), list(ratio))
        flip = bool(torch.rand(()) < 0.5) if hflip else False
    return View(float(left), float(top), float(w), float(h), flip)


def map_points(xy: np.ndarray, view: View) -> np.ndarray:
    """Map pixel points ``(..., 2)`` to normalised coordinates of the view's output image."""
    xy = np.asarray(xy, dtype=np.float64)
    x = 2.0 * (xy[..., 0] - view.left) / view.width - 1.0
    y = 2.0 * (xy[..., 1] - view.top) / view.height - 1.0
    if view.flip:
        x = -x
    return np.stack([x, y], axis=-1)


def map_box(bbox_xywh: np.ndarray | None, view: View) -> np.ndarray:
    """Map a pixel box ``x, y, w, h`` to normalised ``x0, y0, x1, y1`` clipped to [-1, 1].

    A flip mirrors x, which swaps the roles of the left and right edges.  A box that falls
    entirely outside the crop collapses onto the border (zero width/height).
    """
    if bbox_xywh is None or not np.all(np.isfinite(bbox_xywh)):
        return np.full(4, np.nan, dtype=np.float32)
    x, y, w, h = (float(v) for v in bbox_xywh)
    (x0, y0), (x1, y1) = map_points(np.array([[x, y], [x + w, y + h]]), view)
    if x0 > x1:  # flipped
        x0, x1 = x1, x0
    out = np.clip(np.array([x0, y0, x1, y1]), -1.0, 1.0)
    return out.astype(np.float32)


def map_parts(parts: np.ndarray | None, view: View) -> np.ndarray:
    """Map parts ``(P, 3)`` = x, y, visible; a part pushed outside the view becomes invisible.

    Coordinates of invisible parts stay finite (mapped as-is) so masked sums never meet NaN.
    """
    if parts is None:
        return np.zeros((0, 3), dtype=np.float32)
    parts = np.asarray(parts, dtype=np.float64)
    xy = map_points(parts[:, :2], view)
    inside = np.all(np.abs(xy) <= 1.0, axis=1)
    visible = (parts[:, 2] > 0) & inside
    return np.concatenate([xy, visible[:, None].astype(np.float64)], axis=1).astype(np.float32)


def file_problem(path: str | Path) -> str | None:
    """Why ``path`` is no image file to open, or None for a regular file (``OSError`` when it
    cannot be looked at, e.g. ``FileNotFoundError``). Opening a FIFO or a device would block
    or read forever, so only regular files are opened."""
    if stat.S_ISREG(os.stat(path).st_mode):
        return None
    return "not a regular file (a FIFO, device or folder): expected an image"


def open_image(path: str | Path) -> Image.Image:
    """``Image.open`` of a regular file only (:func:`file_problem`); DataError otherwise."""
    try:
        problem = file_problem(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot read image ({_reason(exc)})") from None
    if problem is not None:
        raise DataError(f"{path}: {problem}")
    return Image.open(path)


#: Integer greyscale modes (16-bit PNGs and the like): values 0..65535, not 0..255.
_WIDE_GREY_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB of a decoded image. Greyscale, palette and CMYK images are converted by PIL;
    16-bit greyscale is scaled to 8 bits first (PIL's own conversion clips it, so a mid-grey
    16-bit image would come out pure white)."""
    if img.mode == "RGB":
        return img
    if img.mode in _WIDE_GREY_MODES:
        wide = np.asarray(img, dtype=np.int64)
        grey = (np.clip(wide, 0, 65535) * 255 + 32767) // 65535
        return Image.fromarray(grey.astype(np.uint8), mode="L").convert("RGB")
    return img.convert("RGB")


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` from the header only (no decode)."""
    try:
        with open_image(path) as img:
            return img.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot read image ({_reason(exc)})") from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return one_line(exc)


def load_view(path: str | Path, size: int, view_fn) -> tuple[Image.Image, View]:
    """Decode ``path`` and resample the chosen view to ``size x size`` RGB.

    ``view_fn(width, height) -> View`` is called with the ORIGINAL size (from the header) so the
    view is independent of the decode scale.  ``Image.draft`` lets libjpeg decode at 1/2, 1/4
    or 1/8 scale when the crop region would still cover at least ``size`` pixels: this is
    what makes the CPU pipeline fast on ~500 px CUB photos.
    """
    try:
        with open_image(path) as img:
            width, height = img.size
            view = view_fn(width, height)
            request = (
                max(1, math.ceil(width * size / view.width)),
                max(1, math.ceil(height * size / view.height)),
            )
            drafted = img.draft("RGB", request)  # None for non-JPEG formats
            sx = sy = 1.0
            if drafted is not None:
                _, dbox = drafted
                sx, sy = dbox[2] / width, dbox[3] / height
            img.load()
            rgb = to_rgb(img)
            dw, dh = rgb.size
            box = (
                min(max(view.left * sx, 0.0), dw),
                min(max(view.top * sy, 0.0), dh),
                min(max((view.left + view.width) * sx, 0.0), dw),
                min(max((view.top + view.height) * sy, 0.0), dh),
            )
            out = rgb.resize((size, size), Image.Resampling.BILINEAR, box=box)
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot read image ({_reason(exc)})") from None
    if view.flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return out, view


_MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def to_normalised_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 ``(3, H, W)`` normalised with ImageNet mean/std."""
    arr = np.array(img, dtype=np.uint8, copy=True)
    t = torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)
    return t.sub_(_MEAN).div_(_STD)
