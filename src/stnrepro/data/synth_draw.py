"""Drawing code for the synthetic fine-grained birds (see :mod:`stnrepro.data.synthetic`).

Only numpy and Pillow are imported here, so generator worker processes start fast.

Determinism: every random number comes from the numpy ``Generator`` handed in (seeded per image
by the caller), only through ``random()``, ``integers()`` and ``permutation()``; all geometry
uses ``+ - * /`` and ``sqrt`` (IEEE-754 correctly rounded) and no libm transcendental function:
angles are carried as ``t = tan(angle / 2)`` and turned into ``cos``/``sin`` rationally, and the
unit-circle table is built the same way.  So the drawn pixels do not depend on the CPU, the libm
or the worker count; byte identity of the JPEGs then only needs the same numpy/Pillow/libjpeg
versions.

Coordinates: continuous image coordinates, top-left origin, pixel ``k`` covers ``[k, k + 1)``
(the convention of :mod:`stnrepro.data.transforms`).  Canonical bird coordinates: body centre
at the origin, body length 1, y down, the bird faces +x and shows its right side.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

RGB = tuple[int, int, int]

# --- class structure ----------------------------------------------------------------------

#: Fine, species-level attributes.  Each lives in a small region of the bird.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "crown": ("plain", "cap", "eyestripe", "crest", "striped"),  # head marking
    "eyering": ("none", "white", "red"),  # ring around the eye
    "beak": ("conical", "thin", "decurved", "hooked"),  # beak shape
    "wingbar": ("plain", "onebar", "twobar", "spotted", "tipped"),  # wing pattern
    "tail": ("square", "forked", "rounded", "pointed"),  # tail shape
    "breast": ("none", "red", "yellow", "blue", "white"),  # small breast patch colour
}
ATTR_NAMES: tuple[str, ...] = tuple(ATTRIBUTES)
ATTR_SIZES: tuple[int, ...] = tuple(len(v) for v in ATTRIBUTES.values())

#: Coarse, genus-level colours: shared by every species of a genus and by several genera.
BODY_COLOURS: dict[str, RGB] = {
    "brown": (122, 88, 58),
    "grey": (128, 128, 122),
    "olive": (108, 114, 60),
    "slate": (84, 94, 116),
    "buff": (188, 160, 116),
    "rufous": (160, 88, 50),
    "charcoal": (62, 60, 62),
    "sand": (172, 168, 138),
}
BEAK_COLOURS: dict[str, RGB] = {
    "dark": (40, 38, 36),
    "horn": (150, 132, 108),
    "yellow": (214, 178, 52),
}
PATCH_COLOURS: dict[str, RGB] = {
    "red": (206, 40, 36),
    "yellow": (238, 206, 40),
    "blue": (52, 108, 214),
    "white": (242, 240, 232),
}
RING_COLOURS: dict[str, RGB] = {"white": (244, 242, 236), "red": (212, 44, 40)}
MARK_DARK: RGB = (30, 28, 32)
MARK_LIGHT: RGB = (240, 238, 228)
LEG_COLOUR: RGB = (70, 60, 55)

#: Part names, in ``parts/parts.txt`` order.  Head group: head, crown, beak, eyes.  Body group:
#: body, breast, wings, tail.  The bird faces +x showing its right side, so the left eye and the
#: left wing are occluded unless the image is mirrored (then the right ones are).
PART_NAMES: tuple[str, ...] = (
    "body",
    "breast",
    "head",
    "crown",
    "beak",
    "left_eye",
    "right_eye",
    "left_wing",
    "right_wing",
    "tail",
)
HEAD_PARTS: tuple[str, ...] = ("head", "crown", "beak", "left_eye", "right_eye")
BODY_PARTS: tuple[str, ...] = ("body", "breast", "left_wing", "right_wing", "tail")

BACKGROUND_COLOURS: tuple[RGB, ...] = (
    (62, 92, 42),
    (92, 122, 62),
    (124, 142, 82),
    (34, 52, 32),
    (112, 92, 62),
    (142, 122, 92),
    (152, 182, 212),
    (192, 210, 228),
    (132, 132, 130),
    (182, 166, 130),
    (72, 100, 120),
)
LEAF_COLOURS: tuple[RGB, ...] = ((58, 98, 40), (86, 128, 52), (120, 150, 70), (40, 70, 36))
BARK_COLOURS: tuple[RGB, ...] = ((96, 74, 52), (118, 96, 70), (80, 66, 56))


@dataclass(frozen=True)
class BirdClass:
    """One species: a genus (body and beak colour) plus one value per fine attribute."""

    index: int  # 0-based class index
    genus: int
    body_colour: str
    beak_colour: str
    attrs: tuple[int, ...]  # value index per ATTR_NAMES entry

    def attr(self, name: str) -> str:
        """The value name of attribute ``name``."""
        i = ATTR_NAMES.index(name)
        return ATTRIBUTES[name][self.attrs[i]]

    @property
    def name(self) -> str:
        """CUB-style class folder name, e.g. ``001.olive_g00_cap-ring_white-...``."""
        parts = [self.attr(n) if n != "eyering" else "ring_" + self.attr(n) for n in ATTR_NAMES]
        parts[ATTR_NAMES.index("breast")] = "breast_" + self.attr("breast")
        parts[ATTR_NAMES.index("tail")] = "tail_" + self.attr("tail")
        parts[ATTR_NAMES.index("beak")] = "beak_" + self.attr("beak")
        parts[ATTR_NAMES.index("wingbar")] = "wing_" + self.attr("wingbar")
        body = f"{self.body_colour}_{self.beak_colour}beak_g{self.genus:02d}"
        return f"{self.index + 1:03d}.{body}_" + "-".join(parts)


def make_classes(num_classes: int, genus_size: int, seed: int) -> list[BirdClass]:
    """Species as genera of ``genus_size``: a random base, then siblings differing in 1-2 traits.

    Why: as in CUB (many warblers, many gulls), most classes have near neighbours that differ
    in one or two small regions only.  Body colours cycle through a shuffled palette, so each
    colour is shared by several genera and the colour histogram never names the species.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    body_names = list(BODY_COLOURS)
    beak_names = list(BEAK_COLOURS)
    classes: list[BirdClass] = []
    seen: set[tuple] = set()
    genus = 0
    colour_cycle: list[int] = []
    while len(classes) < num_classes:
        if not colour_cycle:
            colour_cycle = [int(i) for i in rng.permutation(len(body_names))]
        body = body_names[colour_cycle.pop(0)]
        beak = beak_names[int(rng.integers(len(beak_names)))]
        base = tuple(int(rng.integers(k)) for k in ATTR_SIZES)
        members = 0
        for _ in range(200):
            if members >= genus_size or len(classes) >= num_classes:
                break
            cand = list(base)
            if members > 0:
                n_changed = 1 + int(rng.random() < 0.5)
                for a in rng.permutation(len(ATTR_SIZES))[:n_changed]:
                    shift = 1 + int(rng.integers(ATTR_SIZES[a] - 1))
                    cand[a] = (cand[a] + shift) % ATTR_SIZES[a]
            key = (body, beak, tuple(cand))
            if key in seen:
                continue
            seen.add(key)
            classes.append(BirdClass(len(classes), genus, body, beak, tuple(cand)))
            members += 1
        genus += 1
    return classes


# --- exact geometry -----------------------------------------------------------------------


def tan_half_deg(deg: float) -> float:
    """``tan(deg / 2)`` (degrees) with ``+ - * /`` only, so it is bit-identical everywhere."""
    x = deg * (3.141592653589793 / 360.0)
    x2 = x * x
    s, c, ts, tc = 0.0, 0.0, x, 1.0
    for k in range(14):
        s += ts
        c += tc
        ts *= -x2 / ((2 * k + 2) * (2 * k + 3))
        tc *= -x2 / ((2 * k + 1) * (2 * k + 2))
    return s / c


def _cs(t: float) -> tuple[float, float]:
    """``(cos a, sin a)`` for ``t = tan(a / 2)``."""
    d = 1.0 + t * t
    return (1.0 - t * t) / d, 2.0 * t / d


def _add_angles(t1: float, t2: float) -> float:
    """``tan((a1 + a2) / 2)`` from ``tan(a1 / 2)`` and ``tan(a2 / 2)``."""
    return (t1 + t2) / (1.0 - t1 * t2)


def _unit_circle(per_octant: int) -> np.ndarray:
    """Points on the unit circle in angle order, built from rational points and symmetry."""
    r = float(np.sqrt(2.0)) - 1.0  # tan(pi / 8)
    t = (np.arange(per_octant) + 0.5) / per_octant * r
    c = (1.0 - t * t) / (1.0 + t * t)
    s = 2.0 * t / (1.0 + t * t)
    quarter = np.concatenate([np.stack([c, s], 1), np.stack([s, c], 1)[::-1]])
    out = [quarter]
    for _ in range(3):
        q = out[-1]
        out.append(np.stack([-q[:, 1], q[:, 0]], 1))  # rotate by 90 degrees, exactly
    return np.concatenate(out)


_CIRCLE = _unit_circle(6)  # 48 points


def _rotate(pts: np.ndarray, t: float) -> np.ndarray:
    c, s = _cs(t)
    out = np.empty_like(pts)
    out[:, 0] = c * pts[:, 0] - s * pts[:, 1]
    out[:, 1] = s * pts[:, 0] + c * pts[:, 1]
    return out


def _ellipse(cx: float, cy: float, a: float, b: float, t: float = 0.0) -> np.ndarray:
    pts = _CIRCLE * np.array([a, b])
    if t:
        pts = _rotate(pts, t)
    return pts + np.array([cx, cy])


def _poly(points: list[tuple[float, float]], origin: tuple[float, float], t: float = 0.0):
    pts = np.asarray(points, dtype=np.float64)
    if t:
        pts = _rotate(pts, t)
    return pts + np.asarray(origin, dtype=np.float64)


def _arc(pts: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The contiguous run of ``pts`` (a closed outline) where ``mask`` holds."""
    if mask.all():
        return pts
    start = int(np.argmin(mask))  # first False: the True run is contiguous after rolling
    return np.roll(pts, -start, 0)[np.roll(mask, -start)]


def _rgb(values: Iterable[int]) -> RGB:
    r, g, b = values
    return r, g, b


def _shade(rgb: RGB, f: float) -> RGB:
    return _rgb(int(min(255.0, max(0.0, c * f))) for c in rgb)


def _mix(a: RGB, b: RGB, w: float) -> RGB:
    return _rgb(int(x * (1.0 - w) + y * w) for x, y in zip(a, b, strict=True))


def _jitter(rgb: RGB, rng: np.random.Generator, amount: int) -> RGB:
    d = rng.integers(-amount, amount + 1, size=3)
    return _rgb(int(min(255, max(0, c + int(x)))) for c, x in zip(rgb, d, strict=True))


# A shape: (canonical outline points, fill colour, draw an outline?)
Shape = tuple[np.ndarray, RGB, bool]


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(rng.random())


# --- bird parts (canonical coordinates) ------------------------------------------------------


def _head_shapes(
    hc: tuple[float, float], r: float, colour: RGB, crown: str, eyering: str
) -> tuple[list[Shape], list[Shape], tuple[float, float]]:
    """(shapes drawn behind the head, head shapes, eye centre)."""
    hx, hy = hc
    behind: list[Shape] = []
    shapes: list[Shape] = [(_ellipse(hx, hy, r, r), colour, True)]
    ex, ey = hx + 0.36 * r, hy - 0.14 * r
    if crown == "crest":
        crest = [(-0.55 * r, -0.55 * r), (-1.35 * r, -1.15 * r), (0.05 * r, -0.9 * r)]
        behind.append((_poly(crest, hc), MARK_DARK, True))
    n = np.array([0.33, -0.94])  # up and slightly forward
    circle = _ellipse(hx, hy, r, r)
    if crown in ("cap", "striped"):
        mask = (circle[:, 0] - hx) * n[0] + (circle[:, 1] - hy) * n[1] > 0.38 * r
        shapes.append((_arc(circle, mask), MARK_DARK, False))
    if crown == "striped":
        sx, sy = hx + n[0] * 0.72 * r, hy + n[1] * 0.72 * r
        shapes.append((_ellipse(sx, sy, 0.62 * r, 0.1 * r, 0.17), MARK_LIGHT, False))
    if crown == "eyestripe":
        shapes.append((_ellipse(ex - 0.3 * r, ey, 0.72 * r, 0.15 * r, -0.05), MARK_DARK, False))
    if eyering != "none":
        shapes.append((_ellipse(ex, ey, 0.3 * r, 0.3 * r), RING_COLOURS[eyering], False))
    shapes.append((_ellipse(ex, ey, 0.17 * r, 0.17 * r), (16, 14, 14), False))
    return behind, shapes, (ex, ey)


_BEAKS: dict[str, list[tuple[float, float]]] = {
    "conical": [(-0.03, -0.06), (0.13, -0.005), (0.13, 0.005), (-0.03, 0.06)],
    "thin": [(-0.03, -0.03), (0.25, -0.004), (0.25, 0.004), (-0.03, 0.03)],
    "decurved": [
        (-0.03, -0.032),
        (0.08, -0.028),
        (0.16, -0.008),
        (0.23, 0.04),
        (0.27, 0.095),
        (0.255, 0.1),
        (0.2, 0.058),
        (0.13, 0.03),
        (0.06, 0.024),
        (-0.03, 0.03),
    ],
    "hooked": [
        (-0.03, -0.06),
        (0.07, -0.055),
        (0.13, -0.025),
        (0.155, 0.03),
        (0.135, 0.075),
        (0.115, 0.038),
        (0.06, 0.034),
        (-0.03, 0.048),
    ],
}


def _beak_shape(base: tuple[float, float], beak: str, colour: RGB, t: float) -> Shape:
    return (_poly(_BEAKS[beak], base, t), colour, True)


def _wing_outline(cx: float, cy: float, a: float, b: float, t: float) -> np.ndarray:
    pts = _CIRCLE * np.array([a, b])
    back = pts[:, 0] < 0
    pts[back, 1] *= 1.0 + 0.4 * pts[back, 0] / a  # taper to a point at the rear
    return _rotate(pts, t) + np.array([cx, cy])


def _wing_shapes(
    cx: float, cy: float, a: float, b: float, t: float, colour: RGB, pattern: str
) -> list[Shape]:
    shapes: list[Shape] = [(_wing_outline(cx, cy, a, b, t), colour, True)]
    c = np.array([cx, cy])

    def local(px: float, py: float) -> tuple[float, float]:
        p = _rotate(np.array([[px, py]]), t)[0] + c
        return float(p[0]), float(p[1])

    if pattern == "onebar":
        shapes.append((_ellipse(*local(0.22 * a, 0.0), 0.09 * a, 0.8 * b, t), MARK_LIGHT, False))
    elif pattern == "twobar":
        for x in (0.36 * a, -0.02 * a):
            shapes.append((_ellipse(*local(x, 0.0), 0.06 * a, 0.78 * b, t), MARK_LIGHT, False))
    elif pattern == "spotted":
        for px, py in ((0.4, -0.35), (0.4, 0.3), (0.1, -0.45), (0.1, 0.2), (-0.2, -0.3)):
            sx, sy = local(px * a, py * b)
            shapes.append((_ellipse(sx, sy, 0.07 * a, 0.07 * a), MARK_LIGHT, False))
    elif pattern == "tipped":
        outline = _wing_outline(0.0, 0.0, a, b, 0.0)
        tip = _arc(outline, outline[:, 0] < -0.5 * a)
        shapes.append((_rotate(tip, t) + c, MARK_DARK, False))
    return shapes


_TAILS: dict[str, list[tuple[float, float]]] = {
    "square": [(0.0, -0.05), (-0.3, -0.085), (-0.3, 0.085), (0.0, 0.05)],
    "forked": [
        (0.0, -0.05),
        (-0.37, -0.12),
        (-0.24, -0.01),
        (-0.24, 0.01),
        (-0.37, 0.12),
        (0.0, 0.05),
    ],
    "rounded": [
        (0.0, -0.05),
        (-0.2, -0.1),
        (-0.28, -0.08),
        (-0.325, 0.0),
        (-0.28, 0.08),
        (-0.2, 0.1),
        (0.0, 0.05),
    ],
    "pointed": [(0.0, -0.055), (-0.25, -0.045), (-0.46, 0.0), (-0.25, 0.045), (0.0, 0.055)],
}


def _tail_shape(base: tuple[float, float], tail: str, colour: RGB, t: float) -> Shape:
    return (_poly(_TAILS[tail], base, t), colour, True)


@dataclass
class _Bird:
    behind: list[Shape]  # far wing, tail, legs (drawn first)
    front: list[Shape]  # body and everything on it
    parts: dict[str, tuple[float, float]]  # canonical part locations (near side only)
    feet: tuple[float, float]


def _build_bird(cls: BirdClass, rng: np.random.Generator) -> _Bird:
    """Canonical bird shapes for one image of ``cls`` with per-image shape and colour jitter."""
    body = _jitter(BODY_COLOURS[cls.body_colour], rng, 14)
    wing = _shade(body, 0.74)
    tail_c = _shade(body, 0.68)
    belly = _mix(body, (236, 230, 214), 0.38)
    beak_c = _jitter(BEAK_COLOURS[cls.beak_colour], rng, 10)
    bb = 0.28 * _u(rng, 0.9, 1.1)
    hr = 0.165 * _u(rng, 0.9, 1.1)
    hx, hy = 0.47 + _u(rng, -0.03, 0.03), -0.25 + _u(rng, -0.04, 0.03)
    wing_t = -0.07 + _u(rng, -0.04, 0.04)
    tail_t = _u(rng, -0.22, 0.02)
    head_t = _u(rng, -0.12, 0.1)  # beak pitch

    behind: list[Shape] = []
    front: list[Shape] = []
    # far wing peeks above the back; tail and legs sit under the body
    behind.append(
        (_wing_outline(-0.03, -0.13, 0.34, 0.13, wing_t - 0.05), _shade(wing, 0.85), True)
    )
    behind.append(_tail_shape((-0.42, 0.05), cls.attr("tail"), tail_c, tail_t))
    for lx in (0.07, -0.03):
        leg = [(lx - 0.012, 0.2), (lx + 0.012, 0.2), (lx + 0.042, 0.46), (lx + 0.018, 0.46)]
        behind.append((_poly(leg, (0.0, 0.0)), LEG_COLOUR, False))
        foot = [(lx + 0.0, 0.45), (lx + 0.1, 0.452), (lx + 0.1, 0.472), (lx + 0.0, 0.47)]
        behind.append((_poly(foot, (0.0, 0.0)), LEG_COLOUR, False))

    front.append((_ellipse(0.0, 0.0, 0.5, bb), body, True))
    front.append((_ellipse(0.05, 0.38 * bb, 0.38, 0.55 * bb, -0.03), belly, False))
    breast = (0.3, 0.25 * bb)
    if cls.attr("breast") != "none":
        patch = _jitter(PATCH_COLOURS[cls.attr("breast")], rng, 10)
        front.append((_ellipse(*breast, 0.1, 0.42 * bb, -0.2), patch, False))
    front.append((_ellipse(0.37, -0.13, 0.14, 0.11, -0.3), body, False))  # neck
    crest, head, eye = _head_shapes((hx, hy), hr, body, cls.attr("crown"), cls.attr("eyering"))
    beak_base = (hx + 0.93 * hr, hy + 0.12 * hr)
    beak = _beak_shape(beak_base, cls.attr("beak"), beak_c, head_t)
    front.extend(crest)
    front.extend(head)
    front.append(beak)
    wx, wy = -0.07, -0.05
    front.extend(_wing_shapes(wx, wy, 0.36, 0.15, wing_t, wing, cls.attr("wingbar")))

    tail_pts = behind[1][0]
    parts = {
        "body": (0.0, 0.0),
        "breast": breast,
        "head": (hx, hy),
        "crown": (hx - 0.1 * hr, hy - 0.75 * hr),
        "beak": tuple(beak[0].mean(0)),
        "right_eye": eye,
        "right_wing": (wx, wy),
        "tail": tuple(tail_pts.mean(0)),
    }
    return _Bird(behind, front, parts, (0.1, 0.46))


# --- composition -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderSpec:
    """Per-dataset drawing settings (a subset of the generator settings)."""

    image_width: int
    image_height: int
    size_jitter: float
    portrait_fraction: float
    min_bird_area: float
    max_bird_area: float
    max_rotation_deg: float
    supersample: int
    jpeg_quality: int


@dataclass(frozen=True)
class ImageRecord:
    """Annotations of one generated image (continuous pixel coordinates)."""

    width: int
    height: int
    bbox: tuple[float, float, float, float]  # x, y, w, h
    parts: tuple[tuple[float, float, int], ...]  # per PART_NAMES: x, y, visible


class _Canvas:
    """A supersampled drawing surface taking image-pixel coordinates."""

    def __init__(self, image: Image.Image, ss: int):
        self.image = image
        self.draw = ImageDraw.Draw(image)
        self.ss = ss

    def poly(self, pts: np.ndarray, fill: RGB, outline: RGB | None = None, width: int = 1):
        flat = (pts * self.ss - 0.5).ravel().tolist()
        if len(flat) < 6:
            return
        self.draw.polygon(flat, fill=fill, outline=outline, width=width if outline else 0)

    def line(self, pts: np.ndarray, fill: RGB, width: float):
        flat = (pts * self.ss - 0.5).ravel().tolist()
        self.draw.line(flat, fill=fill, width=max(1, int(width * self.ss)))


def _transform(pts: np.ndarray, mirror: float, t: float, scale: float, tx: float, ty: float):
    c, s = _cs(t)
    x = pts[:, 0] * mirror
    y = pts[:, 1]
    out = np.empty_like(pts)
    out[:, 0] = (c * x - s * y) * scale + tx
    out[:, 1] = (s * x + c * y) * scale + ty
    return out


def _inside(point: np.ndarray, poly: np.ndarray) -> bool:
    """Even-odd point-in-polygon test."""
    x, y = float(point[0]), float(point[1])
    x0, y0 = poly[:, 0], poly[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    crosses = (y0 > y) != (y1 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        xi = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
    return bool(np.count_nonzero(crosses & (x < xi)) % 2)


def _distractor(
    canvas: _Canvas, rng: np.random.Generator, w: int, h: int, scale: float, outline_w: int
):
    """A bird part (shape and colours from the same tables) alone in the clutter."""
    kind = int(rng.integers(7))
    colour = list(BODY_COLOURS.values())[int(rng.integers(len(BODY_COLOURS)))]
    colour = _jitter(colour, rng, 14)
    s = scale * _u(rng, 0.6, 1.3)
    t = _u(rng, -1.0, 1.0)
    cx, cy = _u(rng, 0, w), _u(rng, 0, h)
    mirror = 1.0 if rng.random() < 0.5 else -1.0
    shapes: list[Shape]
    if kind == 0:  # body blob
        shapes = [(_ellipse(0.0, 0.0, 0.5, 0.28), colour, True)]
    elif kind == 1:  # head with a marking, eye ring
        crown = ATTRIBUTES["crown"][int(rng.integers(ATTR_SIZES[0]))]
        ring = ATTRIBUTES["eyering"][int(rng.integers(ATTR_SIZES[1]))]
        behind, head, _ = _head_shapes((0.0, 0.0), 0.165, colour, crown, ring)
        shapes = behind + head
    elif kind == 2:  # beak
        beak = ATTRIBUTES["beak"][int(rng.integers(ATTR_SIZES[2]))]
        bc = list(BEAK_COLOURS.values())[int(rng.integers(len(BEAK_COLOURS)))]
        shapes = [_beak_shape((0.0, 0.0), beak, bc, 0.0)]
        s *= 1.5
    elif kind == 3:  # wing with its pattern
        pat = ATTRIBUTES["wingbar"][int(rng.integers(ATTR_SIZES[3]))]
        shapes = _wing_shapes(0.0, 0.0, 0.36, 0.15, 0.0, _shade(colour, 0.74), pat)
    elif kind == 4:  # tail
        tail = ATTRIBUTES["tail"][int(rng.integers(ATTR_SIZES[4]))]
        shapes = [_tail_shape((0.15, 0.0), tail, _shade(colour, 0.68), 0.0)]
    elif kind == 5:  # patch colour blob
        pc = list(PATCH_COLOURS.values())[int(rng.integers(len(PATCH_COLOURS)))]
        shapes = [(_ellipse(0.0, 0.0, 0.1, 0.12), _jitter(pc, rng, 10), False)]
        s *= 1.5
    else:  # eye-ring-like ring
        rc = list(RING_COLOURS.values())[int(rng.integers(len(RING_COLOURS)))]
        shapes = [
            (_ellipse(0.0, 0.0, 0.05, 0.05), rc, False),
            (_ellipse(0.0, 0.0, 0.028, 0.028), (16, 14, 14), False),
        ]
        s *= 1.5
    for pts, fill, outlined in shapes:
        p = _transform(pts, mirror, t, s, cx, cy)
        canvas.poly(p, fill, _shade(fill, 0.7) if outlined else None, outline_w)


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Smooth colour field plus two octaves of texture noise, as int16 (h, w, 3)."""
    k = int(rng.integers(2, 4))
    idx = rng.integers(len(BACKGROUND_COLOURS), size=k)
    pal = np.array([BACKGROUND_COLOURS[int(i)] for i in idx], dtype=np.int16)
    gx, gy = int(rng.integers(2, 6)), int(rng.integers(2, 5))
    cells = pal[rng.integers(k, size=(gy, gx))] + rng.integers(-16, 17, size=(gy, gx, 3))
    field = Image.fromarray(np.clip(cells, 0, 255).astype(np.uint8)).resize(
        (w, h), Image.Resampling.BICUBIC
    )
    out = np.asarray(field, dtype=np.int16)
    for cell, amp in ((16, int(rng.integers(6, 30))), (4, int(rng.integers(3, 14)))):
        nw, nh = max(2, w // cell), max(2, h // cell)
        noise = rng.integers(-amp, amp + 1, size=(nh, nw), dtype=np.int16)
        img = Image.fromarray((noise + 128).astype(np.uint8)).resize(
            (w, h), Image.Resampling.BILINEAR
        )
        out = out + (np.asarray(img, dtype=np.int16) - 128)[:, :, None]
    return out


def _clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int, scale: float):
    """Leaves, twigs and blobs in natural colours, drawn on the 1x background."""
    for _ in range(int(rng.integers(6, 16))):
        kind = int(rng.integers(3))
        cx, cy = _u(rng, 0, w), _u(rng, 0, h)
        if kind == 0:
            a = scale * _u(rng, 0.06, 0.3)
            pts = _ellipse(cx, cy, a, a * _u(rng, 0.3, 0.6), _u(rng, -1.0, 1.0))
            colour = _jitter(LEAF_COLOURS[int(rng.integers(len(LEAF_COLOURS)))], rng, 16)
            draw.polygon(pts.ravel().tolist(), fill=colour)
        elif kind == 1:
            length = scale * _u(rng, 0.3, 1.5)
            c, s = _cs(_u(rng, -1.0, 1.0))
            ends = [cx - c * length, cy - s * length, cx + c * length, cy + s * length]
            colour = _jitter(BARK_COLOURS[int(rng.integers(len(BARK_COLOURS)))], rng, 16)
            draw.line(ends, fill=colour, width=max(1, int(scale * _u(rng, 0.02, 0.08))))
        else:
            a = scale * _u(rng, 0.1, 0.5)
            pts = _ellipse(cx, cy, a, a * _u(rng, 0.5, 1.0), _u(rng, -1.0, 1.0))
            colour = BACKGROUND_COLOURS[int(rng.integers(len(BACKGROUND_COLOURS)))]
            draw.polygon(pts.ravel().tolist(), fill=_jitter(colour, rng, 20))


def image_size(spec: RenderSpec, rng: np.random.Generator) -> tuple[int, int]:
    """CUB-like size: long side fixed, short side jittered, some portraits."""
    long_side = max(spec.image_width, spec.image_height)
    short = min(spec.image_width, spec.image_height) * _u(
        rng, 1.0 - spec.size_jitter, 1.0 + spec.size_jitter
    )
    short_i = int(min(long_side, max(16, round(short))))
    landscape = spec.image_width >= spec.image_height
    if rng.random() < spec.portrait_fraction:
        landscape = not landscape
    return (long_side, short_i) if landscape else (short_i, long_side)


def render(
    cls: BirdClass, spec: RenderSpec, rng: np.random.Generator
) -> tuple[Image.Image, ImageRecord]:
    """Draw one image of ``cls``; returns the RGB image and its annotations."""
    w, h = image_size(spec, rng)
    ss = spec.supersample
    bird = _build_bird(cls, rng)

    # pose: mirror, rotation (around a head-up canonical tilt), bird area fraction, position
    mirror = 1.0 if rng.random() < 0.5 else -1.0
    t_max = tan_half_deg(spec.max_rotation_deg)
    t = _add_angles(tan_half_deg(-10.0), _u(rng, -t_max, t_max))
    all_pts = np.concatenate([p for p, _, _ in bird.behind + bird.front])
    unit = _transform(all_pts, mirror, t, 1.0, 0.0, 0.0)
    lo, hi = unit.min(0), unit.max(0)
    bw, bh = float(hi[0] - lo[0]), float(hi[1] - lo[1])
    frac_lo, frac_hi = float(np.sqrt(spec.min_bird_area)), float(np.sqrt(spec.max_bird_area))
    frac = _u(rng, frac_lo, frac_hi)
    frac = frac * frac
    scale = float(np.sqrt(frac * w * h / (bw * bh)))
    scale = min(scale, 0.96 * w / bw, 0.96 * h / bh)
    outline = max(1.0, 0.01 * scale)  # outline width, image pixels
    margin = outline
    tx = _u(rng, margin - lo[0] * scale, w - margin - hi[0] * scale)
    ty = _u(rng, margin - lo[1] * scale, h - margin - hi[1] * scale)

    def place(p: np.ndarray) -> np.ndarray:
        return _transform(p, mirror, t, scale, tx, ty)

    # background: texture, clutter and half of the distractors, blurred; then sharp content
    bg = _background(rng, w, h)
    base = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(base)
    _clutter(draw, rng, w, h, scale)
    n_distract = int(rng.integers(3, 8))
    n_blurred = int(rng.integers(0, n_distract + 1))
    canvas1 = _Canvas(base, 1)
    for _ in range(n_blurred):
        _distractor(canvas1, rng, w, h, scale, 1)
    radius = _u(rng, -0.5, 2.5)
    if radius > 0.2:
        base = base.filter(ImageFilter.GaussianBlur(radius))
    big = base.resize((w * ss, h * ss), Image.Resampling.NEAREST) if ss > 1 else base
    canvas = _Canvas(big, ss)
    ow = max(1, int(outline * ss))
    for _ in range(n_distract - n_blurred):
        _distractor(canvas, rng, w, h, scale, ow)

    # perch through the feet
    if rng.random() < 0.75:
        feet = place(np.array([bird.feet]))[0]
        c, s = _cs(_u(rng, -0.2, 0.2))
        reach = 2.0 * (w + h)
        ends = np.array([feet - reach * np.array([c, s]), feet + reach * np.array([c, s])])
        bark = _jitter(BARK_COLOURS[int(rng.integers(len(BARK_COLOURS)))], rng, 12)
        canvas.line(ends, bark, scale * _u(rng, 0.04, 0.09))

    bird_pts = []
    for pts, fill, outlined in bird.behind + bird.front:
        p = place(pts)
        bird_pts.append(p)
        canvas.poly(p, fill, _shade(fill, 0.65) if outlined else None, ow)

    # parts; foreground leaves may hide some of them
    locs = {name: place(np.array([xy]))[0] for name, xy in bird.parts.items()}
    occluders = []
    if rng.random() < 0.2:
        names = list(locs)
        for _ in range(int(rng.integers(1, 4))):
            anchor = locs[names[int(rng.integers(len(names)))]]
            a = scale * _u(rng, 0.1, 0.22)
            pts = _ellipse(
                float(anchor[0]) + scale * _u(rng, -0.2, 0.2),
                float(anchor[1]) + scale * _u(rng, -0.2, 0.2),
                a,
                a * _u(rng, 0.35, 0.55),
                _u(rng, -1.0, 1.0),
            )
            colour = _jitter(LEAF_COLOURS[int(rng.integers(len(LEAF_COLOURS)))], rng, 16)
            canvas.poly(pts, colour, _shade(colour, 0.7), ow)
            occluders.append(pts)

    out = big.reduce(ss) if ss > 1 else big
    # global illumination (brightness and white balance) and sensor noise
    arr = np.asarray(out, dtype=np.float32)
    gain = _u(rng, 0.8, 1.15) * (0.94 + 0.12 * rng.random(3))
    noise = rng.integers(-5, 6, size=(h, w, 1), dtype=np.int16).astype(np.float32)
    arr = np.clip(arr * gain.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(arr)

    allp = np.concatenate(bird_pts)
    x0 = max(0.0, float(np.floor(allp[:, 0].min() - outline / 2)))
    y0 = max(0.0, float(np.floor(allp[:, 1].min() - outline / 2)))
    x1 = min(float(w), float(np.ceil(allp[:, 0].max() + outline / 2)))
    y1 = min(float(h), float(np.ceil(allp[:, 1].max() + outline / 2)))
    near = "right" if mirror > 0 else "left"
    parts = []
    for name in PART_NAMES:
        side = name.split("_")[0] if name.endswith(("_eye", "_wing")) else None
        key = name if side is None else "right_" + name.split("_")[1]
        if side is not None and side != near:
            parts.append((0.0, 0.0, 0))
            continue
        p = locs[key]
        px, py = round(float(p[0]), 1), round(float(p[1]), 1)
        hidden = any(_inside(p, o) for o in occluders)
        inside = x0 <= px <= x1 and y0 <= py <= y1
        parts.append((px, py, 1) if inside and not hidden else (0.0, 0.0, 0))
    record = ImageRecord(w, h, (x0, y0, x1 - x0, y1 - y0), tuple(parts))
    return image, record


def save_jpeg(image: Image.Image, path: Path, quality: int) -> None:
    """Fixed encoder settings: baseline, no optimisation, 4:2:0 like most photos, no metadata."""
    image.save(path, "JPEG", quality=quality, subsampling=2, optimize=False, progressive=False)


def render_chunk(
    args: tuple[RenderSpec, int, str, list[tuple[BirdClass, int, str]]],
) -> list[ImageRecord]:
    """Worker entry point: render and save a list of ``(class, image index, relpath)`` jobs."""
    spec, seed, out_dir, jobs = args
    records = []
    for cls, idx, rel in jobs:
        rng = np.random.default_rng(np.random.SeedSequence([seed, 1, cls.index, idx]))
        image, record = render(cls, spec, rng)
        save_jpeg(image, Path(out_dir) / rel, spec.jpeg_quality)
        records.append(record)
    return records
