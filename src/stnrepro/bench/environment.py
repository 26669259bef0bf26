"""What the figures depend on: device, driver, library versions, math settings, commit.

Git state, CPU name and versions come from :mod:`stnrepro.run.provenance`, as in every run
record, so a report and a run name the same commit and machine the same way.
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

import torch

from stnrepro.run import provenance


def _git_commit() -> str:
    """The checkout's commit as the run records have it (:func:`provenance.git_state`)."""
    state = provenance.git_state()
    if state["commit"] is None:
        return "unknown (not a git checkout)"
    return state["commit"][:12] + (" (+ local changes)" if state["dirty"] else "")


def _cpu_name() -> str:
    return provenance.cpu_model() or "unknown CPU"


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
    versions = provenance.library_versions()
    env: dict[str, Any] = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "device": str(device),
        "device_name": _cpu_name(),
        "cpu": f"{_cpu_name()}, {os.cpu_count()} logical cores",
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "torch": versions["torch"],
        "torchvision": versions["torchvision"],
        "pytorch_lightning": versions["pytorch-lightning"],
        "python": versions["python"],
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
        f"- Host CPU: {env.get('cpu')}; vector extensions {env.get('cpu_capability')}, "
        f"{env.get('threads')} torch threads",
        f"- torch {env.get('torch')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, "
        f"torchvision {env.get('torchvision')}, pytorch-lightning "
        f"{env.get('pytorch_lightning')}, Python {env.get('python')}",
        f"- fp32 math: cuDNN allow_tf32={env.get('cudnn_allow_tf32')}, matmul precision "
        f"'{env.get('matmul_precision')}'",
        f"- Commit: {env.get('git')}; date (UTC): {env.get('date_utc')}",
    ]
