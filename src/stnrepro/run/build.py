"""Making a run's objects from its config, with bad values as one-line errors.

Every object made from a config (data, model, logger, callbacks, trainer, by a run, the
benchmark or ``stn-attention``) is made by :func:`build`, so a constructor's refusal reaches
the user as the project's one line naming the key, never as Hydra's multi-line
``InstantiationException``. The cheap checks that come before any building are in
:mod:`stnrepro.run.checks`.
"""

from __future__ import annotations

import re
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from stnrepro.errors import ConfigError, StnreproError, one_line


def build(node: DictConfig | ListConfig | list[Any], key: str | None = None, **kwargs: Any) -> Any:
    """``instantiate(node, **kwargs)``, with bad config values as the project's one-line errors.

    Every object a run makes from its config (data, model, logger, callbacks, trainer) is made
    here. Hydra wraps whatever a ``_target_`` raises in an ``InstantiationException`` (a
    multi-line message that :func:`main` would not recognise); a :class:`StnreproError` from a
    constructor (a bad model value, missing pretrained weights) is re-raised as itself instead.
    ``key`` names the config node of a third-party target (``trainer``, ``logger``,
    ``callbacks.<name>``): there a ``ValueError``, ``TypeError`` or Lightning
    ``MisconfigurationException`` from the constructor is a bad config value and becomes a
    :class:`ConfigError` naming the argument (see :func:`_constructor_error`). Our own
    constructors raise StnreproError for bad values, so anything else from them is a bug and
    keeps its traceback.
    """
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, StnreproError):
            raise cause from None
        if key is not None and isinstance(
            cause, ValueError | TypeError | MisconfigurationException
        ):
            raise _constructor_error(node, key, cause) from cause
        raise


def _constructor_error(
    node: DictConfig | ListConfig | list[Any], key: str, cause: BaseException
) -> ConfigError:
    """One line ``key.arg=value: <the library's message>`` for a constructor's refusal.

    The argument is the config key of ``node`` the message mentions first (Lightning names
    it: "Precision 'x' is invalid", "`devices` selected with ..."); without one the line
    names ``key`` alone. A GPU trainer on a machine without one gets its own message, since
    Lightning's ("No supported gpu backend found!") names neither the key nor the fix.
    """
    message = one_line(cause)
    if not isinstance(node, DictConfig):  # a list of targets (trainer.plugins): no argument
        return ConfigError(f"{key}: {message}")
    accelerator = node.get("accelerator") if key == "trainer" else None
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        return ConfigError(
            f"trainer.accelerator={accelerator}: no GPU is available on this machine; "
            "use trainer=cpu"
        )
    mentioned = []
    for name in node:
        name = str(name)
        if name.startswith("_"):
            continue
        match = re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", message, re.IGNORECASE)
        if match:
            mentioned.append((match.start(), name))
    if not mentioned:
        return ConfigError(f"{key}: {message}")
    name = min(mentioned)[1]
    value = node.get(name)
    shown = "null" if value is None else repr(value) if isinstance(value, str) else value
    return ConfigError(f"{key}.{name}={shown}: {message}")


def build_datamodule(cfg: DictConfig) -> Any:
    """``cfg.data`` instantiated with its index files checked, before any model is built."""
    datamodule = build(cfg.data)
    datamodule.validate()
    return datamodule


def build_callbacks(cfg: DictConfig, has_logger: bool, has_val: bool) -> list[pl.Callback]:
    """Instantiate ``cfg.callbacks``; drop what cannot work in this run's setting."""
    callbacks = []
    for key, cb_cfg in (cfg.get("callbacks") or {}).items():
        if not cb_cfg or "_target_" not in cb_cfg:
            continue
        if key == "lr_monitor" and not has_logger:
            continue  # LearningRateMonitor refuses a Trainer without logger
        if cb_cfg.get("monitor") and not has_val:
            continue  # nothing to monitor; the unmonitored last_checkpoint still saves
        callbacks.append(build(cb_cfg, f"callbacks.{key}"))
    return callbacks
