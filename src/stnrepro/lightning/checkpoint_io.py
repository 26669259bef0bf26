"""Checkpoint files are replaced whole or not at all.

Lightning's ``TorchCheckpointIO`` writes a temporary file in the *system* temp folder and
moves it over the target; when that folder is on another file system (as ``/tmp`` often is
on clusters) the move is a copy that truncates the target first, so a full disk (or a kill)
in the middle leaves a truncated ``last.ckpt``: the newest good state is lost and every
resume crashes on it.
:class:`AtomicCheckpointIO` writes to a temporary file in the same folder, flushes it to
disk (fsync) and renames it over the target (``os.replace``, atomic on POSIX and Windows
within one file system). On any error the temporary file is removed, the previous
checkpoint stays as it was, and the error propagates, so the run fails with its reason.

Remote paths (``s3://...`` and other fsspec URLs) have no rename of this kind; they keep
Lightning's own writer.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from fsspec.utils import get_protocol
from pytorch_lightning.plugins.io import TorchCheckpointIO

from stnrepro.utils.atomic import write_atomic


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local writes are temp file + fsync + rename."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        if storage_options is not None or get_protocol(str(path)) != "file":
            super().save_checkpoint(checkpoint, os.fspath(path), storage_options)
            return
        target = Path(path)
        # Serialised in memory first (as Lightning does): a write error is then the OSError
        # itself ("No space left on device"), not torch's zip writer's "unexpected pos".
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_atomic(target, buffer.getbuffer())
