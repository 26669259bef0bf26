"""Synthetic fine-grained birds in the exact CUB-200-2011 layout (the default, offline dataset).

Why it exists: CUB-200-2011 and ImageNet weights cannot be fetched without internet (CI, fresh
machines, the GPU test box), yet the main job must run end to end there through the SAME loader
as real CUB.  So this module draws a dataset procedurally and writes it as CUB files;
:class:`SynthBirdsDataModule` is a :class:`~stnrepro.data.cub.CUBDataModule` whose root is a
generated folder.

Design (the principles that make a spatial transformer useful on CUB, nothing tuned to make a
row of the table win):

* **Fine-grained classes.**  Each image shows one bird made of parts (body, belly, head, neck,
  beak, near wing, far wing peeking above the back, tail, legs).  A class is a combination of
  six *fine* attributes, each confined to a small region: head marking (plain, cap, eye stripe,
  crest, striped crown), eye ring (none, white, red), beak shape (conical, thin, decurved,
  hooked), wing pattern (plain, one bar, two bars, spotted, dark tip), tail shape (square,
  forked, rounded, pointed) and a small breast patch (none, red, yellow, blue, white).
  Classes come in genera of ``genus_size``: a random base combination plus siblings that
  differ from it in 1-2 fine attributes, so most classes have close neighbours that differ
  only in one or two small regions (as CUB's warblers, gulls, sparrows).
* **Coarse nuisance.**  Body colour (8 values) and beak colour (3) are genus-level and each
  body colour is shared by many genera (with per-image jitter); body/head proportions, head
  position, beak pitch, wing and tail angles vary per image.  The large-area colour (body)
  at best narrows a class down to the ~1/8 of classes sharing it.
* **Pose and clutter.**  Per image: position, scale (the bird's box covers 10-60% of the
  image area, uniform in linear size), rotation (+-30 degrees around a head-up pose), mirror,
  brightness/white balance, sensor noise; a textured background (smooth colour field, two
  noise octaves, leaves, twigs, blobs, a random blur) and 3-7 *distractors* that reuse the bird
  part shapes and colours (heads with markings, beaks, barred wings, tails, patch-coloured
  blobs, eye rings), so neither colour statistics nor "a ring somewhere" give the class away;
  a perch through the feet; sometimes foreground leaves that hide parts.
* **CUB-like images.**  JPEG (quality 90, 4:2:0 like most photos) at about 500x375 (long side
  fixed, short side +-20%, 15% portraits), so 224 vs 448 input resolution changes what detail
  survives: the discriminative detail is a few pixels at 224, located at parts whose position
  varies - which is exactly what an ST-CNN's learned crops can zoom into.

Files: ``images/<class_dir>/<name>.jpg``, ``images.txt``, ``classes.txt``,
``image_class_labels.txt``, ``train_test_split.txt`` (per class ``round(train_fraction * n)``
train images, chosen at random), ``bounding_boxes.txt`` (tight box of the drawn bird),
``parts/parts.txt`` and ``parts/part_locs.txt`` (body, breast, head, crown, beak, left/right
eye, left/right wing, tail; the far-side eye/wing and parts hidden by foreground leaves are
``0 0 0`` like CUB's invisible parts), plus ``class_attributes.txt``, ``synth_settings.json``
and a ``README.md`` stating generator version, seed, preset and all settings.

Determinism: each image has its own numpy generator seeded by ``SeedSequence([seed, 1, class,
index])`` (classes by ``[seed, 2]``, the split by ``[seed, 0, class]``), so results do not
depend on the worker count or order; the drawing avoids libm (see
:mod:`stnrepro.data.synth_draw`) and the JPEG encoder settings are fixed.  The same settings
give byte-identical files given the same numpy/Pillow/libjpeg versions (recorded in the
README).

Settings: the presets are the data configs ``conf/data/synth_birds.yaml`` (every generator
setting, once) and ``synth_birds_tiny.yaml`` (inherits it, smaller); this module has no
defaults of its own, so what ``--cfg job`` shows is what is generated.
:func:`preset_settings` composes a preset for callers outside a training job.

Caching: the folder name encodes preset, generator version, seed and a hash of all settings,
so a change never reuses or overwrites another dataset.  Generation writes into a temporary
sibling and renames it into place at the very end, under a lock file: an interrupted run
leaves nothing that looks complete, and two processes generating at once end with one folder
(the second waits for the lock and reuses it).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import textwrap
import time
import uuid
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from stnrepro.data import synth_draw
from stnrepro.data.cub import CUBDataModule, CUBIndex
from stnrepro.data.synth_draw import ImageRecord
from stnrepro.errors import ConfigError, DataError

__all__ = [
    "GENERATOR_VERSION",
    "SynthBirdsDataModule",
    "SynthSettings",
    "dataset_dir",
    "ensure_generated",
    "folder_name",
    "generate",
    "generate_into",
    "is_complete",
    "make_settings",
    "preset_settings",
]

#: Bump whenever the output for given settings changes (it is part of the folder name).
GENERATOR_VERSION = 1
COMPLETE_MARKER = ".synth_complete"
CHUNK = 16  # images per worker task


@dataclass(frozen=True)
class SynthSettings:
    """Everything that determines the generated files (all of it goes into the folder hash).

    ``preset`` names the data config the settings came from (it is part of the folder name);
    the values themselves are always given explicitly (see :func:`make_settings`).
    """

    preset: str
    num_classes: int
    images_per_class: int
    image_width: int
    image_height: int
    size_jitter: float
    portrait_fraction: float
    genus_size: int
    train_fraction: float
    min_bird_area: float
    max_bird_area: float
    max_rotation_deg: float
    jpeg_quality: int
    gen_seed: int = 0
    supersample: int = 2
    # Extra images per class that are all test images, drawn after the ``images_per_class``
    # ones (each image's content depends only on its class and number), so a larger test
    # split leaves every training image and the train/test split of the first ones as they were.
    extra_test_per_class: int = 0

    @property
    def num_images(self) -> int:
        return self.num_classes * (self.images_per_class + self.extra_test_per_class)

    @property
    def num_train_per_class(self) -> int:
        return int(round(self.train_fraction * self.images_per_class))

    def render_spec(self) -> synth_draw.RenderSpec:
        keys = {f.name for f in fields(synth_draw.RenderSpec)}
        return synth_draw.RenderSpec(**{k: v for k, v in asdict(self).items() if k in keys})


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"data.{key}={value!r}: expected {expected}")


def _as_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"data.{key}={value!r}: expected an integer")
    return int(value)


def _as_float(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"data.{key}={value!r}: expected a number")
    return float(value)


#: The generator settings a data config must give (``supersample`` has a fixed default).
GENERATOR_KEYS: tuple[str, ...] = tuple(
    f.name for f in fields(SynthSettings) if f.name not in ("preset", "gen_seed", "supersample")
)
_DATA_MODULE = "stnrepro.data.synthetic.SynthBirdsDataModule"


def make_settings(preset: str, gen_seed: int = 0, **values: Any) -> SynthSettings:
    """Validated settings from explicit ``values`` (every key of :data:`GENERATOR_KEYS`).

    There are no defaults here on purpose: the data configs are the one place for them
    (:func:`preset_settings` reads one).
    """
    if not isinstance(preset, str) or not preset:
        raise ConfigError(f"data.preset={preset!r}: expected a preset name")
    for key, value in values.items():
        if key not in GENERATOR_KEYS and key != "supersample":
            raise ConfigError(
                f"data.{key}={value!r}: unknown generator setting, expected one of "
                + ", ".join(GENERATOR_KEYS)
            )
    missing = [k for k in GENERATOR_KEYS if values.get(k) is None]
    if missing:
        raise ConfigError(
            f"data.{missing[0]}: missing (expected a value; the synthetic data configs "
            "conf/data/synth_birds*.yaml set every generator setting)"
        )
    ints = ("num_classes", "images_per_class", "image_width", "image_height", "genus_size")
    ints += ("extra_test_per_class",)
    for key in (*ints, "jpeg_quality", "supersample"):
        if key in values:
            values[key] = _as_int(key, values[key])
    for key in values:
        if key not in ints and key not in ("jpeg_quality", "supersample"):
            values[key] = _as_float(key, values[key])
    seed = _as_int("gen_seed", gen_seed)
    s = SynthSettings(preset=preset, gen_seed=seed, **values)
    _check(s.gen_seed >= 0, "gen_seed", s.gen_seed, "an integer >= 0")
    for key in ("num_classes", "genus_size"):
        _check(getattr(s, key) >= 1, key, getattr(s, key), "a positive integer")
    _check(s.images_per_class >= 2, "images_per_class", s.images_per_class, "an integer >= 2")
    _check(
        s.extra_test_per_class >= 0,
        "extra_test_per_class",
        s.extra_test_per_class,
        "an integer >= 0",
    )
    for key in ("image_width", "image_height"):
        _check(getattr(s, key) >= 32, key, getattr(s, key), "an integer >= 32 (pixels)")
    _check(0 <= s.size_jitter < 0.5, "size_jitter", s.size_jitter, "0 <= size_jitter < 0.5")
    _check(
        0 <= s.portrait_fraction <= 1, "portrait_fraction", s.portrait_fraction, "a value in [0, 1]"
    )
    n_train = s.num_train_per_class
    _check(
        0 < s.train_fraction < 1 and 1 <= n_train < s.images_per_class,
        "train_fraction",
        s.train_fraction,
        f"a fraction leaving >= 1 train and >= 1 test image of {s.images_per_class} per class",
    )
    _check(
        0 < s.min_bird_area <= s.max_bird_area <= 0.9,
        "min_bird_area/max_bird_area",
        (s.min_bird_area, s.max_bird_area),
        "0 < min <= max <= 0.9 (fractions of the image area)",
    )
    _check(0 <= s.max_rotation_deg <= 90, "max_rotation_deg", s.max_rotation_deg, "0..90 degrees")
    _check(1 <= s.jpeg_quality <= 100, "jpeg_quality", s.jpeg_quality, "an integer in 1..100")
    _check(1 <= s.supersample <= 4, "supersample", s.supersample, "an integer in 1..4")
    return s


def synthetic_presets() -> list[str]:
    """Names of the data configs that describe a synthetic dataset (sorted)."""
    from stnrepro.config import compose_config, config_dir

    names = sorted(p.stem for p in (config_dir() / "data").glob("*.yaml"))
    return [n for n in names if compose_config([f"data={n}"]).data.get("_target_") == _DATA_MODULE]


def preset_settings(preset: str, gen_seed: int | None = None, **overrides: Any) -> SynthSettings:
    """Settings of the data config ``conf/data/<preset>.yaml`` with ``overrides`` applied.

    Composes the config with Hydra (as ``stn-train data=<preset>`` would), so it is for callers
    outside a training job (the ``stn-data`` command, the benchmark, tests); a job's data
    module receives every value from its own config.  ``None`` overrides are ignored.
    """
    from hydra.errors import HydraException

    from stnrepro.config import compose_config

    try:
        data = compose_config([f"data={preset}"]).data
    except HydraException:
        data = None
    if data is None or data.get("_target_") != _DATA_MODULE:
        raise ConfigError(
            f"data.preset={preset!r}: expected one of {', '.join(synthetic_presets())}"
        )
    values = {k: data[k] for k in GENERATOR_KEYS}
    values.update({k: v for k, v in overrides.items() if v is not None})  # checked below
    seed = data.gen_seed if gen_seed is None else gen_seed
    return make_settings(str(data.preset), gen_seed=seed, **values)


def settings_hash(settings: SynthSettings) -> str:
    """Short hash of every setting plus the generator version.

    ``extra_test_per_class`` enters only when it is set, so folders made before it existed
    keep their names.
    """
    values = asdict(settings)
    if not values["extra_test_per_class"]:
        del values["extra_test_per_class"]
    blob = json.dumps({"version": GENERATOR_VERSION, **values}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def folder_name(settings: SynthSettings) -> str:
    """``<preset>-v<version>-seed<seed>-<hash>``: a changed setting never reuses a folder."""
    return (
        f"{settings.preset}-v{GENERATOR_VERSION}-seed{settings.gen_seed}-{settings_hash(settings)}"
    )


def dataset_dir(settings: SynthSettings, cache_dir: str | Path) -> Path:
    """Where ``settings`` live under ``cache_dir`` (absolute)."""
    return Path(cache_dir).expanduser().absolute() / folder_name(settings)


def _marker_text(settings: SynthSettings) -> str:
    return json.dumps({"version": GENERATOR_VERSION, **asdict(settings)}, sort_keys=True) + "\n"


def is_complete(root: str | Path, settings: SynthSettings | None = None) -> bool:
    """True if ``root`` is a finished generation (of ``settings``, when given)."""
    marker = Path(root) / COMPLETE_MARKER
    if not marker.is_file():
        return False
    if settings is None:
        return True
    try:
        return marker.read_text() == _marker_text(settings)
    except OSError:
        return False


# --------------------------------------------------------------------------- generation


def _lib_versions() -> str:
    import PIL
    from PIL import features

    jpeg = features.version("jpg") or "unknown"
    if features.check_feature("libjpeg_turbo"):
        jpeg = f"libjpeg-turbo {features.version('libjpeg_turbo')}"
    return f"numpy {np.__version__}, Pillow {PIL.__version__}, JPEG codec {jpeg}"


def _readme(settings: SynthSettings, classes: list[synth_draw.BirdClass]) -> str:
    """The generated folder's README (deterministic: no dates, no host names)."""
    s = settings
    n_genera = len({c.genus for c in classes})
    n_test = s.images_per_class - s.num_train_per_class + s.extra_test_per_class
    per_class = s.images_per_class + s.extra_test_per_class
    paragraphs = [
        f"Generated by `stnrepro.data.synthetic`, generator version {GENERATOR_VERSION}, "
        f"preset `{s.preset}`, seed {s.gen_seed} ({_lib_versions()}). The same settings and "
        "library versions give byte-identical files. Regenerate with `python "
        f"scripts/make_synthetic.py --preset {s.preset} --seed {s.gen_seed} --out DIR` "
        "(plus any setting below that differs from the preset).",
        f"{s.num_classes} classes ({n_genera} genera) x {per_class} images = "
        f"{s.num_images} JPEGs; {s.num_train_per_class} train / {n_test} test images per "
        "class. Layout and file formats are those of CUB-200-2011.",
        "Each image shows one procedurally drawn bird on a cluttered, textured background. A "
        "class is a genus (body colour and beak colour; each body colour is shared by many "
        "genera) plus one value of each fine attribute below, each confined to a small region "
        "of the bird; the species of a genus differ from the genus base in 1-2 fine "
        f"attributes. Per image: position, scale (bird box {s.min_bird_area:g}-"
        f"{s.max_bird_area:g} of the image area), rotation (+-{s.max_rotation_deg:g} "
        "degrees), mirror, proportions, colours and lighting vary; background distractors "
        "reuse the bird's part shapes and colours.",
        "Parts (`parts/parts.txt`): " + ", ".join(synth_draw.PART_NAMES) + ". The far-side "
        "eye and wing, and parts hidden by foreground leaves, are invisible (`0 0 0`, as in "
        "CUB). Per-class attribute values: `class_attributes.txt`; settings: "
        "`synth_settings.json`.",
    ]
    attrs = [f"- `{k}`: {', '.join(v)}" for k, v in synth_draw.ATTRIBUTES.items()]
    rows = [f"| `{k}` | `{v}` |" for k, v in asdict(s).items()]
    return "\n".join(
        ["# Synthetic fine-grained birds (CUB-200-2011 layout)", ""]
        + [line for p in paragraphs for line in (*textwrap.wrap(p, 96), "")]
        + ["Fine attributes (one value each per class):", "", *attrs, ""]
        + ["## Settings", "", "| setting | value |", "|---|---|", *rows, ""]
    )


def _chunks(
    settings: SynthSettings, classes: list[synth_draw.BirdClass], rel_paths: list[list[str]]
) -> list[list[tuple[synth_draw.BirdClass, int, str]]]:
    out = []
    for cls, rels in zip(classes, rel_paths, strict=True):
        jobs = [(cls, k, "images/" + rel) for k, rel in enumerate(rels)]
        out.extend(jobs[i : i + CHUNK] for i in range(0, len(jobs), CHUNK))
    return out


def _default_workers() -> int:
    """All cores this process may use (respects CPU affinity / container limits)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _mp_context() -> multiprocessing.context.BaseContext:
    """``fork`` on Linux: workers start in milliseconds and need no ``__main__`` guard (they only
    run numpy/Pillow code, no BLAS or torch, so threads of the parent do not matter); ``spawn``
    elsewhere (fork is unsafe on macOS, absent on Windows)."""
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _render_all(
    settings: SynthSettings,
    out: Path,
    chunks: list[list[tuple[synth_draw.BirdClass, int, str]]],
    workers: int,
    progress: bool,
) -> list[list[ImageRecord]]:
    from tqdm.auto import tqdm

    spec = settings.render_spec()
    args = [(spec, settings.gen_seed, str(out), jobs) for jobs in chunks]
    results: list[list[ImageRecord] | None] = [None] * len(args)
    bar = tqdm(
        total=settings.num_images,
        desc=f"generating {settings.preset}",
        unit="img",
        disable=not progress,
        dynamic_ncols=True,
    )
    with bar:
        if workers <= 1:
            for i, a in enumerate(args):
                results[i] = synth_draw.render_chunk(a)
                bar.update(len(a[3]))
        else:
            with ProcessPoolExecutor(workers, mp_context=_mp_context()) as pool:
                futures = {pool.submit(synth_draw.render_chunk, a): i for i, a in enumerate(args)}
                try:
                    for fut in as_completed(futures):
                        i = futures[fut]
                        results[i] = fut.result()
                        bar.update(len(args[i][3]))
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
    return results  # type: ignore[return-value]


def _split(settings: SynthSettings, cls: int) -> np.ndarray:
    """Boolean train mask of one class's images (exactly ``num_train_per_class`` True)."""
    rng = np.random.default_rng(np.random.SeedSequence([settings.gen_seed, 0, cls]))
    mask = np.zeros(settings.images_per_class, dtype=bool)
    mask[rng.permutation(settings.images_per_class)[: settings.num_train_per_class]] = True
    return mask


def _fmt(v: float) -> str:
    return f"{v:.1f}"


def generate(
    settings: SynthSettings,
    out_dir: str | Path,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Write the dataset into ``out_dir`` (created; must not exist or be empty).

    Not atomic by itself: :func:`ensure_generated` calls this on a temporary folder.  The
    completion marker is written last.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out}: output folder exists and is not empty")
    workers = _default_workers() if workers is None else int(workers)
    if multiprocessing.current_process().daemon:  # daemons may not have children
        workers = 1
    classes = synth_draw.make_classes(settings.num_classes, settings.genus_size, settings.gen_seed)
    rel_paths: list[list[str]] = []
    for cls in classes:
        (out / "images" / cls.name).mkdir(parents=True, exist_ok=True)
        rel_paths.append(
            [
                f"{cls.name}/synth_{cls.index + 1:03d}_{k + 1:04d}.jpg"
                for k in range(settings.images_per_class + settings.extra_test_per_class)
            ]
        )
    (out / "parts").mkdir(parents=True, exist_ok=True)
    records = _render_all(settings, out, _chunks(settings, classes, rel_paths), workers, progress)
    flat = [r for chunk in records for r in chunk]

    images, labels, split, boxes, locs = [], [], [], [], []
    image_id = 0
    for cls, rels in zip(classes, rel_paths, strict=True):
        train = _split(settings, cls.index)
        for k, rel in enumerate(rels):
            image_id += 1
            rec = flat[image_id - 1]
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {cls.index + 1}")
            split.append(f"{image_id} {int(k < len(train) and train[k])}")
            boxes.append(f"{image_id} " + " ".join(_fmt(v) for v in rec.bbox))
            for pid, (x, y, vis) in enumerate(rec.parts, 1):
                locs.append(f"{image_id} {pid} {_fmt(x)} {_fmt(y)} {vis}")

    def write(name: str, lines: list[str]) -> None:
        (out / name).write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")

    write("images.txt", images)
    write("classes.txt", [f"{c.index + 1} {c.name}" for c in classes])
    write("image_class_labels.txt", labels)
    write("train_test_split.txt", split)
    write("bounding_boxes.txt", boxes)
    write("parts/parts.txt", [f"{i} {n}" for i, n in enumerate(synth_draw.PART_NAMES, 1)])
    write("parts/part_locs.txt", locs)
    header = "# class_id genus body_colour beak_colour " + " ".join(synth_draw.ATTR_NAMES)
    write(
        "class_attributes.txt",
        [header]
        + [
            f"{c.index + 1} {c.genus} {c.body_colour} {c.beak_colour} "
            + " ".join(c.attr(n) for n in synth_draw.ATTR_NAMES)
            for c in classes
        ],
    )
    write("synth_settings.json", [json.dumps(asdict(settings), indent=2, sort_keys=True)])
    write("README.md", _readme(settings, classes).rstrip("\n").split("\n"))
    (out / COMPLETE_MARKER).write_text(_marker_text(settings), encoding="utf-8", newline="\n")
    return out


def ensure_generated(
    settings: SynthSettings,
    cache_dir: str | Path,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Return the dataset folder for ``settings`` under ``cache_dir``, generating it if needed."""
    root = dataset_dir(settings, cache_dir)
    if is_complete(root, settings):
        return root
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"data.cache_dir={root.parent}: cannot create ({exc.strerror or exc})"
        ) from None
    return generate_into(settings, root, workers=workers, progress=progress)


def generate_into(
    settings: SynthSettings,
    root: str | Path,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Make ``root`` the dataset of ``settings``: reuse it if complete, else generate it.

    Safe against interruption (a temporary sibling renamed into place at the end) and against
    concurrent first use (a lock file next to it: the second process waits, then reuses).
    A folder that exists but is not this dataset is refused, never overwritten.
    """
    root = Path(root).expanduser().absolute()
    parent = root.parent
    if is_complete(root, settings):
        return root
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{parent}: cannot create ({exc.strerror or exc})") from None
    with FileLock(parent / f".{root.name}.lock"):
        if is_complete(root, settings):
            return root
        if root.exists():
            raise DataError(
                f"{root}: exists but is not a complete synthetic dataset for these settings "
                f"(no or different {COMPLETE_MARKER}); delete it to regenerate"
            )
        for stale in parent.glob(f".{root.name}.tmp-*"):  # left by a killed run; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        tmp = parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            start = time.perf_counter()
            try:
                generate(settings, tmp, workers=workers, progress=progress)
            except OSError as exc:
                raise DataError(
                    f"{parent}: cannot write the synthetic dataset ({exc.strerror or exc})"
                ) from None
            try:
                os.rename(tmp, root)
            except OSError:
                if not is_complete(root, settings):  # lost a race without the lock
                    raise
            if progress:
                took = time.perf_counter() - start
                print(f"synthetic dataset: {settings.num_images} images in {took:.1f}s -> {root}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root


# --------------------------------------------------------------------------- data module


class SynthBirdsDataModule(CUBDataModule):
    """:class:`CUBDataModule` over a generated folder under ``cache_dir`` (made on first use).

    ``root`` is computed from the generator settings; the key exists in the config only so
    ``data.root`` is defined for every dataset.  Pass ``null`` (or the computed path); any
    other value is a ConfigError, because pointing at a different folder would silently break
    the link between settings and files.  All other keyword arguments go to CUBDataModule.
    """

    def __init__(
        self,
        preset: str,
        cache_dir: str,
        root: str | None = None,
        name: str | None = None,
        gen_workers: int | None = None,
        gen_progress: bool = True,
        **kwargs: Any,
    ) -> None:
        """``kwargs``: ``gen_seed`` and every generator setting (:data:`GENERATOR_KEYS`, all
        required: the data config is their one source), then CUBDataModule's arguments."""
        generator = {k: kwargs.pop(k) for k in (*GENERATOR_KEYS, "gen_seed") if k in kwargs}
        self.settings = make_settings(preset, **generator)
        if cache_dir is None or str(cache_dir) == "":
            raise ConfigError(f"data.cache_dir={cache_dir!r}: expected a folder path")
        computed = dataset_dir(self.settings, cache_dir)
        if root is not None and Path(root).expanduser().absolute() != computed:
            raise ConfigError(
                f"data.root={root}: expected null for a synthetic dataset (its folder is "
                f"computed from the generator settings: {computed}); set data.cache_dir instead"
            )
        if gen_workers is not None and _as_int("gen_workers", gen_workers) < 1:
            raise ConfigError(f"data.gen_workers={gen_workers!r}: expected a positive integer")
        self.cache_dir = str(computed.parent)
        self.gen_workers = gen_workers
        self.gen_progress = bool(gen_progress)
        super().__init__(
            root=str(computed), name=name or preset, num_classes=self.settings.num_classes, **kwargs
        )

    def ensure_generated(self) -> Path:
        """Generate the folder if missing (cheap check otherwise)."""
        return ensure_generated(
            self.settings, self.cache_dir, workers=self.gen_workers, progress=self.gen_progress
        )

    def prepare_data(self) -> None:
        """Lightning calls this once per node before setup: generate on first use."""
        self.ensure_generated()
        super().prepare_data()

    def validate(self) -> CUBIndex:
        """Generate if needed, then parse and check the index files like real CUB."""
        if self._index is None:
            self.ensure_generated()
        return super().validate()

    def fingerprint(self) -> dict[str, Any]:
        """The generator and its settings: they determine every byte of the folder."""
        s = self.settings
        return {
            "kind": "synthetic",
            "name": self.name,
            "generator_version": GENERATOR_VERSION,
            "preset": s.preset,
            "gen_seed": s.gen_seed,
            "settings_hash": settings_hash(s),
            "folder": folder_name(s),
        }
