"""``stn-attention``: where a trained ST-CNN's transformers look, and whether they find the bird.

    stn-attention outputs/2026-11-22/10-00-00/checkpoints/last.ckpt
    stn-attention RUN/checkpoints/last.ckpt --images 12 --out crops.png

Rebuilds the data module from the run's saved Hydra config (``<run dir>/.hydra/config.yaml``,
resolved with the run's ``.hydra/hydra.yaml`` as in the original job; the checkpoint is
expected in ``<run dir>/checkpoints/`` or in the run dir itself), draws each transformer's
crop on the first N test images (PNG, default ``<run dir>/attention/test.png``), and runs
Lightning's ``Trainer.test`` over the whole test set to print the attention metrics the
module logs there (IoU with the bird box, box-centre and part hit rates; see
:mod:`stnrepro.attention.metrics`). Boxes and parts are used for this evaluation only. Any problem
with the inputs is one line ``error: ...`` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import math
import pickle
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stnrepro.cli.common import UsageError, command_parser, run_command
from stnrepro.errors import one_line

__all__ = ["build_datamodule", "find_config", "format_table", "main", "run_config"]


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("stn-attention", __doc__)
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


def run_config(config: Path, run_dir: Path) -> Any:
    """The run's job config with every ``${hydra:...}`` value resolved as in the original job.

    Hydra saves ``config.yaml`` unresolved: ``paths.root_dir`` (``${oc.env:STNREPRO_ROOT,.}``)
    may be relative to the folder the job ran in, and ``paths.output_dir`` reads the Hydra
    node. The run's ``hydra.yaml`` holds that node (with the job's folder,
    ``hydra.runtime.cwd``), so it is installed as the current HydraConfig and a relative root
    is taken from the job's folder. Without it (a hand-copied run) the current folder stands
    in for the job's folder. ``paths.output_dir`` is the run dir where it is now (runs get
    moved).
    """
    from hydra.conf import HydraConf
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import setup_globals
    from omegaconf import OmegaConf, open_dict

    cfg = OmegaConf.load(config)
    if "data" not in cfg:
        raise UsageError(f"{config}: no data section (not a stnrepro run config?)")
    hydra_yaml = config.parent / "hydra.yaml"
    hydra_node = OmegaConf.structured(HydraConf)
    hydra_node.runtime.cwd = str(Path.cwd())
    hydra_node.runtime.output_dir = str(run_dir)
    if hydra_yaml.is_file():  # may hold keys newer than this Hydra's schema: merge them all
        OmegaConf.set_struct(hydra_node, False)
        hydra_node = OmegaConf.merge(hydra_node, OmegaConf.load(hydra_yaml).hydra)
    setup_globals()  # registers the ${hydra:...} resolver, as a Hydra job start does
    HydraConfig().set_config(OmegaConf.create({"hydra": hydra_node}))
    with open_dict(cfg):
        if "paths" in cfg:
            cfg.paths.output_dir = str(run_dir)
            root = Path(str(cfg.paths.root_dir))
            if not root.is_absolute():
                cfg.paths.root_dir = str(Path(hydra_node.runtime.cwd) / root)
    return cfg


def build_datamodule(cfg: Any, data_root: str | None, workers: int | None) -> Any:
    """Instantiate ``cfg.data`` as the training run did, with the command-line overrides."""
    from omegaconf import open_dict

    from stnrepro.run.build import build_datamodule as build_checked

    with open_dict(cfg):
        if data_root is not None:
            if "cache_dir" in cfg.data:  # synthetic: root is computed from cache_dir
                cfg.data.cache_dir = data_root
                cfg.data.root = None
            else:
                cfg.data.root = data_root
        if workers is not None:
            cfg.data.num_workers = workers
        cfg.data.persistent_workers = False
    datamodule = build_checked(cfg)
    datamodule.setup("test")
    return datamodule


def load_model(checkpoint: Path) -> Any:
    """The run's STCNNModule (on the CPU, eval mode)."""
    from stnrepro.lightning.module import STCNNModule

    try:
        model = STCNNModule.load_from_checkpoint(str(checkpoint), map_location="cpu")
    except (RuntimeError, KeyError, EOFError, pickle.UnpicklingError, TypeError) as exc:
        raise UsageError(
            f"{checkpoint}: cannot load as an ST-CNN checkpoint ({one_line(exc)})"
        ) from None
    return model.eval()


def pick_device(name: str) -> Any:
    """``auto`` -> the first GPU when available, else the CPU; anything else must be usable."""
    import torch

    if name == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device={name}: not a device name (auto, cpu, cuda, cuda:1)") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device={name}: expected auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device={name}: CUDA is not available on this machine")
    return device


def test_metrics(model: Any, datamodule: Any, device: Any) -> dict[str, float]:
    """``Trainer.test`` on ``device`` over the test set: what the module logs as ``test/...``."""
    import pytorch_lightning as pl

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)  # no device banners on stdout
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=[device.index or 0] if device.type == "cuda" else 1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    (results,) = trainer.test(model, datamodule=datamodule, verbose=False)
    return {k: float(v) for k, v in results.items()}


def format_table(
    metrics: dict[str, float], num_transformers: int, part_names: Sequence[str]
) -> str:
    """Rows = attention metrics (iou, hit_center, hit_head, ...), columns = transformers.

    ``metrics`` are keyed ``test/st{i}/<name>``; the row order is that of
    :class:`~stnrepro.attention.metrics.AttentionMetrics` (groups, then parts).
    """
    from stnrepro.attention.metrics import part_groups

    names = ["iou", "hit_center"] + [f"hit_{key}" for key in part_groups(part_names)]
    width = max(len(n) for n in names)
    header = f"{'':<{width}}" + "".join(f"{f'st{i}':>8}" for i in range(num_transformers))
    lines = [header]
    for name in names:
        values = [metrics.get(f"test/st{i}/{name}", math.nan) for i in range(num_transformers)]
        cells = [f"{'-':>8}" if math.isnan(v) else f"{v:8.3f}" for v in values]
        lines.append(f"{name:<{width}}" + "".join(cells))
    return "\n".join(lines)


def show(args: argparse.Namespace) -> int:
    import torch

    from stnrepro.attention.metrics import datamodule_part_names
    from stnrepro.lightning.callbacks import display_images, render_batch_figure

    if args.images < 1:
        raise UsageError(f"--images={args.images}: expected a positive integer")
    if args.num_workers is not None and args.num_workers < 0:
        raise UsageError(f"--num-workers={args.num_workers}: expected an integer >= 0")
    checkpoint = Path(args.checkpoint).expanduser()
    if not checkpoint.is_file():
        raise UsageError(f"{checkpoint}: checkpoint not found")
    run_dir, config = find_config(checkpoint)
    device = pick_device(args.device)
    model = load_model(checkpoint)
    n = model.net.num_transformers
    if n == 0:
        raise UsageError(f"{checkpoint}: a baseline CNN (num_transformers=0) has no transformers")
    datamodule = build_datamodule(run_config(config, run_dir), args.data_root, args.num_workers)
    test_set = datamodule.test_set
    count = min(args.images, len(test_set))
    if count == 0:
        raise UsageError("the test set is empty")
    batch = torch.utils.data.default_collate([test_set[i] for i in range(count)])
    fig = render_batch_figure(model.net.to(device), batch, display_images(datamodule))
    out = Path(args.out) if args.out else run_dir / "attention" / "test.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    print(f"wrote {out} ({count} test images, {n} transformers)")
    if not args.no_metrics:
        metrics = test_metrics(model, datamodule, device)
        print(f"attention metrics over {len(test_set)} test images:")
        print(format_table(metrics, n, datamodule_part_names(datamodule)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``stn-attention``; returns the exit status (0 ok, 2 bad input)."""
    return run_command(build_parser(), show, argv)


if __name__ == "__main__":
    sys.exit(main())
