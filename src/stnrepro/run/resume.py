"""Resuming a run: which checkpoint a run continues from, refused when it cannot be read.

What makes the resumed run exact lives with the Lightning pieces: the random generators'
state travels in every checkpoint (:class:`stnrepro.lightning.rng.RNGStateCallback`), and
the training order and augmentation are functions of ``(seed, epoch, image)``
(:mod:`stnrepro.data.sampling`).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from stnrepro.errors import ConfigError


def resolve_ckpt_path(value: str | None, output_dir: Path) -> str | None:
    """``ckpt_path`` -> a checkpoint file or None (fresh start).

    ``last`` resumes from ``<output_dir>/checkpoints/last.ckpt`` when it exists, so rerunning
    a command in the same output directory (or a requeued SLURM job) continues the run.
    A checkpoint that is not a whole ``torch.save`` file is refused before anything starts.
    """
    if value is None or str(value).lower() in ("", "none", "null"):
        return None
    if value == "last":
        last = output_dir / "checkpoints" / "last.ckpt"
        if not last.is_file():
            return None
        path = last
    else:
        path = Path(value)
        if not path.is_file():
            raise ConfigError(
                f"ckpt_path={value}: file not found (expected a Lightning checkpoint file, "
                "'last' or null)"
            )
    _check_readable(path)
    return str(path)


def _check_readable(path: Path) -> None:
    """Cheap check that ``path`` is a whole checkpoint, not one cut short (a full disk, a kill).

    ``torch.save`` writes zip archives whose central directory is at the very end, so
    opening one reads only that directory and fails on a truncated file.
    """
    try:
        with zipfile.ZipFile(path):
            pass
    except (zipfile.BadZipFile, OSError) as exc:
        raise ConfigError(
            f"{path}: not a readable checkpoint ({exc}), e.g. cut short by a full disk; "
            "delete it and rerun (the run starts over), or pass ckpt_path=null"
        ) from None
