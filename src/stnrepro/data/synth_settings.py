"""Settings of the synthetic birds: what determines the generated files, and where they live.

The presets are the data configs ``conf/data/synth_birds.yaml`` (every generator setting,
once) and ``synth_birds_tiny.yaml`` (inherits it, smaller); there are no defaults here, so
what ``--cfg job`` shows is what is generated. :func:`preset_settings` composes a preset for
callers outside a training job. The folder name encodes preset, generator version, seed and
a hash of all settings, so a changed setting never reuses or overwrites another dataset.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from stnrepro.data import synth_draw
from stnrepro.errors import ConfigError

#: Bump whenever the output for given settings changes (it is part of the folder name).
GENERATOR_VERSION = 1


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
        return round(self.train_fraction * self.images_per_class)

    def render_spec(self) -> synth_draw.RenderSpec:
        keys = {f.name for f in fields(synth_draw.RenderSpec)}
        return synth_draw.RenderSpec(**{k: v for k, v in asdict(self).items() if k in keys})


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"data.{key}={value!r}: expected {expected}")


def as_int(key: str, value: Any) -> int:
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
    ints: tuple[str, ...] = ("num_classes", "images_per_class", "image_width", "image_height")
    ints += ("genus_size", "extra_test_per_class")
    for key in (*ints, "jpeg_quality", "supersample"):
        if key in values:
            values[key] = as_int(key, values[key])
    for key in values:
        if key not in ints and key not in ("jpeg_quality", "supersample"):
            values[key] = _as_float(key, values[key])
    seed = as_int("gen_seed", gen_seed)
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
