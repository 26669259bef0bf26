"""Where a run came from: code version, libraries, machine, threads, device and data.

The record's ``provenance`` object (``collect``) is what a reader needs to decide whether two
runs could have given the same numbers: results on CPU depend on the library versions, the
CPU's vector extensions (``cpu_capability``) and the thread count (float reductions are
split per thread); on GPU on the GPU and the CUDA/cuDNN builds. Fields that do not apply are
null (no git checkout, e.g. an installed wheel; no GPU used). Library versions are the
imported modules' ``__version__`` (null when a library is not installed).

``threads`` is the one environment setting the config controls (``set_threads``): null keeps
torch's default (the machine's core count), an integer fixes it before training, so a table
is regenerable on a machine with fewer cores.
"""

from __future__ import annotations

import importlib
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from stnrepro.errors import ConfigError

# Record key -> module whose ``__version__`` is recorded (``python`` is the interpreter's).
LIBRARIES: dict[str, str] = {
    "torch": "torch",
    "torchvision": "torchvision",
    "pytorch-lightning": "pytorch_lightning",
    "torchmetrics": "torchmetrics",
    "hydra-core": "hydra",
    "wandb": "wandb",
    "numpy": "numpy",
    "pillow": "PIL",
}
_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the stnrepro package


def set_threads(value: Any) -> int:
    """Apply the config key ``threads`` (null: torch's default); return the count in use."""
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"threads={value!r}: expected a positive integer or null")
        torch.set_num_threads(value)
        # Lightning's DDP launcher resets torch's count inside fit unless this is set.
        os.environ["OMP_NUM_THREADS"] = str(value)
    return torch.get_num_threads()


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(_PACKAGE_DIR), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state() -> dict[str, Any]:
    """Commit of the checkout holding this package and whether its source is modified.

    ``dirty`` looks at the package folder only (tracked changes and new files there), so run
    outputs elsewhere in the checkout do not count. Both are null outside a git checkout or
    when the package is not tracked in it (an installed wheel inside some other repository).
    """
    commit = _git("rev-parse", "HEAD")
    tracked = _git("ls-files", "--", "__init__.py")
    if not commit or not tracked:
        return {"commit": None, "dirty": None}
    status = _git("status", "--porcelain", "--", ".")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def library_versions() -> dict[str, str | None]:
    """``python`` and each of ``LIBRARIES``, as the imported modules report them."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for key, module in LIBRARIES.items():
        try:
            versions[key] = str(importlib.import_module(module).__version__)
        except ImportError:
            versions[key] = None
    return versions


def cpu_model() -> str | None:
    """The CPU's ``model name`` from /proc/cpuinfo (Linux), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def gpu_info(trainer: Any) -> dict[str, Any] | None:
    """GPU name and CUDA/cuDNN builds when the trainer runs on a CUDA device, else None."""
    from pytorch_lightning.accelerators import CUDAAccelerator

    if not isinstance(getattr(trainer, "accelerator", None), CUDAAccelerator):
        return None
    device = trainer.strategy.root_device
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "name": torch.cuda.get_device_name(device),
        "cuda": torch.version.cuda,
        "cudnn": None if cudnn is None else str(cudnn),
    }


def collect(trainer: Any, datamodule: Any) -> dict[str, Any]:
    """The record's ``provenance`` for a run about to be fitted by ``trainer``.

    Call it after ``set_threads`` and after the trainer is built, so ``threads``,
    ``gpu`` and ``precision`` are the ones training uses.
    """
    fingerprint = getattr(datamodule, "fingerprint", None)
    return {
        "git": git_state(),
        "versions": library_versions(),
        "os": platform.platform(),
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "gpu": gpu_info(trainer),
        "precision": str(trainer.precision),
        "dataset": fingerprint() if callable(fingerprint) else None,
    }
