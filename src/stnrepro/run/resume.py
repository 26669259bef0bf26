"""Which checkpoint a run continues from, and which weights it may start from.

A checkpoint carries the definition of the run that wrote it
(:data:`~stnrepro.records.definition.CHECKPOINT_KEY`, put there by
:class:`~stnrepro.lightning.identity.RunDefinitionCallback`). Resuming (``ckpt_path``)
continues *that* run, so the checkpoint must define the same run as the command: a checkpoint
of another run (another seed, size, transformer count) is refused naming the keys, as a
folder holding another run is (:mod:`stnrepro.run.folder`); otherwise a "new" run would be
a copy of the old one. Starting from another run's weights is a different thing and says so:
``init_from=PATH`` loads the weights only, trains from epoch 0, and is part of the run's
definition and provenance (path and sha256).

What makes the resumed run exact lives with the Lightning pieces: the random generators'
state travels in every checkpoint (:class:`stnrepro.lightning.rng.RNGStateCallback`), and
the training order and augmentation are functions of ``(seed, epoch, image)``
(:mod:`stnrepro.data.sampling`).
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from stnrepro.errors import ConfigError, one_line
from stnrepro.records.definition import CHECKPOINT_KEY, describe_differences, differing_keys

_NULL = ("", "none", "null")
#: The checkpoint ``ckpt_path=last`` resumes from, relative to the run folder.
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"


def resolve_ckpt_path(
    value: str | None, output_dir: Path, definition: Mapping[str, Any]
) -> str | None:
    """``ckpt_path`` -> the checkpoint file this run resumes from, or None (fresh start).

    ``last`` resumes from ``<output_dir>/checkpoints/last.ckpt`` when it exists, so rerunning
    a command in the same output directory (or a requeued SLURM job) continues the run; a
    path resumes from that file. Refused before anything starts: a file that is not a whole
    Lightning checkpoint, and one written by another run (its definition differs from
    ``definition``). A checkpoint without a definition (written before checkpoints carried
    one) is accepted only as the folder's own ``last``, whose folder was checked to hold
    this run.
    """
    if value is None or str(value).lower() in _NULL:
        return None
    own = value == "last"
    if own:
        path = output_dir / LAST_CHECKPOINT
        if not path.is_file():
            return None
    else:
        path = Path(value)
        if not path.is_file():
            raise ConfigError(
                f"ckpt_path={value}: file not found (expected a Lightning checkpoint file, "
                "'last' or null)"
            )
    key = "ckpt_path"
    checkpoint = load_checkpoint(path, key)
    theirs = checkpoint.get(CHECKPOINT_KEY)
    if theirs is None and not own:
        raise ConfigError(
            f"{key}={value}: the checkpoint names no run definition (not written by stn-train, "
            "or by a version before checkpoints carried one), so it cannot be checked to be "
            f"this run; to start from its weights use init_from={value}"
        )
    if isinstance(theirs, Mapping):
        keys = differing_keys(theirs, definition)
        if keys:
            differences = describe_differences(theirs, definition, keys)
            raise ConfigError(
                f"{key}={value}: a checkpoint of another run ({differences}); resuming would "
                "make this run a copy of that one. Resume it in its own folder, or start from "
                f"its weights with init_from={value}"
            )
    return str(path)


def load_checkpoint(path: Path, key: str) -> dict[str, Any]:
    """A Lightning checkpoint file's contents (tensors memory-mapped, on the CPU).

    Refused in one line naming ``key`` and the file: a file cut short (a full disk, a kill:
    ``torch.save`` writes zip archives whose directory is at the very end), a file torch
    cannot load, and one that is not a Lightning checkpoint (no ``state_dict``).
    """
    try:
        with zipfile.ZipFile(path):
            pass
    except (zipfile.BadZipFile, OSError) as exc:
        raise ConfigError(
            f"{key}={path}: not a readable checkpoint ({exc}), e.g. cut short by a full disk; "
            "delete it and rerun (the run starts over), or pass ckpt_path=null"
        ) from None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, ValueError) as exc:
        raise ConfigError(
            f"{key}={path}: not a torch checkpoint ({one_line(exc)[:200]}): expected a file "
            "written by stn-train (checkpoints/*.ckpt)"
        ) from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise ConfigError(
            f"{key}={path}: not a Lightning checkpoint (no state_dict): expected a file "
            "written by stn-train (checkpoints/*.ckpt)"
        )
    return checkpoint


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def init_weights(model: torch.nn.Module, value: str, load: bool = True) -> dict[str, str]:
    """``init_from``: load another checkpoint's weights (only) into ``model``.

    Returns what the provenance records: the file's resolved path and sha256. Weights that
    do not fit the model (another architecture) are refused naming the first keys. With
    ``load=False`` (a resumed run, whose own checkpoint holds its weights) the file is only
    checked and described.
    """
    path = Path(value)
    if not path.is_file():
        raise ConfigError(f"init_from={value}: file not found (expected a checkpoint file)")
    state = load_checkpoint(path, "init_from")["state_dict"]
    try:
        if load:
            model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        problems = [ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()]
        shown = "; ".join(problems[:2]) + (
            f" (+{len(problems) - 2} more)" if len(problems) > 2 else ""
        )
        raise ConfigError(
            f"init_from={value}: its weights do not fit this model ({shown}): expected a "
            "checkpoint of the same architecture (backbone, transformers, sizes)"
        ) from None
    return {"path": str(path.resolve()), "sha256": sha256_of(path)}
