"""Benchmark cells and levers, as Hydra overrides of the packaged training configs.

A cell is a Table 3 experiment (``experiment=cub_4st_448`` ...) with a backbone; a lever
is a ``+``-joined list of tokens, each one config override that ``stn-train`` honours:

====================  ================================================================
token                 override
====================  ================================================================
``naive``             nothing: eager fp32, grid_sample, foreach SGD, cuDNN autotune off
``bench``             ``trainer.benchmark=true`` (cuDNN autotuning)
``bf16``              ``trainer.precision=bf16-mixed``
``cl``                ``model.channels_last=true``
``fused``             ``model.optimizer.fused=true``
``analytic``          ``model.sampler=analytic`` (no ``F.affine_grid``; one call for N crops)
``roi_align``         ``model.sampler=roi_align``
``compile``           ``model.compile=default`` (``torch.compile`` per trunk)
``cudagraphs``        ``model.compile=reduce-overhead`` (CUDA graphs)
``autotune``          ``model.compile=max-autotune-no-cudagraphs``
``b<N>``              ``data.batch_size=N``
``w<N>``              ``data.num_workers=N`` (e2e and data modes only)
====================  ================================================================

Every lever starts from the naive settings, so a cell's figures do not depend on what an
experiment file enables (``trainer=gpu`` turns on bf16 and cuDNN autotuning).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar, overload

from stnrepro.models.samplers import SAMPLERS

T = TypeVar("T")

#: cell name -> (experiment config, number of transformers, input image size).
CELLS: dict[str, tuple[str, int, int]] = {
    "cnn224": ("cub_cnn_224", 0, 224),
    "2st224": ("cub_2st_224", 2, 224),
    "2st448": ("cub_2st_448", 2, 448),
    "4st448": ("cub_4st_448", 4, 448),
}
CELL_TITLES = {
    "cnn224": "CNN 224",
    "2st224": "2xST 224",
    "2st448": "2xST 448",
    "4st448": "4xST 448",
}
CROP_SIZE = 224  # the experiments' model.crop_size
TINY_DIVISOR = 14  # --tiny: 224 -> 16 px, 448 -> 32 px, small backbone
BACKBONES = ("inception_v3", "resnet50")
NAIVE = "naive"
#: What every lever starts from (the reference configuration).
NAIVE_SETTINGS: dict[str, str] = {
    "trainer.benchmark": "false",
    "trainer.precision": "32-true",
    "model.channels_last": "false",
    "model.compile": "null",
    "model.optimizer.fused": "null",
    "model.sampler": "grid_sample",
}
TOKENS: dict[str, tuple[str, str]] = {
    "bench": ("trainer.benchmark", "true"),
    "bf16": ("trainer.precision", "bf16-mixed"),
    "cl": ("model.channels_last", "true"),
    "fused": ("model.optimizer.fused", "true"),
    "compile": ("model.compile", "default"),
    "cudagraphs": ("model.compile", "reduce-overhead"),
    "autotune": ("model.compile", "max-autotune-no-cudagraphs"),
    **{name: ("model.sampler", name) for name in SAMPLERS},
}


@dataclass(frozen=True)
class Lever:
    """One configuration to measure: its name and the config settings it differs in."""

    name: str
    settings: tuple[tuple[str, str], ...] = ()

    def as_dict(self) -> dict[str, str]:
        """The full lever settings: the naive ones with this lever's on top."""
        return {**NAIVE_SETTINGS, **dict(self.settings)}

    @overload
    def get(self, key: str) -> str | None: ...
    @overload
    def get(self, key: str, default: T) -> str | T: ...
    def get(self, key: str, default: object = None) -> object:
        """This lever's own setting of ``key`` (a string), else ``default``."""
        return dict(self.settings).get(key, default)

    @property
    def precision(self) -> str:
        return self.as_dict()["trainer.precision"]

    @property
    def compiles(self) -> bool:
        return self.as_dict()["model.compile"] != "null"

    def effective(self, num_transformers: int) -> frozenset[tuple[str, str]]:
        """What actually differs for a cell: the sampler is moot without a transformer."""
        settings = self.as_dict()
        if num_transformers == 0:
            settings.pop("model.sampler")
        return frozenset(settings.items())


def parse_lever(spec: str) -> Lever:
    """``"bench+bf16+cl"`` -> :class:`Lever`; raises ValueError naming a bad token."""
    settings: dict[str, str] = {}
    for tok in (t.strip() for t in spec.split("+")):
        if tok in (NAIVE, "fp32", ""):
            continue
        if tok in TOKENS:
            key, value = TOKENS[tok]
        elif tok[:1] in ("b", "w") and tok[1:].isdigit() and int(tok[1:]) > 0:
            key = "data.batch_size" if tok[0] == "b" else "data.num_workers"
            value = str(int(tok[1:]))
        else:
            raise ValueError(
                f"lever {spec!r}: unknown token {tok!r} (expected naive, "
                f"{', '.join(TOKENS)}, b<N>, w<N>)"
            )
        settings[key] = value
    return Lever(name=spec, settings=tuple(settings.items()))


def cell_sizes(cell: str, tiny: bool) -> tuple[int, int, int]:
    """(number of transformers, image size, crop size) of a cell (scaled down with tiny)."""
    _, n, size = CELLS[cell]
    if tiny:
        return n, size // TINY_DIVISOR, CROP_SIZE // TINY_DIVISOR
    return n, size, CROP_SIZE


def cell_overrides(cell: str, backbone: str, tiny: bool) -> dict[str, str]:
    """The experiment of a cell, with a backbone and random weights (same speed)."""
    overrides = {
        "experiment": CELLS[cell][0],
        "model.backbone": backbone,
        "model.pretrained": "false",
    }
    if tiny:
        _, size, crop = cell_sizes(cell, tiny)
        overrides.update({"data.image_size": str(size), "model.crop_size": str(crop)})
    return overrides


def as_overrides(settings: dict[str, str]) -> list[str]:
    """``{"a.b": "1"}`` -> ``["a.b=1"]``: one value per key (Hydra refuses duplicates)."""
    return [f"{k}={v}" for k, v in settings.items()]


#: The issue's targets: inception_v3, best vs naive, per cell; e2e >= 90% of model-only.
TARGETS = {"4st448": 3.0, "cnn224": 2.5}
TARGET_CELLS = tuple(TARGETS)
E2E_TARGET = 0.9
