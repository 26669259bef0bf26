"""Training-throughput benchmark of the CNN / ST-CNN cells against a naive reference.

    # the GPU run that produces results/benchmark.md (about 8 minutes on one H100):
    PYTHONPATH=src python scripts/benchmark.py --quick --out results/benchmark.md
    # if the time budget left cells skipped: measure those (whole cells) in a second run
    PYTHONPATH=src python scripts/benchmark.py --quick --resume --out results/benchmark.md
    # the CPU check that CI runs (seconds; correctness of the script, not speed):
    python scripts/benchmark.py --tiny --device cpu --out /tmp/b.md

Only torch, torchvision, pytorch-lightning, torchmetrics, numpy and Pillow are needed (no
Hydra): ``PYTHONPATH=src`` is enough on a machine where the package is not installed.

What is measured, per backbone (inception_v3, resnet50) and cell (CNN 224, 2xST 224,
2xST 448, 4xST 448; crops are always 224 px):

* ``model``: model only. Random tensors already on the device; a full training step of
  :class:`~stnrepro.models.st_cnn.STCNN` (forward, cross-entropy, backward, SGD step with the
  parameter groups of :class:`~stnrepro.module.STCNNModule`). ``--warmup`` steps, then
  ``--repeats`` windows of ``--steps`` steps, each timed with CUDA events (a synchronised
  ``perf_counter`` on CPU); the figure is the median window. Peak memory is
  ``torch.cuda.max_memory_allocated`` (parameters, gradients, optimizer state, activations).
* ``e2e``: end to end. The real :class:`~stnrepro.data.cub.CUBDataModule` (PIL decoding in
  ``--num-workers`` DataLoader workers, pinned memory, persistent workers, training
  augmentation) feeding the normal Lightning ``Trainer.fit`` loop of ``STCNNModule``. A
  callback synchronises and reads the clock at batch ends; windows of ``--steps`` batches
  after a warm-up of ``--warmup + 2 x workers`` batches (the DataLoader buffers
  ``2 x workers`` batches while the first, compiling steps run; a shorter warm-up would time
  batches decoded during compilation and overstate a data-bound pipeline).
* ``data``: the same DataLoader alone (decode + augment + collate + pin + host-to-device
  copy, no model): the ceiling the data pipeline puts on ``e2e``.

The naive reference (``naive``): eager fp32, batch 64, ``F.affine_grid``/``F.grid_sample``
(the project's sampler), ``torch.optim.SGD`` default (foreach), cuDNN autotuning off, PIL
decoding in DataLoader workers. Every figure is also given as a ratio to the naive figure of
the same cell and mode, measured in the same run.

Levers (``--levers`` and ``--best`` take ``+``-joined tokens; each maps to a config option):

====================  ================================================================
token                 meaning (config option)
====================  ================================================================
``naive``             nothing (the reference)
``bench``             ``torch.backends.cudnn.benchmark`` (``trainer.benchmark``)
``bf16``              bf16 autocast (``trainer.precision=bf16-mixed``)
``cl``                channels_last weights and inputs (no config option yet)
``fused``             ``torch.optim.SGD(fused=True)`` (``+model.optimizer.fused=true``)
``analytic``          sampler without ``F.affine_grid``, one call for N crops
                      (``model.sampler=analytic``, see ``stnrepro.models.samplers``)
``roi_align``         ``torchvision.ops.roi_align`` crops with exact gradients
                      (``model.sampler=roi_align``)
``compile``           ``torch.compile`` of each trunk (``dynamic=False``; no config option
                      yet): trunks with the same input size give the same graph, which
                      inductor's graph cache compiles once, so a 4xST model costs two
                      compilations (224 and 448 px), not one of a five-trunk graph
``compile_net``       ``torch.compile`` of the whole STCNN (needs ``analytic`` or
                      ``roi_align`` if shapes become symbolic: ``F.affine_grid`` fails)
``cudagraphs``        compile mode ``reduce-overhead`` (CUDA graphs via cudagraph trees)
``autotune``          compile mode ``max-autotune-no-cudagraphs``
``b<N>``              batch size N (``data.batch_size``)
``w<N>``              N DataLoader workers (``data.num_workers``), e2e and data modes only
====================  ================================================================

Not levers here: GPU-side augmentation and GPU JPEG decoding (``torchvision.io.decode_jpeg``
on CUDA) would need a different data module; the ``data`` rows show whether PIL decoding is
the limit. Persistent pinned-memory workers are the data module's defaults in every run.

Budget: ``--quick`` is the full matrix (both backbones, four cells, naive and best, model
and e2e) plus a short lever ablation on inception_v3 CNN 224 and 4xST 448, with 3 warm-up
steps and 3 windows of 5 steps, and a time budget (``--budget-s``, 420 s) after which the
remaining measurements are reported as skipped; the report and JSON are rewritten after every
measurement, so an interrupted run still leaves a report. Order of work: sampler
micro-benchmark, matrix of the first backbone (target cells CNN 224 and 4xST 448 first),
ablation, matrix of the other backbones. ``--resume`` keeps the cells of the existing JSON
that are complete and re-measures the others whole, so that every ratio still compares
figures of one run (the report lists each run's environment). Within a cell, the model-only
and e2e measurements of a configuration share one prepared model: compiled trunks compile
once per configuration, and the first-step time (compilation) is reported.

Notes: ``torch.compile`` of the naive ST model failed on ``F.affine_grid`` with symbolic
shapes (a second batch size, e.g. an epoch's last partial batch, makes shapes dynamic); the
``analytic``/``roi_align`` samplers avoid it, and e2e here uses only full batches
(``limit_train_batches``). Without ``--data-root`` the e2e data is a synthetic CUB-layout
folder (``stnrepro.data.synthetic``, ~500x375 JPEGs like CUB) generated under
``--data-cache`` and sized so that the timed batches fit in one epoch.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import gc
import itertools
import json
import logging
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
try:
    import stnrepro  # noqa: F401
except ImportError:  # run from a checkout without installing: use its src/
    sys.path.insert(0, str(REPO / "src"))

import pytorch_lightning as pl  # noqa: E402

from stnrepro.data.cub import CUBDataModule, CUBIndex  # noqa: E402
from stnrepro.models.samplers import SAMPLERS, sample_crops  # noqa: E402
from stnrepro.models.st_cnn import STCNN  # noqa: E402
from stnrepro.module import STCNNModule  # noqa: E402

#: cell name -> (number of transformers, input image size); crops are CROP_SIZE px.
CELLS: dict[str, tuple[int, int]] = {
    "cnn224": (0, 224),
    "2st224": (2, 224),
    "2st448": (2, 448),
    "4st448": (4, 448),
}
CELL_TITLES = {
    "cnn224": "CNN 224",
    "2st224": "2xST 224",
    "2st448": "2xST 448",
    "4st448": "4xST 448",
}
CROP_SIZE = 224
TINY_DIVISOR = 14  # --tiny: 224 -> 16 px, 448 -> 32 px, small backbone
BACKBONES = ("inception_v3", "resnet50")
NAIVE = "naive"
DEFAULT_BEST = "bench+bf16+cl+fused+analytic+compile"
#: The lever ablation, cumulative so that "x previous" is what each lever adds.
LADDER = (
    "naive",
    "bench",
    "bench+bf16",
    "bench+bf16+cl",
    "bench+bf16+cl+fused",
    "bench+bf16+cl+fused+analytic",
    "bench+bf16+cl+fused+roi_align",
    "bench+bf16+cl+fused+analytic+compile",
    "bench+bf16+cl+fused+analytic+compile+b128",
    "bench+bf16+cl+fused+analytic+cudagraphs",
)
QUICK_LADDER = (
    "naive",
    "bench+bf16",
    "bench+bf16+cl",
    "bench+bf16+cl+fused+analytic",
    "bench+bf16+cl+fused+analytic+compile",
    "bench+bf16+cl+fused+analytic+compile+b128",
)
TINY_LADDER = ("naive", "bf16+cl", "bf16+cl+fused+roi_align", "fused+analytic+compile")
TINY_BEST = "bench+bf16+cl+fused+analytic"
TARGETS = {"4st448": 3.0, "cnn224": 2.5}  # inception_v3, best vs naive (issue targets)
E2E_TARGET = 0.9  # e2e >= 90% of model-only, every cell
PREFETCH_FACTOR = 2  # torch DataLoader default, used by CUBDataModule


# --------------------------------------------------------------------------- levers


@dataclass(frozen=True)
class Lever:
    """One configuration to measure, parsed from ``+``-joined tokens (see module docstring)."""

    name: str
    bench: bool = False
    precision: str = "fp32"
    channels_last: bool = False
    fused: bool = False
    sampler: str = "grid_sample"
    compile: str = ""  # "" | "trunks" | "net"
    compile_mode: str | None = None
    batch_size: int | None = None
    workers: int | None = None

    def effective(self, num_transformers: int) -> Lever:
        """The configuration that actually differs for a cell (no sampler without an ST)."""
        return replace(
            self, name="", sampler="grid_sample" if num_transformers == 0 else self.sampler
        )


def parse_lever(spec: str) -> Lever:
    """``"bench+bf16+cl"`` -> :class:`Lever`; raises ValueError naming a bad token."""
    kw: dict[str, Any] = {}
    for tok in (t.strip() for t in spec.split("+")):
        if tok in ("naive", "fp32", ""):
            continue
        if tok == "bench":
            kw["bench"] = True
        elif tok == "bf16":
            kw["precision"] = "bf16"
        elif tok == "cl":
            kw["channels_last"] = True
        elif tok == "fused":
            kw["fused"] = True
        elif tok in SAMPLERS:
            kw["sampler"] = tok
        elif tok == "compile":
            kw["compile"] = "trunks"
        elif tok == "compile_net":
            kw["compile"] = "net"
        elif tok in ("cudagraphs", "autotune"):
            kw.setdefault("compile", "trunks")
            kw["compile_mode"] = (
                "reduce-overhead" if tok == "cudagraphs" else "max-autotune-no-cudagraphs"
            )
        elif tok[:1] in ("b", "w") and tok[1:].isdigit() and int(tok[1:]) > 0:
            kw["batch_size" if tok[0] == "b" else "workers"] = int(tok[1:])
        else:
            raise ValueError(
                f"lever {spec!r}: unknown token {tok!r} (expected naive, bench, bf16, cl, fused, "
                f"{', '.join(SAMPLERS)}, compile, compile_net, cudagraphs, autotune, b<N>, w<N>)"
            )
    return Lever(name=spec, **kw)


# --------------------------------------------------------------------------- results


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
    ablation_backbones: list[str]
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

    def cell_sizes(self, cell: str) -> tuple[int, int, int]:
        """(num_transformers, image size, crop size) of a cell (scaled down with --tiny)."""
        n, size = CELLS[cell]
        if self.tiny:
            return n, size // TINY_DIVISOR, CROP_SIZE // TINY_DIVISOR
        return n, size, CROP_SIZE

    @property
    def e2e_warmup(self) -> int:
        return self.warmup + PREFETCH_FACTOR * self.workers


def _now() -> float:
    return time.perf_counter()


class _Timer:
    """CUDA events on a GPU (GPU time between two points of the stream), else perf_counter."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self._a = torch.cuda.Event(enable_timing=True)
            self._b = torch.cuda.Event(enable_timing=True)
            self._a.record()
        else:
            self._t = _now()

    def stop(self) -> float:
        """Seconds since :meth:`start`."""
        if self.cuda:
            self._b.record()
            self._b.synchronize()
            return self._a.elapsed_time(self._b) / 1000.0
        return _now() - self._t


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _short_error(exc: BaseException) -> str:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "out of GPU memory"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


# --------------------------------------------------------------------------- model set-up


class _BenchModule(STCNNModule):
    """STCNNModule that can convert the batch to channels_last after the device transfer."""

    channels_last: bool = False

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.channels_last:
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        return batch


def _optimizer(fused: bool) -> Callable[..., torch.optim.Optimizer]:
    """The project's SGD (conf/model/st_cnn.yaml), optionally fused."""
    extra = {"fused": True} if fused else {}
    return functools.partial(torch.optim.SGD, lr=0.01, momentum=0.9, weight_decay=1e-4, **extra)


def set_sampler(net: STCNN, sampler: str) -> None:
    """Select the crop sampler of an STCNN, with or without ``SpatialTransformer.sampler``."""
    st = net.transformer
    if st is None:
        return
    if hasattr(st, "sampler"):  # SpatialTransformer has the sampler option
        st.sampler = sampler
        return
    if sampler == "grid_sample":
        return
    size = st.crop_size
    st.crops = lambda image, theta: sample_crops(image, theta, size, sampler, validate=False)


def _trunks(net: STCNN) -> list[torch.nn.Module]:
    return ([net.loc_trunk] if net.loc_trunk is not None else []) + list(net.parts)


def apply_compile(net: STCNN, lever: Lever, backend: str) -> None:
    """torch.compile per trunk (shared graphs) or of the whole net, as the lever says."""
    if not lever.compile:
        return
    kw: dict[str, Any] = {"backend": backend, "dynamic": False}
    if lever.compile_mode and backend == "inductor":
        kw["mode"] = lever.compile_mode
    for module in [net] if lever.compile == "net" else _trunks(net):
        module.compile(**kw)


def _prepare(base: _BenchModule, lever: Lever, backend: str) -> _BenchModule:
    module = copy.deepcopy(base)
    module.optimizer_factory = _optimizer(lever.fused)
    set_sampler(module.net, lever.sampler)
    module.channels_last = lever.channels_last
    if lever.channels_last:
        module.to(memory_format=torch.channels_last)
    if lever.compile:
        torch._dynamo.reset()
        apply_compile(module.net, lever, backend)
    return module


def _autocast(lever: Lever, device: torch.device) -> contextlib.AbstractContextManager:
    if lever.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------- measurements


def measure_model(module: _BenchModule, lever: Lever, s: Settings, image_size: int) -> dict:
    """Model-only training steps on random device tensors: img/s windows and peak memory.

    ``module`` is prepared (:func:`_prepare`) and stays usable for :func:`measure_e2e`
    afterwards: compiled trunks are then reused, not recompiled.
    """
    device = s.device
    bs = lever.batch_size or s.batch_size
    torch.backends.cudnn.benchmark = lever.bench
    _free(device)
    _reset_peak(device)
    module.to(device)
    net = module.net.train()
    opt = module.configure_optimizers()
    gen = torch.Generator(device="cpu").manual_seed(s.seed)
    image = torch.randn(bs, 3, image_size, image_size, generator=gen).to(device)
    if lever.channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    label = torch.randint(0, module.hparams.num_classes, (bs,), generator=gen).to(device)

    def step() -> None:
        with _autocast(lever, device):
            loss = F.cross_entropy(net(image).logits, label)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t0 = _now()
    step()
    _sync(device)
    first = _now() - t0
    for _ in range(s.warmup - 1):
        step()
    timer = _Timer(device)
    windows = []
    for _ in range(s.repeats):
        timer.start()
        for _ in range(s.steps):
            step()
        windows.append(bs * s.steps / timer.stop())
    # The caller frees the device memory once this frame (model, optimizer, batch) is gone.
    return {
        "windows": windows,
        "peak_gib": _peak_gib(device),
        "first_step_s": first,
        "batch_size": bs,
    }


class ThroughputCallback(pl.Callback):
    """Clock reads (synchronised) at batch ends: windows of ``steps`` batches after ``warmup``."""

    def __init__(self, warmup: int, steps: int, repeats: int, device: torch.device) -> None:
        self.warmup, self.steps, self.repeats, self.device = warmup, steps, repeats, device
        self.count = 0
        self.images = 0
        self.marks: list[tuple[float, int]] = []
        self.first_step_s: float | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _sync(self.device)
        _reset_peak(self.device)
        self.t_start = _now()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.count += 1
        self.images += int(batch["label"].shape[0])
        if self.count == 1:
            _sync(self.device)
            self.first_step_s = _now() - self.t_start
        k = self.count - self.warmup
        if k >= 0 and k % self.steps == 0 and len(self.marks) <= self.repeats:
            _sync(self.device)
            self.marks.append((_now(), self.images))

    @property
    def windows(self) -> list[float]:
        return [(n1 - n0) / (t1 - t0) for (t0, n0), (t1, n1) in itertools.pairwise(self.marks)]


def _datamodule(root: str, num_classes: int, image_size: int, bs: int, workers: int, **kw: Any):
    dm = CUBDataModule(
        root=root,
        num_classes=num_classes,
        image_size=image_size,
        batch_size=bs,
        num_workers=workers,
        val_fraction=0.0,
        augment=True,
        **kw,
    )
    dm.setup()
    return dm


def measure_e2e(
    module: _BenchModule,
    lever: Lever,
    s: Settings,
    image_size: int,
    data: tuple[str, int],
    tmp: Path,
) -> dict:
    """The real data module through ``Trainer.fit``: steady-state img/s after warm-up."""
    device = s.device
    bs = lever.batch_size or s.batch_size
    workers = s.workers if lever.workers is None else lever.workers
    warmup = s.warmup + PREFETCH_FACTOR * workers
    dm = _datamodule(data[0], data[1], image_size, bs, workers)
    full_batches = len(dm.train_set) // bs
    if full_batches < 1:
        raise RuntimeError(f"{len(dm.train_set)} training images: not one full batch of {bs}")
    cb = ThroughputCallback(warmup, s.steps, s.repeats, device)
    _free(device)
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision="bf16-mixed" if lever.precision == "bf16" else "32-true",
        max_steps=warmup + s.steps * s.repeats,
        max_epochs=-1,
        limit_train_batches=full_batches,  # full batches only: no shape change, no recompile
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        benchmark=lever.bench,
        deterministic=False,
        callbacks=[cb],
        default_root_dir=str(tmp),
    )
    trainer.fit(module, datamodule=dm)
    peak = _peak_gib(device)
    windows = cb.windows
    del trainer, dm
    _free(device)
    if not windows:
        raise RuntimeError(f"no timed window ({cb.count} batches ran)")
    note = None
    if full_batches < warmup + s.steps * s.repeats:
        note = f"{full_batches} batches per epoch: timed windows may cross an epoch boundary"
    return {
        "windows": windows,
        "peak_gib": peak,
        "first_step_s": cb.first_step_s,
        "batch_size": bs,
        "workers": workers,
        "note": note,
    }


def measure_data(s: Settings, data: tuple[str, int], image_size: int, bs: int, workers: int):
    """The DataLoader alone (+ host-to-device copy): the ceiling on e2e throughput."""
    dm = _datamodule(data[0], data[1], image_size, bs, workers, persistent_workers=False)
    loader = dm.train_dataloader()
    warmup = workers + 1
    per_window = max(s.steps, workers)
    need = warmup + per_window * s.repeats
    marks: list[float] = []
    count = 0
    while count < need:
        for batch in loader:
            batch["image"].to(s.device, non_blocking=True)
            count += 1
            if count >= warmup and (count - warmup) % per_window == 0:
                _sync(s.device)
                marks.append(_now())
            if count >= need:
                break
    del loader, dm
    windows = [bs * per_window / (b - a) for a, b in itertools.pairwise(marks)]
    return {"windows": windows, "batch_size": bs, "workers": workers}


def sampler_bench(s: Settings) -> list[dict]:
    """Crop samplers alone: 256 crops 448 -> 224 (4 x 4, 32 -> 16 with --tiny)."""
    device = s.device
    b, n, size, crop = (4, 4, 32, 16) if s.tiny else (64, 4, 448, 224)
    gen = torch.Generator(device="cpu").manual_seed(s.seed)
    image = torch.randn(b, 3, size, size, generator=gen).to(device)
    scale = torch.full((b, n), 0.5)
    t = (1 - scale).unsqueeze(-1) * (2 * torch.rand(b, n, 2, generator=gen) - 1)
    theta = torch.zeros(b, n, 2, 3)
    theta[..., 0, 0] = theta[..., 1, 1] = scale
    theta[..., 0, 2], theta[..., 1, 2] = t[..., 0], t[..., 1]
    theta = theta.to(device)
    weight = torch.randn(b, 3, crop, crop, generator=gen).to(device)
    reps, inner = (3, 3) if s.tiny else (5, 20 if device.type == "cuda" else 2)
    ref = torch.stack(sample_crops(image, theta, crop, "grid_sample"))
    rows = []
    timer = _Timer(device)
    for name in SAMPLERS:

        def fwd(name: str = name) -> list[torch.Tensor]:
            return sample_crops(image, theta, crop, name, validate=False)

        def fwd_bwd(name: str = name) -> None:
            th = theta.clone().requires_grad_()
            crops = sample_crops(image, th, crop, name, validate=False)
            torch.autograd.grad(sum((c * weight).sum() for c in crops), th)

        out: dict[str, Any] = {"sampler": name, "crops": b * n, "size": f"{size}->{crop}"}
        with torch.no_grad():
            out["max_abs_diff"] = float((torch.stack(fwd()) - ref).abs().max())
        for key, fn in (("fwd_ms", fwd), ("fwd_bwd_ms", fwd_bwd)):
            fn()
            times = []
            for _ in range(reps):
                timer.start()
                for _ in range(inner):
                    if key == "fwd_ms":
                        with torch.no_grad():
                            fn()
                    else:
                        fn()
                times.append(timer.stop() / inner * 1000)
            out[key] = statistics.median(times)
        rows.append(out)
    return rows


# --------------------------------------------------------------------------- data


def prepare_data(s: Settings, max_batch: int) -> tuple[str, int]:
    """(root, num_classes) of the e2e data: --data-root, else a generated synthetic folder."""
    if s.data_root:
        index = CUBIndex.load(s.data_root)
        return str(index.root), index.num_classes
    try:
        from stnrepro.data.synthetic import ensure_generated, preset_settings
    except ImportError as exc:  # pragma: no cover - the module ships with the package
        raise SystemExit(f"--data-root missing and no synthetic data generator ({exc})") from None
    # Enough full batches for one epoch of e2e (warm-up + windows) and of the data-only loop
    # (measure_data), so that no timed window contains an epoch boundary.
    e2e_batches = s.e2e_warmup + s.steps * s.repeats
    data_batches = s.workers + 1 + max(s.steps, s.workers) * s.repeats
    steps = max(e2e_batches, data_batches) + 2
    if s.tiny:
        preset, classes = "synth_birds_tiny", 4
    else:
        preset, classes = "synth_birds", 200
    per_class = min(60, max(4, math.ceil(max_batch * steps / classes) + 1))
    settings = preset_settings(
        preset,
        num_classes=classes,
        images_per_class=per_class,
        train_fraction=(per_class - 1 + 0.25) / per_class,  # all but one image per class
    )
    t0 = _now()
    root = ensure_generated(settings, s.data_cache, progress=False)
    print(f"[data] {settings.num_images} synthetic images at {root} ({_now() - t0:.1f}s)")
    return str(root), classes


# --------------------------------------------------------------------------- the run


class Benchmark:
    """Runs the requested measurements in priority order and keeps the report up to date."""

    def __init__(self, s: Settings, argv: Sequence[str]) -> None:
        self.s = s
        self.argv = list(argv)
        self.t0 = _now()
        self.results: list[Result] = []
        self.samplers: list[dict] = []
        self.data: tuple[str, int] | None = None
        self.runs: list[dict[str, Any]] = [environment(s.device)]
        self._bases: dict[tuple[str, str], _BenchModule] = {}
        self.finished = False
        if s.resume and s.json_path.is_file():
            self._load_previous(json.loads(s.json_path.read_text(encoding="utf-8")))

    @property
    def env(self) -> dict[str, Any]:
        """This run's environment (earlier runs' are in ``self.runs[:-1]``)."""
        return self.runs[-1]

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
        old_runs = payload.get("runs") or [payload.get("environment", {})]
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
        return _now() - self.t0

    def over_budget(self) -> bool:
        return self.s.budget_s is not None and self.elapsed() > self.s.budget_s

    def find(self, backbone: str, cell: str, lever: str, mode: str) -> Result | None:
        for r in self.results:
            if (r.backbone, r.cell, r.lever, r.mode) == (backbone, cell, lever, mode):
                return r
        return None

    def save(self) -> None:
        s = self.s
        s.out.parent.mkdir(parents=True, exist_ok=True)
        s.out.write_text(render_report(self), encoding="utf-8")
        payload = {
            "runs": self.runs,
            "settings": settings_dict(s),
            "samplers": self.samplers,
            "results": [asdict(r) for r in self.results],
            "elapsed_s": self.elapsed(),
        }
        s.json_path.parent.mkdir(parents=True, exist_ok=True)
        s.json_path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")

    @property
    def num_classes(self) -> int:
        return self.data[1] if self.data is not None else (4 if self.s.tiny else 200)

    def base(self, backbone: str, cell: str) -> _BenchModule:
        """The CPU model of a cell, built once (same seed) and deep-copied per lever."""
        key = (backbone, cell)
        if key not in self._bases:
            self._bases.clear()  # keep one cell's weights in memory at a time
            n, image_size, crop = self.s.cell_sizes(cell)
            torch.manual_seed(self.s.seed)
            self._bases[key] = _BenchModule(
                num_classes=self.num_classes,
                optimizer=_optimizer(False),
                scheduler=None,
                backbone=backbone,
                pretrained=False,
                num_transformers=n,
                image_size=image_size,
                crop_size=crop,
            )
        return self._bases[key]

    def _new_result(self, backbone: str, cell: str, lever: Lever, mode: str) -> Result:
        s = self.s
        result = Result(
            backbone, cell, lever.name, mode, lever.batch_size or s.batch_size, lever.precision
        )
        result.run = len(self.runs) - 1
        if mode != "model":
            result.workers = s.workers if lever.workers is None else lever.workers
        return result

    def _reuse(self, result: Result, lever: Lever) -> bool:
        """Fill ``result`` from a measurement of the same effective configuration, if any."""
        n = self.s.cell_sizes(result.cell)[0]
        for r in self.results:
            if (r.backbone, r.cell, r.mode, r.run) != (
                result.backbone,
                result.cell,
                result.mode,
                result.run,
            ):
                continue
            if r.img_s is not None and parse_lever(r.lever).effective(n) == lever.effective(n):
                result.img_s, result.windows, result.peak_gib = r.img_s, r.windows, r.peak_gib
                result.first_step_s = r.first_step_s
                result.note = f"same configuration as {r.lever} for this cell"
                return True
        return False

    def _record(self, result: Result, t0: float) -> None:
        result.seconds = _now() - t0
        self.results.append(result)
        shown = f"{result.img_s:9.1f} img/s" if result.img_s is not None else result.error
        label = f"{result.backbone:>12} {result.cell:>6} {result.mode:>5} {result.lever}"
        print(f"[{self.elapsed():6.1f}s] {label}: {shown} ({result.seconds:.1f}s)", flush=True)
        self.save()

    # -- one configuration, model-only then end to end on the same prepared module ----------

    def measure(self, backbone: str, cell: str, lever: Lever, modes: Sequence[str]) -> None:
        """Measure (or reuse, or skip) ``modes`` of one (backbone, cell, lever).

        model and e2e use the same prepared module, so compiled trunks compile once.
        """
        s = self.s
        todo: list[Result] = []
        for mode in modes:
            if self.find(backbone, cell, lever.name, mode) is not None:
                continue
            result = self._new_result(backbone, cell, lever, mode)
            if self._reuse(result, lever):
                self._record(result, _now())
            else:
                todo.append(result)
        if not todo:
            return
        if self.over_budget():
            for result in todo:
                result.error = f"skipped: time budget of {s.budget_s:.0f}s spent"
                self._record(result, _now())
            return
        _, image_size, _ = s.cell_sizes(cell)
        module: _BenchModule | None = None
        try:
            for result in todo:
                t0 = _now()
                try:
                    if result.mode == "data":
                        assert self.data is not None
                        out = measure_data(
                            s, self.data, image_size, result.batch_size, result.workers or 0
                        )
                    else:
                        if module is None:
                            module = _prepare(self.base(backbone, cell), lever, s.compile_backend)
                        if result.mode == "model":
                            out = measure_model(module, lever, s, image_size)
                        else:
                            assert self.data is not None
                            with tempfile.TemporaryDirectory(prefix="stn-bench-") as tmp:
                                out = measure_e2e(
                                    module, lever, s, image_size, self.data, Path(tmp)
                                )
                    for key, value in out.items():
                        setattr(result, key, value)
                    result.img_s = statistics.median(result.windows)
                except Exception as exc:  # noqa: BLE001 - one failed lever must not end the run
                    result.error = _short_error(exc)
                    module = None  # a failure may leave it half-moved or mid-compile
                    _free(s.device)
                self._record(result, t0)
        finally:
            del module
            if lever.compile:
                torch._dynamo.reset()
            _free(s.device)

    # -- phases -----------------------------------------------------------------------------

    def run_matrix(self, backbone: str) -> None:
        s = self.s
        naive = parse_lever(NAIVE)
        modes = [m for m in ("model", "e2e") if m in s.modes]
        # The target cells first, so that a spent budget costs the other cells.
        for cell in sorted(s.cells, key=lambda c: (c not in TARGETS, list(CELLS).index(c))):
            self.measure(backbone, cell, naive, modes)
            if s.best.name != NAIVE:
                self.measure(backbone, cell, s.best, modes)
            if "e2e" in s.modes:
                self.measure(backbone, cell, s.best, ["data"])

    def run_ablation(self) -> None:
        s = self.s
        for backbone in s.ablation_backbones:
            for cell in s.ablation_cells:
                for lever in s.ladder:
                    self.measure(backbone, cell, lever, ["model"])

    def run(self) -> None:
        s = self.s
        torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)
        if "e2e" in s.modes and "matrix" in s.parts:
            levers = [parse_lever(NAIVE), s.best]
            self.data = prepare_data(s, max(lv.batch_size or s.batch_size for lv in levers))
        self.save()
        if "sampler" in s.parts and not self.samplers:
            try:
                self.samplers = sampler_bench(s)
            except Exception as exc:  # noqa: BLE001
                self.samplers = [{"sampler": "all", "error": _short_error(exc)}]
            for row in self.samplers:
                print(f"[sampler] {row}", flush=True)
            self.save()
        if "matrix" in s.parts:
            self.run_matrix(s.backbones[0])
        if "ablation" in s.parts:
            self.run_ablation()
        if "matrix" in s.parts:
            for backbone in s.backbones[1:]:
                self.run_matrix(backbone)
        self._bases.clear()
        self.finished = True
        self.save()


# --------------------------------------------------------------------------- report


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True
        )
        commit = out.stdout.strip()
        if not commit:
            return "unknown (not a git checkout)"
        return commit + (" (+ local changes)" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def environment(device: torch.device) -> dict[str, Any]:
    """What the figures depend on: device, library versions, math settings."""
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
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_precision": torch.get_float32_matmul_precision(),
        "git": _git_commit(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["device_name"] = props.name
        env["gpu"] = (
            f"{props.name}, {props.multi_processor_count} SMs, "
            f"{props.total_memory / 2**30:.0f} GiB, capability {props.major}.{props.minor}"
        )
    return env


def settings_dict(s: Settings) -> dict[str, Any]:
    d = {k: v for k, v in vars(s).items() if k not in ("best", "ladder")}
    d.update(
        device=str(s.device),
        out=str(s.out),
        json_path=str(s.json_path),
        best=s.best.name,
        ladder=[lv.name for lv in s.ladder],
        e2e_warmup=s.e2e_warmup,
    )
    return d


def _fmt(x: float | None, spec: str = ".1f") -> str:
    return "—" if x is None else format(x, spec)


def _ratio(a: float | None, b: float | None) -> str:
    return "—" if a is None or not b else f"{a / b:.2f}x"


def _spread(r: Result) -> str:
    if not r.windows:
        return "—"
    return f"{min(r.windows):.0f}–{max(r.windows):.0f}"


def _note(r: Result, runs: int = 1) -> str:
    parts = [p for p in (r.error, r.note) if p]
    if runs > 1:
        parts.insert(0, f"run {r.run}")
    if r.first_step_s is not None and r.first_step_s > 5:
        parts.append(f"first step {r.first_step_s:.0f}s")
    return "; ".join(parts).replace("|", "/")


def _env_lines(env: dict[str, Any]) -> list[str]:
    return [
        f"- Device: **{env.get('gpu', env.get('device_name'))}** (`{env.get('device')}`)",
        f"- Host CPU: {env.get('cpu')}",
        f"- torch {env.get('torch')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, "
        f"torchvision {env.get('torchvision')}, pytorch-lightning "
        f"{env.get('pytorch_lightning')}, Python {env.get('python')}",
        f"- fp32 math: cuDNN allow_tf32={env.get('cudnn_allow_tf32')}, matmul precision "
        f"'{env.get('matmul_precision')}'",
        f"- Commit: {env.get('git')}; date (UTC): {env.get('date_utc')}",
    ]


def render_report(b: Benchmark) -> str:
    """The Markdown report: environment, method, matrix per backbone, targets, ablation."""
    s = b.s
    cuda = s.device.type == "cuda"
    lines = ["# Training throughput: CNN vs ST-CNN (stnrepro)", ""]
    skipped = sum(1 for r in b.results if r.error and r.error.startswith("skipped"))
    failed = sum(1 for r in b.results if r.error and not r.error.startswith("skipped"))
    status = "finished" if b.finished else "in progress"
    if skipped or failed:
        status += f"; {skipped} measurements skipped for the time budget, {failed} failed"
    lines += [
        f"Generated by `python scripts/benchmark.py {shlex.join(b.argv)}` "
        f"({b.elapsed():.0f} s, {status}).",
        "",
        "## Environment",
        "",
    ]
    for i, run_env in enumerate(b.runs):
        if len(b.runs) > 1:
            lines += [f"Run {i}{' (this run)' if i == len(b.runs) - 1 else ''}:", ""]
        lines += _env_lines(run_env) + [""]
    if len(b.runs) > 1:
        lines += [
            "Cells come whole from one run (--resume re-measures incomplete cells), so every "
            "ratio compares figures of the same run; the run column says which.",
            "",
        ]
    lines += [
        "## Method",
        "",
        f"- Batch size {s.batch_size} unless a lever says `b<N>`; precision fp32 unless `bf16` "
        "(autocast; Lightning `bf16-mixed` end to end). Backbone weights random (speed is the "
        f"same as ImageNet weights); crops {s.cell_sizes('4st448')[2]} px"
        + (f"; **--tiny**: images /{TINY_DIVISOR}, small backbone" if s.tiny else "")
        + ".",
        f"- model: {s.warmup} warm-up steps, then {s.repeats} windows of {s.steps} training "
        "steps (forward, loss, backward, SGD step) on random tensors already on the device, "
        + ("timed with CUDA events" if cuda else "timed with perf_counter")
        + "; figure = median window (img/s), range = slowest–fastest window.",
        f"- e2e: `CUBDataModule` (PIL decode + augment in {s.workers} workers, pinned, "
        f"persistent) through `Trainer.fit` of `STCNNModule`; synchronised clock at batch ends; "
        f"{s.e2e_warmup} warm-up batches (warm-up + 2 x workers: the prefetch buffer), then "
        f"{s.repeats} windows of {s.steps} batches; median window.",
        "- data: the same DataLoader alone + host-to-device copy (ceiling for e2e). "
        "`/ model`: e2e or data img/s as a fraction of model-only img/s of the same config.",
        "- Peak memory: `torch.cuda.max_memory_allocated` over the run (weights, gradients, "
        "optimizer state, activations)." + ("" if cuda else " Not measured on CPU."),
        "- Ratios: to the naive reference of the same cell and mode in this run.",
        f"- naive = eager fp32, batch {s.batch_size}, `F.affine_grid`/`F.grid_sample`, default "
        "SGD, cuDNN autotune off, PIL in workers. best = "
        f"`{s.best.name}`.",
        "",
    ]
    if b.data is not None:
        lines += [f"- e2e data: `{b.data[0]}` ({b.data[1]} classes)", ""]

    matrix_backbones = [bb for bb in s.backbones if any(r.backbone == bb for r in b.results)]
    for backbone in matrix_backbones if "matrix" in s.parts else []:
        lines += [f"## {backbone}", ""]
        lines += [
            "| cell | mode | config | batch | img/s | x naive | / model | peak GiB "
            "| windows | note |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for cell in s.cells:
            rows = [
                b.find(backbone, cell, lv, mode)
                for mode in ("model", "e2e", "data")
                for lv in dict.fromkeys([NAIVE, s.best.name])
            ]
            for r in rows:
                if r is None:
                    continue
                if r.mode == "data" and r.lever != s.best.name:
                    continue
                naive = b.find(backbone, cell, NAIVE, r.mode)
                model = b.find(backbone, cell, r.lever, "model")
                vs_model = (  # e2e (or the DataLoader alone) as a fraction of model-only
                    _ratio(r.img_s, model.img_s) if r.mode != "model" and model is not None else ""
                )
                x_naive = _ratio(r.img_s, naive.img_s if naive else None)
                config = "DataLoader only" if r.mode == "data" else f"`{r.lever}`"
                lines.append(
                    f"| {CELL_TITLES[cell]} | {r.mode} | {config} | {r.batch_size} | "
                    f"{_fmt(r.img_s)} | {x_naive if r.mode != 'data' else ''} | {vs_model} | "
                    f"{_fmt(r.peak_gib, '.2f')} | {_spread(r)} | {_note(r, len(b.runs))} |"
                )
        lines.append("")

    lines += render_targets(b)

    if "ablation" in s.parts:
        lines += ["## Levers (model only)", ""]
        for backbone in s.ablation_backbones:
            for cell in s.ablation_cells:
                lines += [
                    f"### {backbone} {CELL_TITLES[cell]}",
                    "",
                    "| lever | batch | img/s | x naive | x previous | peak GiB | first step s "
                    "| note |",
                    "|---|---|---|---|---|---|---|---|",
                ]
                naive = b.find(backbone, cell, NAIVE, "model")
                prev: Result | None = None
                for lever in s.ladder:
                    r = b.find(backbone, cell, lever.name, "model")
                    if r is None:
                        continue
                    lines.append(
                        f"| `{lever.name}` | {r.batch_size} | {_fmt(r.img_s)} | "
                        f"{_ratio(r.img_s, naive.img_s if naive else None)} | "
                        f"{_ratio(r.img_s, prev.img_s) if prev is not None else '—'} | "
                        f"{_fmt(r.peak_gib, '.2f')} | {_fmt(r.first_step_s)} | "
                        f"{_note(r, len(b.runs))} |"
                    )
                    prev = r
                lines.append("")

    if b.samplers:
        lines += [
            "## Crop samplers alone",
            "",
            "Forward, and forward + backward to theta (what training needs), for all crops of "
            "a batch; `max |diff|` = largest difference from `grid_sample` crops (float32).",
            "",
            "| sampler | crops | size | forward ms | fwd+bwd ms | max abs diff |",
            "|---|---|---|---|---|---|",
        ]
        for row in b.samplers:
            if "error" in row:
                lines.append(f"| {row['sampler']} | error: {row['error']} | | | | |")
                continue
            lines.append(
                f"| {row['sampler']} | {row['crops']} | {row['size']} | {row['fwd_ms']:.3f} | "
                f"{row['fwd_bwd_ms']:.3f} | {row['max_abs_diff']:.2e} |"
            )
        lines.append("")

    lines += [
        "## Lever tokens",
        "",
        "naive: the reference; bench: cuDNN autotuning; bf16: bf16 autocast; cl: "
        "channels_last; fused: fused SGD; analytic / roi_align: fast crop samplers (same "
        "function, `tests/test_samplers.py`); compile: `torch.compile` per trunk "
        "(`dynamic=False`); compile_net: whole model; cudagraphs: compile mode reduce-overhead; "
        "autotune: compile mode max-autotune-no-cudagraphs; b<N>: batch size; w<N>: workers.",
        "",
    ]
    return "\n".join(lines)


def render_targets(b: Benchmark) -> list[str]:
    """PASS/FAIL against the issue's targets (inception_v3, one H100)."""
    s = b.s
    if "matrix" not in s.parts:
        return []
    backbone = "inception_v3" if "inception_v3" in s.backbones else s.backbones[0]
    lines = [f"## Targets ({backbone}, best vs naive, same run)", ""]
    if s.device.type != "cuda" or backbone != "inception_v3":
        lines += [
            "Not evaluated: not a GPU run of inception_v3 (the targets are for one H100); the "
            "verdicts below only exercise the code.",
            "",
        ]
    for cell, target in TARGETS.items():
        if cell not in s.cells:
            continue
        for mode in ("model", "e2e"):
            r = b.find(backbone, cell, s.best.name, mode)
            naive = b.find(backbone, cell, NAIVE, mode)
            if r is None or naive is None or r.img_s is None or not naive.img_s:
                verdict = "not measured"
            else:
                ratio = r.img_s / naive.img_s
                verdict = f"{ratio:.2f}x: " + ("PASS" if ratio >= target else "FAIL")
            lines.append(f"- {CELL_TITLES[cell]} {mode}: >= {target}x naive -> {verdict}")
    for cell in s.cells:
        r = b.find(backbone, cell, s.best.name, "e2e")
        m = b.find(backbone, cell, s.best.name, "model")
        if r is None or m is None or r.img_s is None or not m.img_s:
            verdict = "not measured"
        else:
            ratio = r.img_s / m.img_s
            verdict = f"{ratio:.0%}: " + ("PASS" if ratio >= E2E_TARGET else "FAIL")
        lines.append(f"- {CELL_TITLES[cell]} e2e >= {E2E_TARGET:.0%} of model-only -> {verdict}")
    lines.append("")
    return lines


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmark.py",
        description="Training throughput of CNN / ST-CNN cells vs the naive reference.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--tiny", action="store_true", help="CPU CI mode: small backbone and sizes")
    p.add_argument("--quick", action="store_true", help="the ~8 minute H100 preset")
    p.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=(*BACKBONES, "small"))
    p.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    p.add_argument("--batch-size", type=int, default=None, help="default 64 (4 with --tiny)")
    p.add_argument("--steps", type=int, default=None, help="steps per timed window (10)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (5)")
    p.add_argument("--repeats", type=int, default=None, help="timed windows (5)")
    p.add_argument("--levers", nargs="+", default=None, help="ablation ladder (lever strings)")
    p.add_argument("--best", default=None, help=f"config for the matrix (default {DEFAULT_BEST})")
    p.add_argument("--ablation-cells", nargs="+", default=None, choices=list(CELLS))
    p.add_argument("--ablation-backbones", nargs="+", default=None)
    p.add_argument(
        "--parts",
        nargs="+",
        default=["sampler", "matrix", "ablation"],
        choices=("sampler", "matrix", "ablation"),
    )
    p.add_argument("--modes", nargs="+", default=["model", "e2e"], choices=("model", "e2e"))
    p.add_argument("--num-workers", type=int, default=None, help="default min(16, cpu_count)")
    p.add_argument("--data-root", default=None, help="CUB-layout folder (default: synthetic)")
    p.add_argument("--data-cache", default=str(REPO / "data"), help="synthetic data folder")
    p.add_argument("--compile-backend", default=None, help="inductor (aot_eager with --tiny)")
    p.add_argument("--budget-s", type=float, default=None, help="stop measuring after this")
    p.add_argument("--out", default="results/benchmark.md")
    p.add_argument("--json", default=None, help="JSON results (default: --out with .json)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the complete cells of the existing --json and measure the rest",
    )
    return p


def resolve(args: argparse.Namespace) -> Settings:
    """Presets (--tiny, --quick) then explicit options; validates lever strings."""
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        if args.device == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device is available")
        device = torch.device(args.device)
    if args.tiny:
        defaults = dict(batch_size=4, warmup=1, steps=2, repeats=2, workers=0)
        ladder, best, backend, budget = TINY_LADDER, TINY_BEST, "aot_eager", None
    elif args.quick:
        defaults = dict(batch_size=64, warmup=3, steps=5, repeats=3)
        ladder, best, backend, budget = QUICK_LADDER, DEFAULT_BEST, "inductor", 420.0
    else:
        defaults = dict(batch_size=64, warmup=5, steps=10, repeats=5)
        ladder, best, backend, budget = LADDER, DEFAULT_BEST, "inductor", None
    defaults.setdefault("workers", min(16, os.cpu_count() or 1))

    def pick(name: str, key: str | None = None) -> Any:
        value = getattr(args, name)
        return defaults[key or name] if value is None else value

    backbones = ["small"] if args.tiny else list(dict.fromkeys(args.backbones))
    try:
        ladder_levers = [parse_lever(x) for x in (args.levers or ladder)]
        best_lever = parse_lever(args.best or best)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    if ladder_levers[0].name != NAIVE:
        ladder_levers.insert(0, parse_lever(NAIVE))
    ablation_cells = args.ablation_cells or (
        ["cnn224", "4st448"] if not args.tiny else [args.cells[-1]]
    )
    out = Path(args.out)
    s = Settings(
        device=device,
        tiny=args.tiny,
        backbones=backbones,
        cells=[c for c in CELLS if c in args.cells],
        batch_size=pick("batch_size"),
        warmup=max(1, pick("warmup")),
        steps=max(1, pick("steps")),
        repeats=max(1, pick("repeats")),
        workers=max(0, pick("num_workers", "workers")),
        best=best_lever,
        ladder=ladder_levers,
        ablation_cells=[c for c in CELLS if c in ablation_cells],
        ablation_backbones=args.ablation_backbones or backbones[:1],
        parts=list(args.parts),
        modes=list(args.modes),
        compile_backend=args.compile_backend or backend,
        budget_s=args.budget_s if args.budget_s is not None else budget,
        data_root=args.data_root,
        data_cache=args.data_cache,
        out=out,
        json_path=Path(args.json) if args.json else out.with_suffix(".json"),
        seed=args.seed,
        resume=args.resume,
    )
    return s


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, write the Markdown report and JSON, print the report last."""
    argv = list(sys.argv[1:] if argv is None else argv)
    s = resolve(build_parser().parse_args(argv))
    saved = (
        torch.get_num_threads(),
        torch.backends.cudnn.benchmark,
        torch._dynamo.config.cache_size_limit,
    )
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)  # no per-fit banners between rows
    try:
        if s.tiny:
            # Correctness, not speed: one thread is immune to CPU oversubscription (CI runners,
            # parallel test jobs), where spinning OpenMP threads can be 10x slower.
            torch.set_num_threads(1)
        bench = Benchmark(s, argv)
        print(
            f"[bench] device={s.device} backbones={s.backbones} cells={s.cells} "
            f"best={s.best.name} budget={s.budget_s}",
            flush=True,
        )
        bench.run()
    finally:  # main() is also called in-process by the tests: leave global state as found
        torch.set_num_threads(saved[0])
        torch.backends.cudnn.benchmark = saved[1]
        torch._dynamo.config.cache_size_limit = saved[2]
    print(f"[bench] wrote {s.out} and {s.json_path} in {bench.elapsed():.0f}s", flush=True)
    print(s.out.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
