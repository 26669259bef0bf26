"""The benchmark run: the order of work, the time budget and --resume.

Each measurement composes its configuration with :func:`stnrepro.config.compose_config`
(cell experiment + lever + run settings as overrides), validates it with
:func:`stnrepro.run.checks.validate_config` and instantiates the model and trainer from it.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from stnrepro.bench import measure
from stnrepro.bench.cells import (
    CELLS,
    NAIVE,
    TARGET_CELLS,
    Lever,
    as_overrides,
    cell_overrides,
    parse_lever,
)  # fmt: skip
from stnrepro.bench.environment import environment
from stnrepro.bench.outcome import Outcome, Result, Settings
from stnrepro.bench.report import render_report
from stnrepro.config import compose_config
from stnrepro.errors import one_line
from stnrepro.run.build import build
from stnrepro.run.checks import validate_config


def run_error(exc: BaseException) -> str:
    """A failed measurement's note: ``Type: message`` in one line (:func:`one_line`)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "out of GPU memory"
    return f"{type(exc).__name__}: {one_line(exc)[:200]}"


class Benchmark:
    """Runs the requested measurements in priority order and keeps the report up to date."""

    def __init__(self, s: Settings, argv: Sequence[str]) -> None:
        self.s = s
        self.argv = list(argv)
        self.t0 = time.perf_counter()
        self.results: list[Result] = []
        self.samplers: list[dict] = []
        self.data: tuple[str, int] | None = None
        self.runs: list[dict[str, Any]] = [environment(s.device)]
        self.finished = False
        if s.resume and s.json_path.is_file():
            self._load_previous(json.loads(s.json_path.read_text(encoding="utf-8")))

    def _load_previous(self, payload: dict[str, Any]) -> None:
        """--resume: keep earlier runs' complete cells; re-measure incomplete cells whole.

        A cell (backbone, cell) is kept only if none of its measurements was skipped for the
        time budget, so that every ratio still compares figures from the same run.
        """
        previous = [Result(**r) for r in payload.get("results", [])]
        incomplete = {
            (r.backbone, r.cell) for r in previous if r.error and r.error.startswith("skipped")
        }
        kept = [r for r in previous if (r.backbone, r.cell) not in incomplete]
        old_runs = payload.get("runs") or []
        used = sorted({r.run for r in kept})
        remap = {old: new for new, old in enumerate(used)}
        for r in kept:
            r.run = remap[r.run]
        self.runs = [old_runs[i] for i in used if i < len(old_runs)] + self.runs
        self.results = kept
        self.samplers = payload.get("samplers", [])
        print(f"[bench] resumed {len(kept)} results from {len(used)} earlier run(s)", flush=True)

    # -- bookkeeping ------------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def over_budget(self) -> bool:
        return self.s.budget_s is not None and self.elapsed() > self.s.budget_s

    def outcome(self) -> Outcome:
        """What has been measured so far, as the report renders it."""
        return Outcome(
            s=self.s,
            argv=self.argv,
            results=self.results,
            samplers=self.samplers,
            data=self.data,
            runs=self.runs,
            finished=self.finished,
            elapsed_s=self.elapsed(),
        )

    def save(self) -> None:
        s = self.s
        s.out.parent.mkdir(parents=True, exist_ok=True)
        s.out.write_text(render_report(self.outcome()), encoding="utf-8")
        payload = {
            "runs": self.runs,
            "settings": s.as_dict(),
            "samplers": self.samplers,
            "results": [asdict(r) for r in self.results],
            "elapsed_s": self.elapsed(),
        }
        s.json_path.parent.mkdir(parents=True, exist_ok=True)
        s.json_path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")

    def overrides(self, backbone: str, cell: str, lever: Lever, mode: str) -> list[str]:
        """The Hydra overrides of one measurement: cell, run settings, then the lever."""
        s = self.s
        root, classes = self.data or (None, 4 if s.tiny else 200)
        run = {
            "trainer.accelerator": "gpu" if s.device.type == "cuda" else "cpu",
            "trainer.devices": "1",
            "logger": "none",
            "seed": str(s.seed),
            "model.compile_backend": s.compile_backend,
            "data.num_classes": str(classes),
            "data.val_fraction": "0",
            "data.batch_size": str(s.batch_size),
            "data.num_workers": str(s.workers),
        }
        if root is not None:
            run["data.root"] = root
        if mode == "data":
            run["data.persistent_workers"] = "false"
        return as_overrides({**cell_overrides(cell, backbone, s.tiny), **run, **lever.as_dict()})

    def _new_result(self, backbone: str, cell: str, lever: Lever, mode: str) -> Result:
        s = self.s
        result = Result(
            backbone, cell, lever.name, mode, int(lever.get("data.batch_size", s.batch_size)),
            lever.precision, run=len(self.runs) - 1,
        )  # fmt: skip
        if mode != "model":
            result.workers = int(lever.get("data.num_workers", s.workers))
        return result

    def _reuse(self, result: Result, lever: Lever) -> bool:
        """Fill ``result`` from a measurement of the same effective configuration, if any."""
        n = CELLS[result.cell][1]
        for r in self.results:
            if (r.backbone, r.cell, r.mode, r.run) != (
                result.backbone, result.cell, result.mode, result.run,
            ):  # fmt: skip
                continue
            if r.img_s is not None and parse_lever(r.lever).effective(n) == lever.effective(n):
                result.img_s, result.windows, result.peak_gib = r.img_s, r.windows, r.peak_gib
                result.first_step_s, result.overrides = r.first_step_s, r.overrides
                result.note = f"same configuration as {r.lever} for this cell"
                return True
        return False

    def _record(self, result: Result, t0: float) -> None:
        result.seconds = time.perf_counter() - t0
        self.results.append(result)
        shown = f"{result.img_s:9.1f} img/s" if result.img_s is not None else result.error
        label = f"{result.backbone:>12} {result.cell:>6} {result.mode:>5} {result.lever}"
        print(f"[{self.elapsed():6.1f}s] {label}: {shown} ({result.seconds:.1f}s)", flush=True)
        self.save()

    # -- one configuration, model-only then end to end on the same module -------------------

    def measure(self, backbone: str, cell: str, lever: Lever, modes: Sequence[str]) -> None:
        """Measure (or reuse, or skip) ``modes`` of one (backbone, cell, lever).

        model and e2e use the same module and trainer, so compiled trunks compile once.
        """
        s = self.s
        todo: list[Result] = []
        for mode in modes:
            if self.outcome().find(backbone, cell, lever.name, mode) is not None:
                continue
            result = self._new_result(backbone, cell, lever, mode)
            if self._reuse(result, lever):
                self._record(result, time.perf_counter())
            else:
                todo.append(result)
        if not todo:
            return
        if self.over_budget():
            for result in todo:
                result.error = f"skipped: time budget of {s.budget_s:.0f}s spent"
                self._record(result, time.perf_counter())
            return
        built: tuple[Any, pl.Trainer] | None = None
        with tempfile.TemporaryDirectory(prefix="stn-bench-") as tmp:
            try:
                for result in todo:
                    t0 = time.perf_counter()
                    try:
                        result.overrides = self.overrides(backbone, cell, lever, result.mode)
                        cfg = compose_config(result.overrides)
                        validate_config(cfg)
                        if result.mode == "data":
                            out = measure.measure_data(cfg, s.device, s.steps, s.repeats)
                        else:
                            if built is None:
                                built = self._build(cfg, Path(tmp))
                            out = self._measure(result.mode, cfg, *built)
                        for key, value in out.items():
                            setattr(result, key, value)
                        result.img_s = sorted(result.windows)[len(result.windows) // 2]
                    except Exception as exc:  # one failure must not end the run
                        result.error = run_error(exc)
                        built = None  # a failure may leave it half-moved or mid-compile
                        measure.free(s.device)
                    self._record(result, t0)
            finally:
                del built
                if lever.compiles:
                    torch._dynamo.reset()
                measure.free(s.device)

    def _build(self, cfg: DictConfig, root: Path) -> tuple[Any, pl.Trainer]:
        """Model (seeded, as ``stn-train`` builds it) and the timing trainer of ``cfg``."""
        s = self.s
        warmup = s.e2e_warmup if "e2e" in s.modes else s.warmup
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        model = build(cfg.model)
        batches = warmup + s.steps * s.repeats
        return model, measure.build_trainer(cfg, root, max_steps=batches, batches=batches)

    def _measure(self, mode: str, cfg: DictConfig, model: Any, trainer: pl.Trainer) -> dict:
        s = self.s
        if mode == "model":
            return measure.measure_model(model, trainer, cfg, s.warmup, s.steps, s.repeats, s.seed)
        return measure.measure_e2e(model, trainer, cfg, s.e2e_warmup, s.steps, s.repeats)

    # -- phases -----------------------------------------------------------------------------

    def run_matrix(self, backbone: str) -> None:
        s = self.s
        naive = parse_lever(NAIVE)
        modes = [m for m in ("model", "e2e") if m in s.modes]
        # The target cells first, so that a spent budget costs the other cells.
        for cell in sorted(s.cells, key=lambda c: (c not in TARGET_CELLS, list(CELLS).index(c))):
            self.measure(backbone, cell, naive, modes)
            if s.best.name != NAIVE:
                self.measure(backbone, cell, s.best, modes)
            if "e2e" in s.modes:
                self.measure(backbone, cell, s.best, ["data"])

    def run(self) -> None:
        s = self.s
        torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)
        if "e2e" in s.modes and "matrix" in s.parts:
            batch = max(int(lv.get("data.batch_size", s.batch_size)) for lv in (s.best,))
            # Enough full batches for one epoch of e2e and of the data-only loop.
            e2e = s.e2e_warmup + s.steps * s.repeats
            data = s.workers + 1 + max(s.steps, s.workers) * s.repeats
            self.data = measure.prepare_data(
                s.data_root, s.data_cache, s.tiny, max(batch, s.batch_size), max(e2e, data) + 2
            )
        self.save()
        if "sampler" in s.parts and not self.samplers:
            try:
                self.samplers = measure.sampler_bench(s.device, s.tiny, s.seed)
            except Exception as exc:
                self.samplers = [{"sampler": "all", "error": run_error(exc)}]
            self.save()
        if "matrix" in s.parts:
            self.run_matrix(s.backbones[0])
        if "ablation" in s.parts:
            for cell in s.ablation_cells:
                for lever in s.ladder:
                    self.measure(s.backbones[0], cell, lever, ["model"])
        if "matrix" in s.parts:
            for backbone in s.backbones[1:]:
                self.run_matrix(backbone)
        self.finished = True
        self.save()


@contextlib.contextmanager
def global_state_kept():
    """main() is also called in-process by the tests: leave torch's global state as found."""
    saved = (
        torch.get_num_threads(),
        torch.backends.cudnn.benchmark,
        torch._dynamo.config.cache_size_limit,
    )
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        torch.backends.cudnn.benchmark = saved[1]
        torch._dynamo.config.cache_size_limit = saved[2]
