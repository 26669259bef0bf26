"""Every checkpoint says which run wrote it: the run definition goes into the file.

So a checkpoint handed to another command (``ckpt_path=...``) can be checked to belong to
the run it would continue (:func:`stnrepro.run.resume.resolve_ckpt_path`), however it was
copied or renamed. Stored under :data:`~stnrepro.records.definition.CHECKPOINT_KEY` as
plain values (Lightning reloads checkpoints with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl

from stnrepro.records.definition import CHECKPOINT_KEY


class RunDefinitionCallback(pl.Callback):
    """Writes ``definition`` into every checkpoint the trainer saves."""

    def __init__(self, definition: Mapping[str, Any]) -> None:
        self.definition = dict(definition)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[CHECKPOINT_KEY] = self.definition
