"""The measurements: model-only steps, ``Trainer.fit`` end to end, the DataLoader alone and
the crop samplers alone. Each takes a configuration composed by :mod:`stnrepro.bench.run`
and builds it with :mod:`stnrepro.train`'s pieces, so it times what ``stn-train`` trains.

Conventions: throughput in images per second per window; a window is ``steps`` steps after
``warmup`` steps; peak memory in GiB (``torch.cuda.max_memory_allocated``; None on CPU).
"""

from __future__ import annotations

import gc
import itertools
import math
import statistics
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ThroughputMonitor
from pytorch_lightning.loggers import Logger
from torch.utils.benchmark import Timer

from stnrepro.errors import ConfigError
from stnrepro.lightning.module import STCNNModule
from stnrepro.models.samplers import SAMPLERS, sample_crops
from stnrepro.run.build import build, build_datamodule


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class ClockRecorder(Logger):
    """Keeps what :class:`ThroughputMonitor` logs each batch: (seconds, images) since start."""

    def __init__(self) -> None:
        super().__init__()
        self.marks: list[tuple[float, int]] = []

    @property
    def name(self) -> str:
        return "stn-bench"

    @property
    def version(self) -> str:
        return "0"

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if "train/time" in metrics:
            self.marks.append((float(metrics["train/time"]), int(metrics["train/samples"])))


def build_trainer(cfg: DictConfig, root: Path, max_steps: int, batches: int) -> pl.Trainer:
    """``cfg.trainer`` (precision, cuDNN autotune) with the timing harness around it.

    ``batches``: full batches per epoch only, so shapes never change (no recompilation).
    """
    clock = ClockRecorder()
    monitor = ThroughputMonitor(batch_size_fn=lambda batch: int(batch["label"].shape[0]))
    return build(
        cfg.trainer,
        "trainer",
        callbacks=[monitor],
        logger=clock,
        default_root_dir=str(root),
        max_steps=max_steps,
        max_epochs=-1,
        limit_train_batches=batches,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=1,  # ThroughputMonitor reports at logging steps: every batch
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def measure_model(
    module: STCNNModule, trainer: pl.Trainer, cfg: DictConfig, warmup: int, steps: int,
    repeats: int, seed: int, batch: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Model-only training steps on one batch held on the device, timed by
    torch.utils.benchmark: ``batch`` (e.g. a real one from the data module), else random
    tensors of the config's sizes and the backbone's input channels.

    A step is the module's own: ``configure_model`` levers, ``on_after_batch_transfer``,
    ``training_step`` under the trainer's precision plugin, backward, the configured
    optimizer's step. ``module`` stays usable for :func:`measure_e2e` (compiled once).
    """
    device = trainer.strategy.root_device
    bs = int(cfg.data.batch_size)
    size = int(cfg.data.image_size)
    free(device)
    reset_peak(device)
    module.configure_model()
    module.to(device).train()
    # The configured optimizer (its scheduler is moot here, and a per-step one needs a fit).
    if module.optimizer_factory is None:  # as configure_optimizers refuses it
        raise ConfigError("model.optimizer: missing (expected a partial, e.g. torch.optim.SGD)")
    opt = module.optimizer_factory(params=module.param_groups())
    if batch is None:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        channels = getattr(module.net, "in_channels", 3)
        batch = {
            "image": torch.randn(bs, channels, size, size, generator=gen),
            "label": torch.randint(0, int(cfg.data.num_classes), (bs,), generator=gen),
        }
    bs = int(batch["label"].shape[0])
    batch = module.on_after_batch_transfer({k: v.to(device) for k, v in batch.items()}, 0)
    precision = trainer.precision_plugin

    def step() -> None:
        with precision.forward_context():
            loss = module.training_step(batch, 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    step()
    sync(device)
    first = time.perf_counter() - t0
    for _ in range(warmup - 1):
        step()
    timer = Timer("step()", globals={"step": step}, num_threads=torch.get_num_threads())
    windows = [bs / timer.timeit(steps).mean for _ in range(repeats)]
    return {"windows": windows, "peak_gib": peak_gib(device), "first_step_s": first}


def measure_e2e(
    module: STCNNModule, trainer: pl.Trainer, cfg: DictConfig, warmup: int, steps: int,
    repeats: int, datamodule: pl.LightningDataModule | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The configured data module (``datamodule``, else built from ``cfg``) through
    ``trainer.fit``: steady-state img/s after warm-up.

    Lightning's ThroughputMonitor synchronises and reads the clock at every batch end;
    windows are ``steps`` batches after ``warmup`` batches.
    """
    device = trainer.strategy.root_device
    if datamodule is None:
        datamodule = build_datamodule(cfg)
    free(device)
    reset_peak(device)
    trainer.fit(module, datamodule=datamodule)
    peak = peak_gib(device)
    clock = trainer.logger
    assert isinstance(clock, ClockRecorder)
    ends = range(warmup, warmup + steps * repeats + 1, steps)  # 1-based batch numbers
    marks = [clock.marks[k - 1] for k in ends if k <= len(clock.marks)]
    windows = [(n1 - n0) / (t1 - t0) for (t0, n0), (t1, n1) in itertools.pairwise(marks)]
    if not windows:
        raise RuntimeError(f"no timed window ({len(clock.marks)} batches ran)")
    return {
        "windows": windows,
        "peak_gib": peak,
        "first_step_s": clock.marks[0][0] if clock.marks else None,
    }


def measure_data(cfg: DictConfig, device: torch.device, steps: int, repeats: int) -> dict[str, Any]:
    """The configured DataLoader alone (+ host-to-device copy): the ceiling on e2e."""
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    workers = int(cfg.data.num_workers)
    bs = int(cfg.data.batch_size)
    warmup = workers + 1
    per_window = max(steps, workers)
    need = warmup + per_window * repeats
    marks: list[float] = []
    count = 0
    while count < need:
        for batch in loader:
            batch["image"].to(device, non_blocking=True)
            count += 1
            if count >= warmup and (count - warmup) % per_window == 0:
                sync(device)
                marks.append(time.perf_counter())
            if count >= need:
                break
    del loader, datamodule
    return {"windows": [bs * per_window / (b - a) for a, b in itertools.pairwise(marks)]}


def sampler_bench(device: torch.device, tiny: bool, seed: int) -> list[dict[str, Any]]:
    """Crop samplers alone, timed by torch.utils.benchmark: 256 crops 448 -> 224 (16 tiny)."""
    b, n, size, crop = (4, 4, 32, 16) if tiny else (64, 4, 448, 224)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    image = torch.randn(b, 3, size, size, generator=gen).to(device)
    scale = torch.full((b, n), 0.5)
    t = (1 - scale).unsqueeze(-1) * (2 * torch.rand(b, n, 2, generator=gen) - 1)
    theta = torch.zeros(b, n, 2, 3)
    theta[..., 0, 0] = theta[..., 1, 1] = scale
    theta[..., 0, 2], theta[..., 1, 2] = t[..., 0], t[..., 1]
    theta = theta.to(device)
    weight = torch.randn(b, 3, crop, crop, generator=gen).to(device)
    reps, inner = (3, 3) if tiny else (5, 20 if device.type == "cuda" else 2)
    ref = torch.stack(sample_crops(image, theta, crop, "grid_sample"))
    rows = []
    for name in SAMPLERS:

        def fwd(name: str = name) -> None:
            with torch.no_grad():
                sample_crops(image, theta, crop, name, validate=False)

        def fwd_bwd(name: str = name) -> None:
            th = theta.clone().requires_grad_()
            crops = sample_crops(image, th, crop, name, validate=False)
            loss = cast(torch.Tensor, sum((c * weight).sum() for c in crops))  # N >= 1 crops
            torch.autograd.grad(loss, th)

        out: dict[str, Any] = {"sampler": name, "crops": b * n, "size": f"{size}->{crop}"}
        with torch.no_grad():
            got = torch.stack(sample_crops(image, theta, crop, name, validate=False))
        out["max_abs_diff"] = float((got - ref).abs().max())
        for key, fn in (("fwd_ms", fwd), ("fwd_bwd_ms", fwd_bwd)):
            timer = Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
            out[key] = statistics.median(timer.timeit(inner).mean for _ in range(reps)) * 1000
        rows.append(out)
    return rows


def prepare_data(
    data_root: str | None, cache: str, tiny: bool, max_batch: int, batches: int
) -> tuple[str, int]:
    """(root, num_classes) of the e2e data: ``data_root``, else a generated synthetic folder
    with ``batches`` full batches of ``max_batch`` in one training epoch."""
    from stnrepro.data.cub_index import CUBIndex
    from stnrepro.data.synth_settings import preset_settings
    from stnrepro.data.synthetic import ensure_generated

    if data_root:
        index = CUBIndex.load(data_root)
        return str(index.root), index.num_classes
    preset, classes = ("synth_birds_tiny", 4) if tiny else ("synth_birds", 200)
    per_class = min(60, max(4, math.ceil(max_batch * batches / classes) + 1))
    settings = preset_settings(
        preset,
        num_classes=classes,
        images_per_class=per_class,
        train_fraction=(per_class - 1 + 0.25) / per_class,  # all but one image per class
    )
    t0 = time.perf_counter()
    root = ensure_generated(settings, cache, progress=False)
    print(
        f"[data] {settings.num_images} synthetic images at {root} ({time.perf_counter() - t0:.1f}s)"
    )
    return str(root), classes
