"""Lightning callbacks: the attention figure (where each spatial transformer looks)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from matplotlib.figure import Figure
from pytorch_lightning.loggers import WandbLogger
from torch import Tensor
from torch.utils.data import default_collate

from stnrepro.attention.figures import render_attention_figure
from stnrepro.models.st_cnn import STCNN
from stnrepro.utils.imagenet import denormalize

log = logging.getLogger("stnrepro")

__all__ = ["AttentionFigureCallback", "render_batch_figure"]


def display_images(datamodule: object) -> Callable[[Tensor], Tensor]:
    """The inverse of the data module's normalisation (its ``denormalize``; else ImageNet's)."""
    return getattr(datamodule, "denormalize", None) or denormalize


def render_batch_figure(
    net: STCNN,
    batch: dict[str, Tensor],
    undo_normalisation: Callable[[Tensor], Tensor] = denormalize,
) -> Figure:
    """The attention figure for ``batch`` (dict with normalised ``image``, optional ``bbox``).

    ``net`` is an :class:`~stnrepro.models.st_cnn.STCNN`; runs under ``no_grad`` on the
    net's device; the caller sets eval mode. ``undo_normalisation`` maps the batch's images
    back to [0, 1] (:func:`display_images` of its data module).
    """
    device = next(net.parameters()).device
    images = batch["image"].to(device)
    with torch.no_grad():
        warp = net.localise(images)
        assert net.transformer is not None  # localise raises for the baseline CNN
        crops = net.crops(images, warp)
        outlines = net.transformer.outline(warp)
    bbox = batch.get("bbox")
    titles = None
    if "image_id" in batch:
        titles = [f"id {int(i)}" for i in batch["image_id"]]
    return render_attention_figure(
        undo_normalisation(images).clamp(0, 1).cpu(),
        outlines.cpu(),
        [undo_normalisation(c).clamp(0, 1).cpu() for c in crops],
        bbox=None if bbox is None else bbox.cpu(),
        titles=titles,
    )


def _first_loader(loaders: Any) -> Any:
    """The first DataLoader in whatever Lightning holds (a loader, list, dict or None)."""
    if loaders is None:
        return None
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    if isinstance(loaders, (list, tuple)):
        return loaders[0] if loaders else None
    return loaders


class AttentionFigureCallback(pl.Callback):
    """Every ``every_n_epochs`` validation epochs, and once at the end of fit, draw each
    transformer's crop on a fixed set of validation images and show the crops.

    The images are the first ``num_images`` of the validation set (the test set when there
    is no validation set), chosen once, so figures of successive epochs are comparable.
    Each figure is saved as ``<trainer.default_root_dir>/<dirname>/epoch{E:03d}.png``
    (``E`` = 0-based epoch; the project's Trainer config sets ``default_root_dir`` to the run's
    output dir; an absolute ``dirname`` is used as is) and, for every
    :class:`~pytorch_lightning.loggers.WandbLogger` attached, logged as ``val/attention``.
    CSV or no logger: PNG only. A no-op for the baseline CNN (``num_transformers == 0``)
    and on non-zero ranks.

    Training is not perturbed: rendering runs under ``no_grad`` in eval mode, each module's
    train/eval flag is restored afterwards, and the RNG state is forked, so a run with this
    callback draws the same random numbers as one without.
    """

    def __init__(self, num_images: int = 8, every_n_epochs: int = 5, dirname: str = "attention"):
        super().__init__()
        if int(num_images) < 1:
            raise ValueError(f"num_images={num_images}: expected a positive integer")
        if int(every_n_epochs) < 1:
            raise ValueError(f"every_n_epochs={every_n_epochs}: expected a positive integer")
        self.num_images = int(num_images)
        self.every_n_epochs = int(every_n_epochs)
        self.dirname = dirname
        self._batch: dict[str, Tensor] | None = None
        self._rendered: set[int] = set()
        self.saved: list[Path] = []  # paths written by this callback, in order

    # -- hooks -------------------------------------------------------------------------------

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        if (epoch + 1) % self.every_n_epochs == 0:
            self.render(trainer, pl_module, epoch)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # End of fit, while the model is still on its device and loggers are open.
        # current_epoch counts completed epochs here; the figure is named after the last one.
        self.render(trainer, pl_module, max(trainer.current_epoch - 1, 0))

    # -- work --------------------------------------------------------------------------------

    def output_dir(self, trainer: pl.Trainer) -> Path:
        return Path(trainer.default_root_dir) / self.dirname

    def render(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> Path | None:
        """Render, save and log the figure for ``epoch`` once; returns the PNG path or None."""
        net = getattr(pl_module, "net", None)
        if net is None or not getattr(net, "num_transformers", 0) or not trainer.is_global_zero:
            return None
        if epoch in self._rendered:
            return None
        self._rendered.add(epoch)
        with torch.random.fork_rng(devices=_rng_devices()):
            batch = self._fixed_batch(trainer)
            if batch is None:
                return None
            modes = {m: m.training for m in pl_module.modules()}
            pl_module.eval()
            try:
                undo = display_images(getattr(trainer, "datamodule", None))
                fig = render_batch_figure(net, batch, undo)
            finally:
                for module, training in modes.items():
                    module.training = training
        path = self.output_dir(trainer) / f"epoch{epoch:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
        self.saved.append(path)
        self._log_image(trainer, path, epoch)
        return path

    def _log_image(self, trainer: pl.Trainer, png: Path, epoch: int) -> None:
        """Log the saved PNG itself (``wandb.Image`` reads the file), the exact figure kept."""
        for logger in trainer.loggers:
            if not isinstance(logger, WandbLogger):
                continue
            logger.log_image(
                key="val/attention",
                images=[str(png)],
                step=trainer.global_step,
                caption=[f"epoch {epoch}"],
            )

    def _fixed_batch(self, trainer: pl.Trainer) -> dict[str, Tensor] | None:
        """The first ``num_images`` validation (else test) items, read once and kept."""
        if self._batch is not None:
            return self._batch
        dataset = self._dataset(trainer)
        if dataset is None:
            log.warning("AttentionFigureCallback: no validation or test data; no figure drawn")
            return None
        count = min(self.num_images, len(dataset))
        if count == 0:
            return None
        items = [dataset[i] for i in range(count)]
        batch = default_collate(items)
        self._batch = {k: v for k, v in batch.items() if isinstance(v, Tensor)}
        return self._batch

    def _dataset(self, trainer: pl.Trainer) -> Any:
        """The validation dataset if there is one with items, else the test dataset."""
        candidates = [_first_loader(trainer.val_dataloaders)]
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None:
            for name in ("val_dataloader", "test_dataloader"):
                try:
                    candidates.append(_first_loader(getattr(datamodule, name)()))
                except (NotImplementedError, AttributeError, TypeError):
                    continue
        for loader in candidates:
            dataset = getattr(loader, "dataset", None)
            if dataset is not None and hasattr(dataset, "__len__") and len(dataset) > 0:
                return dataset
        return None


def _rng_devices() -> list[int]:
    """CUDA devices whose RNG ``fork_rng`` must save (only the current one, if any)."""
    return [torch.cuda.current_device()] if torch.cuda.is_available() else []
