"""Show where a trained ST-CNN's transformers look, and measure whether they find the bird.

    python scripts/show_attention.py outputs/2026-11-22/10-00-00/checkpoints/last.ckpt
    python scripts/show_attention.py RUN/checkpoints/last.ckpt --images 12 --out crops.png

Rebuilds the data module from the run's saved Hydra config (``<run dir>/.hydra/config.yaml``;
the checkpoint is expected in ``<run dir>/checkpoints/`` or in the run dir itself), draws each
transformer's crop on the first N test images (PNG, default ``<run dir>/attention/test.png``),
and prints the attention metrics (IoU with the bird box, box-centre and part hit rates) over
the whole test set. Boxes and parts are used for this evaluation only. Any problem with the
inputs is one line ``error: ...`` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from stnrepro.attention import AttentionMetrics, datamodule_part_names
from stnrepro.callbacks import render_batch_figure
from stnrepro.errors import StnreproError


class UsageError(Exception):
    """Bad command-line input: reported as one line and exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="show_attention.py",
        description="Draw an ST-CNN checkpoint's crops on test images and print the "
        "attention metrics over the test set.",
    )
    parser.add_argument("checkpoint", help="Lightning checkpoint (<run dir>/checkpoints/*.ckpt)")
    parser.add_argument("--images", type=int, default=8, help="test images to draw (default 8)")
    parser.add_argument(
        "--out", help="PNG to write (default: <run dir>/attention/test.png)", default=None
    )
    parser.add_argument(
        "--data-root",
        help="dataset location if it moved: data.root for CUB, data.cache_dir for the "
        "synthetic dataset",
    )
    parser.add_argument(
        "--num-workers", type=int, default=None, help="data loader workers (default: config's)"
    )
    parser.add_argument(
        "--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ..."
    )
    parser.add_argument(
        "--no-metrics", action="store_true", help="only draw the figure (skip the test-set pass)"
    )
    return parser


def find_config(checkpoint: Path) -> tuple[Path, Path]:
    """``(run dir, config path)`` for a checkpoint in ``<run>/checkpoints/`` or ``<run>/``."""
    for run_dir in (checkpoint.parent.parent, checkpoint.parent):
        config = run_dir / ".hydra" / "config.yaml"
        if config.is_file():
            return run_dir, config
    raise UsageError(
        f"{checkpoint.parent.parent / '.hydra' / 'config.yaml'}: run config not found "
        "(expected the checkpoint in <run dir>/checkpoints/ next to <run dir>/.hydra/)"
    )


def build_datamodule(config: Path, run_dir: Path, data_root: str | None, workers: int | None):
    """Instantiate ``cfg.data`` as the training run did (paths from the run's .hydra/hydra.yaml)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf, open_dict

    cfg = OmegaConf.load(config)
    hydra_yaml = config.parent / "hydra.yaml"
    run_cwd = None
    if hydra_yaml.is_file():
        run_cwd = OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.runtime.cwd")
    if "data" not in cfg:
        raise UsageError(f"{config}: no data section (not a stnrepro run config?)")
    with open_dict(cfg):
        if "paths" in cfg:  # ${hydra:...} cannot resolve outside a Hydra job
            cfg.paths.output_dir = str(run_dir)
            if "${hydra:" in str(OmegaConf.to_container(cfg.paths).get("root_dir")):
                cfg.paths.root_dir = os.environ.get("STNREPRO_ROOT", run_cwd or os.getcwd())
        if data_root is not None:
            if "cache_dir" in cfg.data:  # synthetic: root is computed from cache_dir
                cfg.data.cache_dir = data_root
                cfg.data.root = None
            else:
                cfg.data.root = data_root
        if workers is not None:
            cfg.data.num_workers = workers
        cfg.data.persistent_workers = False
    datamodule = instantiate(cfg.data)
    datamodule.validate()
    datamodule.setup("test")
    return datamodule


def load_model(checkpoint: Path, device: torch.device) -> Any:
    """The run's STCNNModule in eval mode on ``device``."""
    from stnrepro.module import STCNNModule

    try:
        model = STCNNModule.load_from_checkpoint(str(checkpoint), map_location="cpu")
    except (RuntimeError, KeyError, EOFError, pickle.UnpicklingError, TypeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{checkpoint}: cannot load as an ST-CNN checkpoint ({reason})") from None
    return model.to(device).eval()


def attention_metrics(model: Any, datamodule: Any, device: torch.device) -> dict[str, float]:
    """Attention metrics of ``model`` over the whole test set."""
    metric = AttentionMetrics(model.net.num_transformers, datamodule_part_names(datamodule))
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            theta = model.net.localise(batch["image"].to(device))
            metric.update(theta.cpu(), batch["bbox"], batch["parts"])
    return {k: float(v) for k, v in metric.compute().items()}


def format_table(metrics: dict[str, float], num_transformers: int) -> str:
    """Rows = metrics (iou, hit_center, hit_head, ...), columns = transformers."""
    names: list[str] = []
    for key in metrics:
        name = key.split("/", 1)[1]
        if name not in names:
            names.append(name)
    width = max(len(n) for n in names)
    header = f"{'':<{width}}" + "".join(f"{f'st{i}':>8}" for i in range(num_transformers))
    lines = [header]
    for name in names:
        cells = []
        for i in range(num_transformers):
            v = metrics.get(f"st{i}/{name}", math.nan)
            cells.append(f"{'-':>8}" if math.isnan(v) else f"{v:8.3f}")
        lines.append(f"{name:<{width}}" + "".join(cells))
    return "\n".join(lines)


def pick_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; anything else must be a usable device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device={name}: not a device name (auto, cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device={name}: CUDA is not available on this machine")
    return device


def run(args: argparse.Namespace) -> int:
    if args.images < 1:
        raise UsageError(f"--images={args.images}: expected a positive integer")
    if args.num_workers is not None and args.num_workers < 0:
        raise UsageError(f"--num-workers={args.num_workers}: expected an integer >= 0")
    checkpoint = Path(args.checkpoint).expanduser()
    if not checkpoint.is_file():
        raise UsageError(f"{checkpoint}: checkpoint not found")
    run_dir, config = find_config(checkpoint)
    device = pick_device(args.device)
    model = load_model(checkpoint, device)
    n = model.net.num_transformers
    if n == 0:
        raise UsageError(f"{checkpoint}: a baseline CNN (num_transformers=0) has no transformers")
    datamodule = build_datamodule(config, run_dir, args.data_root, args.num_workers)
    test_set = datamodule.test_set
    count = min(args.images, len(test_set))
    if count == 0:
        raise UsageError("the test set is empty")
    batch = torch.utils.data.default_collate([test_set[i] for i in range(count)])
    fig = render_batch_figure(model.net, batch)
    out = Path(args.out) if args.out else run_dir / "attention" / "test.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    print(f"wrote {out} ({count} test images, {n} transformers)")
    if not args.no_metrics:
        metrics = attention_metrics(model, datamodule, device)
        print(f"attention metrics over {len(test_set)} test images:")
        print(format_table(metrics, n))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 bad input)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage / help
        return int(exc.code or 0)
    try:
        return run(args)
    except (UsageError, StnreproError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
