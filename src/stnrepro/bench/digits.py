"""``stn-bench --table1``: Table 1's cells on the CPU, each against a naive loop of the same run.

Per cell (distortion R | RTS x CNN | ST-CNN Aff | ST-CNN TPS), training images per second of

- **naive**: the loop a reader of the PyTorch STN tutorial writes: a ``DataLoader`` (batch
  size as the recipe's, shuffled, no workers) over PIL images made as torchvision's ``MNIST``
  dataset makes them (``Image.fromarray(uint8, mode="L")``), the distortion applied per image
  with torchvision transforms (R: ``RandomRotation(90)``; RTS: ``Pad`` to the canvas, then
  ``RandomAffine(45, translate, scale=(0.7, 1.2))``), ``ToTensor`` and ``Normalize``; the
  same network, eager fp32, plain ``SGD`` steps, torch's default thread count;
- **model**: the recipe's training step (the ``fashion_mnist_table`` experiment: its
  optimizer, speed levers and thread count) on one real distorted batch held in memory
  (:func:`stnrepro.bench.measure.measure_model`);
- **e2e**: the same recipe through its ``DigitsDataModule`` and ``Trainer.fit``
  (:func:`stnrepro.bench.measure.measure_e2e`): the batched distortions included.

A lever ladder (the :mod:`stnrepro.bench.cells` tokens ``cl``, ``bf16``, ``compile``, each
one config override of training) is measured model-only on the target cell, ST-CNN Aff on
RTS. Ratios compare figures of this one run only: e2e / model (is the data pipeline the
limit?) and e2e / naive (what the recipe gains over the tutorial's loop).
"""

from __future__ import annotations

import itertools
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from stnrepro.bench import measure
from stnrepro.bench.cells import NAIVE_SETTINGS, as_overrides, parse_lever
from stnrepro.bench.environment import env_lines, environment
from stnrepro.bench.run import run_error
from stnrepro.config import compose_config
from stnrepro.data.digits import DigitsDataModule
from stnrepro.run.build import build, build_datamodule
from stnrepro.run.checks import validate_config

DISTORTIONS = ("R", "RTS")
MODELS = {"cnn": "CNN", "st_cnn_aff": "ST-CNN Aff", "st_cnn_tps": "ST-CNN TPS"}
TARGET = ("RTS", "st_cnn_aff")
#: The lever ladder on the target cell, cumulative from the recipe without levers.
LADDER = ("fp32", "cl", "cl+bf16", "cl+compile")
#: Goals, as ratios of one run (reported, not enforced).
E2E_OF_MODEL_GOAL = 0.9
OVER_NAIVE_GOAL = 2.0
EXPERIMENT = "fashion_mnist_table"


@dataclass
class DigitSettings:
    out: Path
    json_path: Path
    distortions: list[str]
    models: list[str]
    ladder: list[str]
    batch_size: int | None  # None: the recipe's
    warmup: int
    steps: int
    repeats: int
    data_root: str | None
    extra: list[str] = field(default_factory=list)  # more overrides (tests: small data)


@dataclass
class Row:
    distortion: str
    model: str
    mode: str  # naive | model | e2e | lever
    lever: str
    img_s: float | None = None
    windows: list[float] = field(default_factory=list)
    threads: int | None = None
    seconds: float = 0.0
    error: str | None = None


def recipe_overrides(s: DigitSettings, distortion: str, model: str, lever: str | None) -> list[str]:
    """The experiment's cell as ``stn-train`` would run it; a lever replaces its levers."""
    overrides = [
        f"experiment={EXPERIMENT}",
        f"data/distortion={distortion}",
        f"model=digits/{model}",
        "logger=none",
        "data.val_fraction=0",
        *s.extra,
    ]
    if s.batch_size is not None:
        overrides.append(f"data.batch_size={s.batch_size}")
    if lever is not None:
        levers = {**NAIVE_SETTINGS, **parse_lever(lever).as_dict()}
        levers.pop("trainer.benchmark")  # cuDNN only
        overrides += as_overrides(levers)
    return overrides


def compose(s: DigitSettings, distortion: str, model: str, lever: str | None) -> DictConfig:
    cfg = compose_config(recipe_overrides(s, distortion, model, lever))
    validate_config(cfg)
    if s.data_root is not None:
        cfg.data.root = s.data_root
    return cfg


# --------------------------------------------------------------------------- naive loop


class PILDigits(Dataset):
    """Digits as torchvision's ``MNIST`` hands them out: a PIL image per item, transformed."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Any) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = Image.fromarray(self.images[i], mode="L")
        return self.transform(image), int(self.labels[i])


def tutorial_transform(distortion: str, side: int, canvas: int) -> T.Compose:
    """The distortion as torchvision transforms on one PIL image (the tutorial's style)."""
    norm = [T.ToTensor(), T.Normalize((0.5,), (0.5,))]
    if distortion == "R":
        return T.Compose([T.RandomRotation(90), *norm])
    pad = (canvas - side) // 2
    shift = pad / canvas
    affine = T.RandomAffine(45, translate=(shift, shift), scale=(0.7, 1.2))
    return T.Compose([T.Pad(pad), affine, *norm])


def naive_loop(
    cfg: DictConfig, datamodule: DigitsDataModule, s: DigitSettings, default_threads: int
) -> dict[str, Any]:
    """img/s per window of the tutorial's loop over this cell (see the module docstring):
    the data module's training images (its ``train_limit`` applied), undistorted."""
    torch.set_num_threads(default_threads)
    datamodule.setup("fit")
    train = datamodule.train_set
    assert train is not None
    images, labels = train.images.numpy(), train.labels.numpy()
    side, canvas = images.shape[-1], int(cfg.data.image_size)
    dataset = PILDigits(images, labels, tutorial_transform(cfg.data.distortion, side, canvas))
    bs = int(cfg.data.batch_size)
    loader = DataLoader(dataset, batch_size=bs, shuffle=True, drop_last=True)
    pl.seed_everything(int(cfg.seed), verbose=False)
    net = build(cfg.model).net.train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    marks: list[float] = []
    need = s.warmup + s.steps * s.repeats
    count = 0
    while count < need:
        for x, y in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(net(x).logits, y)
            loss.backward()
            optimizer.step()
            count += 1
            if count >= s.warmup and (count - s.warmup) % s.steps == 0:
                marks.append(time.perf_counter())
            if count >= need:
                break
    windows = [bs * s.steps / (b - a) for a, b in itertools.pairwise(marks)]
    return {"windows": windows, "threads": default_threads}


# --------------------------------------------------------------------------- recipe


def recipe(
    cfg: DictConfig, datamodule: DigitsDataModule, s: DigitSettings, modes: Sequence[str],
    root: Path,
) -> dict:  # fmt: skip
    """{mode: measurement} of the recipe's model-only steps and its fit, one module."""
    threads = cfg.get("threads")
    if threads is not None:
        torch.set_num_threads(int(threads))
    datamodule.setup("fit")
    first = next(iter(datamodule.train_dataloader()))
    batch = {"image": first["image"], "label": first["label"]}
    pl.seed_everything(int(cfg.seed), verbose=False)
    module = build(cfg.model)
    batches = s.warmup + s.steps * s.repeats
    trainer = measure.build_trainer(cfg, root, max_steps=batches, batches=batches)
    out: dict[str, Any] = {}
    for mode in modes:
        if mode == "model":
            result = measure.measure_model(
                module, trainer, cfg, s.warmup, s.steps, s.repeats, int(cfg.seed), batch=batch
            )
        else:
            result = measure.measure_e2e(
                module, trainer, cfg, s.warmup, s.steps, s.repeats, datamodule=datamodule
            )
        result["threads"] = torch.get_num_threads()
        out[mode] = result
    return out


# --------------------------------------------------------------------------- the run


def run(s: DigitSettings, argv: Sequence[str]) -> list[Row]:
    """Measure every cell, then the ladder; the report and JSON are rewritten as rows come."""
    default_threads = torch.get_num_threads()
    env = environment(torch.device("cpu"))
    t0 = time.perf_counter()
    rows: list[Row] = []

    def record(row: Row, started: float, result: dict[str, Any] | None) -> None:
        row.seconds = time.perf_counter() - started
        if result is not None:
            row.windows = [float(w) for w in result["windows"]]
            row.threads = result.get("threads")
            row.img_s = statistics.median(row.windows) if row.windows else None
            if row.img_s is None:
                row.error = "no timed window"
        rows.append(row)
        shown = f"{row.img_s:8.1f} img/s" if row.img_s is not None else row.error
        print(f"[{time.perf_counter() - t0:6.1f}s] {row.distortion:>3} {MODELS[row.model]:>10} "
              f"{row.mode:>5} {row.lever}: {shown}", flush=True)  # fmt: skip
        save(s, argv, env, rows, time.perf_counter() - t0)

    cells = [(d, m) for d in s.distortions for m in s.models]
    cells.sort(key=lambda c: c != TARGET)
    for distortion, model in cells:
        cfg = compose(s, distortion, model, None)
        datamodule = build_datamodule(cfg)  # read once, for the naive loop and the recipe
        started = time.perf_counter()
        row = Row(distortion, model, "naive", "tutorial loop")
        try:
            result: dict[str, Any] | None = naive_loop(cfg, datamodule, s, default_threads)
        except Exception as exc:  # one failure must not end the run
            row.error, result = run_error(exc), None
        record(row, started, result)
        with tempfile.TemporaryDirectory(prefix="stn-bench-") as tmp:
            started = time.perf_counter()
            try:
                both = recipe(cfg, datamodule, s, ("model", "e2e"), Path(tmp))
                errors: dict[str, str | None] = {"model": None, "e2e": None}
            except Exception as exc:
                both, message = {}, run_error(exc)
                errors = {"model": message, "e2e": message}
            for mode in ("model", "e2e"):
                row = Row(distortion, model, mode, "recipe", error=errors[mode])
                record(row, started, both.get(mode))
                started = time.perf_counter()
    if TARGET[0] in s.distortions and TARGET[1] in s.models:
        for lever in s.ladder:
            cfg = compose(s, *TARGET, lever)
            started = time.perf_counter()
            row = Row(*TARGET, "lever", lever)
            with tempfile.TemporaryDirectory(prefix="stn-bench-") as tmp:
                try:
                    result = recipe(cfg, build_datamodule(cfg), s, ("model",), Path(tmp))["model"]
                except Exception as exc:
                    row.error, result = run_error(exc), None
            record(row, started, result)
            if parse_lever(lever).compiles:
                torch._dynamo.reset()
    torch.set_num_threads(default_threads)
    return rows


def save(s: DigitSettings, argv: Sequence[str], env: dict, rows: list[Row], elapsed: float) -> None:
    s.out.parent.mkdir(parents=True, exist_ok=True)
    s.out.write_text(render(s, argv, env, rows, elapsed), encoding="utf-8")
    payload = {
        "environment": env,
        "argv": list(argv),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(s).items()},
        "rows": [asdict(r) for r in rows],
        "elapsed_s": elapsed,
    }
    s.json_path.parent.mkdir(parents=True, exist_ok=True)
    s.json_path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- report


def _rate(row: Row | None) -> str:
    if row is None:
        return "-"
    return f"{row.img_s:,.0f}" if row.img_s is not None else f"failed: {row.error}"


def _ratio(a: Row | None, b: Row | None) -> str:
    if a is None or b is None or a.img_s is None or b.img_s is None:
        return "-"
    return f"{a.img_s / b.img_s:.2f}x"


def render(
    s: DigitSettings, argv: Sequence[str], env: dict, rows: list[Row], elapsed: float
) -> str:
    def find(d: str, m: str, mode: str) -> Row | None:
        return next((r for r in rows if (r.distortion, r.model, r.mode) == (d, m, mode)), None)

    batch = s.batch_size if s.batch_size is not None else "the recipe's"
    lines = [
        "# CPU training throughput: Table 1 cells (Fashion-MNIST)",
        "",
        f"Written by `stn-bench {' '.join(argv)}` in {elapsed:.0f} s.",
        "",
        "## Environment",
        "",
        *env_lines(env),
        "",
        "## Method",
        "",
        f"Training images per second, the median of {s.repeats} windows of {s.steps} steps "
        f"after {s.warmup} warm-up steps; batch size {batch}. **naive** is the PyTorch STN "
        "tutorial's loop: PIL images distorted one at a time by torchvision transforms in a "
        "DataLoader, the same network, eager fp32, plain SGD, torch's default threads. "
        "**model** is the recipe's training step (experiment `fashion_mnist_table`) on one "
        "real batch held in memory; **e2e** is the recipe through its data module and "
        "`Trainer.fit` (Lightning's ThroughputMonitor clock). All figures come from this one "
        "run, so each ratio compares like with like.",
        "",
        "## Cells",
        "",
        "| distortion | model | naive img/s | model img/s | e2e img/s | e2e / model "
        "| e2e / naive | threads (naive, recipe) |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for d in s.distortions:
        for m in s.models:
            naive, model, e2e = find(d, m, "naive"), find(d, m, "model"), find(d, m, "e2e")
            threads = f"{naive.threads if naive else '-'}, {e2e.threads if e2e else '-'}"
            lines.append(
                f"| {d} | {MODELS[m]} | {_rate(naive)} | {_rate(model)} | {_rate(e2e)} "
                f"| {_ratio(e2e, model)} | {_ratio(e2e, naive)} | {threads} |"
            )
    lines += [
        "",
        f"Goals (ratios in one run): e2e / model >= {E2E_OF_MODEL_GOAL:.0%} in every cell; "
        f"e2e / naive >= {OVER_NAIVE_GOAL:.1f}x for {MODELS[TARGET[1]]} on {TARGET[0]}.",
    ]
    target_e2e, target_naive = find(*TARGET, "e2e"), find(*TARGET, "naive")
    if target_e2e is not None and target_naive is not None:
        lines.append(
            f"Reached here: {MODELS[TARGET[1]]} on {TARGET[0]} e2e / naive = "
            f"{_ratio(target_e2e, target_naive)}."
        )
    ladder = [r for r in rows if r.mode == "lever"]
    if ladder:
        lines += [
            "",
            f"## Levers ({MODELS[TARGET[1]]} on {TARGET[0]}, model only)",
            "",
            "Each lever is a config override that training honours (`fp32`: the recipe "
            "with every lever off).",
            "",
            "| lever | img/s | x fp32 | seconds (incl. compile) |",
            "|---|---:|---:|---:|",
        ]
        base = ladder[0]
        for r in ladder:
            lines.append(f"| `{r.lever}` | {_rate(r)} | {_ratio(r, base)} | {r.seconds:.0f} |")
    return "\n".join(lines) + "\n"
