"""The one table of numeric config keys: each key's kind and range, and its one message.

Why a table: a value of the wrong type (``trainer.max_epochs=abc``) otherwise reaches a constructor
or a comparison deep inside Lightning or the model and ends as a bare ``TypeError``, and a
degenerate number (``trainer.max_epochs=0`` records an untrained run as finished; ``-1``
trains forever) is not an error at all. A training run checks every key of the table before
any data is read or model built (:func:`stnrepro.run.checks.check_numeric_keys`); the
constructors that take these values (the model, the data modules, the LightningModule) check
them with :func:`check_value`, so a value is refused by the same rule with the same
``key=value: expected ...`` line however the object is built.

Conventions: an integer key takes a YAML integer only (not ``true``, not ``2.0``); a float
key takes an integer or a finite float. ``null`` is accepted only where the table says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from stnrepro.errors import ConfigError

__all__ = ["NUMERIC_KEYS", "Numeric", "check_value", "show_value"]


@dataclass(frozen=True)
class Numeric:
    """An integer or float within ``[low, high)``-style bounds (``low_open``: ``> low``;
    ``high_closed``: ``<= high``)."""

    kind: type  # int or float
    low: float
    low_open: bool = False
    high: float | None = None  # exclusive upper bound, unless high_closed
    nullable: bool = False
    high_closed: bool = False

    def expected(self) -> str:
        what = "an integer" if self.kind is int else "a float"
        if self.high is not None:
            left = "(" if self.low_open else "["
            right = "]" if self.high_closed else ")"
            text = f"{what} in {left}{_number(self.low)}, {_number(self.high)}{right}"
        else:
            text = f"{what} {'>' if self.low_open else '>='} {_number(self.low)}"
        return text + (" or null" if self.nullable else "")

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        if value < self.low or (self.low_open and value == self.low):
            return False
        if self.high is None:
            return True
        return value <= self.high if self.high_closed else value < self.high


_COUNT = Numeric(int, 1)  # sizes, counts, epochs
_INDEX = Numeric(int, 0)  # worker counts, transformer counts


def _number(x: float) -> str:
    """A bound as written: ``4294967296``, ``0.5`` (not ``4.29497e+09``)."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


_SEED = Numeric(int, 0, high=2**32)  # what numpy and Lightning's seed_everything accept
_RATE = Numeric(float, 0, low_open=True)
_NONNEG = Numeric(float, 0)
_FRACTION = Numeric(float, 0, high=1)

#: Every numeric key checked up front, in the order they are checked.
NUMERIC_KEYS: dict[str, Numeric] = {
    "seed": _SEED,
    "data.num_classes": _COUNT,
    "data.image_size": _COUNT,
    "data.batch_size": _COUNT,
    "data.eval_batch_size": Numeric(int, 1, nullable=True),
    "data.num_workers": _INDEX,
    "data.split_seed": _SEED,
    "data.val_fraction": _FRACTION,
    "data.train_limit": Numeric(int, 1, nullable=True),
    "data.test_limit": Numeric(int, 1, nullable=True),
    "model.num_transformers": _INDEX,
    "model.crop_size": _COUNT,
    "model.loc_hidden": _COUNT,
    "model.warp_bound": Numeric(float, 0, low_open=True, nullable=True),
    "model.tps_grid": Numeric(int, 2),
    "model.fixed_scale": Numeric(float, 0, low_open=True, high=1, high_closed=True, nullable=True),
    "model.init_scale": _RATE,
    "model.dropout": _FRACTION,
    "model.loc_lr_mult": _NONNEG,
    "model.head_lr_mult": _NONNEG,
    "model.label_smoothing": _FRACTION,
    "model.optimizer.lr": _RATE,
    "model.optimizer.momentum": _NONNEG,
    "model.optimizer.weight_decay": _NONNEG,
    "threads": Numeric(int, 1, nullable=True),
    "trainer.max_epochs": _COUNT,
    "trainer.log_every_n_steps": _COUNT,
    "trainer.check_val_every_n_epoch": Numeric(int, 1, nullable=True),
    "trainer.gradient_clip_val": Numeric(float, 0, nullable=True),
}


def show_value(value: Any) -> str:
    """A config value as the error line shows it: ``null``, ``'abc'``, ``-1``."""
    return "null" if value is None else repr(value)


def check_value(key: str, value: Any) -> Any:
    """Refuse ``value`` for ``key`` by its :data:`NUMERIC_KEYS` rule, in one line; returns it."""
    rule = NUMERIC_KEYS[key]
    if not rule.accepts(value):
        raise ConfigError(f"{key}={show_value(value)}: expected {rule.expected()}")
    return value
