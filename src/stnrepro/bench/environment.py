"""What the figures depend on: device, driver, library versions, math settings, commit."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch


def _git_commit() -> str:
    """Commit of the checkout the package runs from ('unknown' for an installed wheel)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here,
                             capture_output=True, text=True)  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here,
                               capture_output=True, text=True)  # fmt: skip
    except OSError:
        return "unknown"
    commit = out.stdout.strip()
    if not commit:
        return "unknown (not a git checkout)"
    return commit + (" (+ local changes)" if dirty.stdout.strip() else "")


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _driver() -> str | None:
    """The NVIDIA driver version (nvidia-smi), None without one."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout else None


def environment(device: torch.device) -> dict[str, Any]:
    import torchvision

    env: dict[str, Any] = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "device": str(device),
        "device_name": _cpu_name(),
        "cpu": f"{_cpu_name()}, {os.cpu_count()} logical cores",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pytorch_lightning": pl.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "driver": None,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_precision": torch.get_float32_matmul_precision(),
        "git": _git_commit(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["device_name"] = props.name
        env["driver"] = _driver()
        env["gpu"] = (
            f"{props.name}, {props.multi_processor_count} SMs, "
            f"{props.total_memory / 2**30:.0f} GiB, capability {props.major}.{props.minor}"
        )
    return env


def env_lines(env: dict[str, Any]) -> list[str]:
    """Markdown bullet lines of one run's environment."""
    return [
        f"- Device: **{env.get('gpu', env.get('device_name'))}** (`{env.get('device')}`), "
        f"driver {env.get('driver')}",
        f"- Host CPU: {env.get('cpu')}",
        f"- torch {env.get('torch')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, "
        f"torchvision {env.get('torchvision')}, pytorch-lightning "
        f"{env.get('pytorch_lightning')}, Python {env.get('python')}",
        f"- fp32 math: cuDNN allow_tf32={env.get('cudnn_allow_tf32')}, matmul precision "
        f"'{env.get('matmul_precision')}'",
        f"- Commit: {env.get('git')}; date (UTC): {env.get('date_utc')}",
    ]
