"""What a benchmark measures and reports: its settings, each result, and the outcome so far.

Plain data, shared by the runner (:mod:`stnrepro.bench.run`), which fills it, and the report
(:mod:`stnrepro.bench.report`), which renders it; neither knows the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from stnrepro.bench.cells import Lever

PREFETCH_FACTOR = 2  # torch DataLoader default, used by CUBDataModule


@dataclass
class Result:
    """One measurement (or a skipped/failed one: ``img_s`` None and ``error`` set)."""

    backbone: str
    cell: str
    lever: str
    mode: str  # model | e2e | data
    batch_size: int
    precision: str
    img_s: float | None = None
    windows: list[float] = field(default_factory=list)
    peak_gib: float | None = None
    first_step_s: float | None = None
    workers: int | None = None
    error: str | None = None
    note: str | None = None
    seconds: float | None = None
    run: int = 0  # index into the report's runs (several with --resume)
    overrides: list[str] = field(default_factory=list)


@dataclass
class Settings:
    """Resolved command-line settings."""

    device: torch.device
    tiny: bool
    backbones: list[str]
    cells: list[str]
    batch_size: int
    warmup: int
    steps: int
    repeats: int
    workers: int
    best: Lever
    ladder: list[Lever]
    ablation_cells: list[str]
    parts: list[str]
    modes: list[str]
    compile_backend: str
    budget_s: float | None
    data_root: str | None
    data_cache: str
    out: Path
    json_path: Path
    seed: int
    resume: bool = False

    @property
    def e2e_warmup(self) -> int:
        """Warm-up + the DataLoader's prefetch buffer, filled while the first steps run."""
        return self.warmup + PREFETCH_FACTOR * self.workers

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in vars(self).items() if k not in ("best", "ladder")}
        d.update(device=str(self.device), out=str(self.out), json_path=str(self.json_path),
                 best=self.best.name, ladder=[lv.name for lv in self.ladder],
                 e2e_warmup=self.e2e_warmup)  # fmt: skip
        return d


@dataclass
class Outcome:
    """A benchmark's state for its report: settings, results so far, environments, timing."""

    s: Settings
    argv: list[str]
    results: list[Result]
    samplers: list[dict]
    data: tuple[str, int] | None
    runs: list[dict[str, Any]]
    finished: bool
    elapsed_s: float

    def find(self, backbone: str, cell: str, lever: str, mode: str) -> Result | None:
        for r in self.results:
            if (r.backbone, r.cell, r.lever, r.mode) == (backbone, cell, lever, mode):
                return r
        return None
