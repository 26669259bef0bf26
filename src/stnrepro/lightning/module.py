"""The LightningModule that trains :class:`~stnrepro.models.st_cnn.STCNN` on class labels only.

Logged metrics (the sweep, table and docs rely on these names): ``{stage}/loss``,
``{stage}/acc``, ``{stage}/acc_top5`` for stage in train/val/test, and for the ST-CNN the
per-transformer statistics ``{stage}/st{i}/{tx,ty,s}_{mean,std}`` and
``{stage}/st{i}/outside`` (fraction of the crop outside the image), so that collapse or
drift shows in the dashboard. On val/test, where the dataset has boxes and parts, also
where the transformers look (``stnrepro.attention.metrics``): ``{stage}/st{i}/iou`` with the bird
box, ``hit_center``, ``hit_head``, ``hit_body`` and ``hit_<part>`` rates.

After a test epoch ``test_predictions`` holds the per-image predictions (columns image_id,
label, pred, correct_top5; gathered from all ranks) that ``train`` writes as
``predictions.csv`` (``stnrepro.results.stats``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric, Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from stnrepro.attention.metrics import AttentionMetrics, datamodule_part_names
from stnrepro.errors import ConfigError, StnreproError
from stnrepro.models.samplers import outside_fraction
from stnrepro.models.st_cnn import STCNN
from stnrepro.utils.config_values import check_value

STAGES = ("train", "val", "test")
#: ``model.compile`` values besides null: torch.compile modes (inductor's; other backends
#: take none, so "default" is the only one they accept).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def validate_speed_levers(channels_last: Any, compile: Any, backend: Any) -> None:
    """model.channels_last / compile / compile_backend, checked before anything is built."""
    if not isinstance(channels_last, bool):
        raise ConfigError(f"model.channels_last={channels_last!r}: expected true or false")
    if compile is not None and compile not in COMPILE_MODES:
        raise ConfigError(
            f"model.compile={compile!r}: expected null or one of {', '.join(COMPILE_MODES)}"
        )
    if compile is not None and backend not in torch._dynamo.list_backends(exclude_tags=()):
        raise ConfigError(
            f"model.compile_backend={backend!r}: expected a torch.compile backend, e.g. "
            "inductor or aot_eager"
        )
    if compile not in (None, "default") and backend != "inductor":
        raise ConfigError(
            f"model.compile={compile!r}: modes need model.compile_backend=inductor "
            f"(got {backend!r}); use model.compile=default"
        )


class DivergenceError(StnreproError):
    """The loss or the transformer parameters became non-finite during training."""


class ThetaStats(Metric):
    """Epoch mean and standard deviation of tx, ty, s per transformer (synced across GPUs).

    ``s`` is ``sqrt(|det A|)`` of the linear part, which is the scale for attention thetas.
    Projective and TPS warps are summarised by their affine view (the least-squares affine
    fit, :meth:`~stnrepro.models.spatial_transformer.SpatialTransformer.affine_view`).
    """

    full_state_update = False
    # The states (add_state in __init__).
    total: Tensor
    total_sq: Tensor
    count: Tensor

    def __init__(self, num_transformers: int) -> None:
        super().__init__()
        shape = (num_transformers, 4)  # tx, ty, s, outside-fraction
        self.add_state("total", torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total_sq", torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, theta: Tensor) -> None:
        theta = theta.detach().double()
        scale = torch.linalg.det(theta[..., :2]).abs().sqrt()
        values = torch.stack(
            [theta[..., 0, 2], theta[..., 1, 2], scale, outside_fraction(theta)], dim=-1
        )  # (B, N, 4)
        self.total += values.sum(0)
        self.total_sq += (values**2).sum(0)
        self.count += values.shape[0]

    def compute(self) -> dict[str, Tensor]:
        mean = self.total / self.count
        var = (self.total_sq / self.count - mean**2).clamp_min(0)
        out: dict[str, Tensor] = {}
        for i in range(mean.shape[0]):
            for j, name in enumerate(("tx", "ty", "s")):
                out[f"st{i}/{name}_mean"] = mean[i, j].float()
                out[f"st{i}/{name}_std"] = var[i, j].sqrt().float()
            out[f"st{i}/outside"] = mean[i, 3].float()
        return out


#: When the LR scheduler steps: once per epoch, or once per optimizer step (warm-up and
#: one-cycle schedules).
SCHEDULER_INTERVALS = ("epoch", "step")


class STCNNModule(pl.LightningModule):
    """Cross-entropy training of the CNN / ST-CNN with a separate localisation learning rate.

    ``optimizer`` and ``scheduler`` are Hydra partials (``_partial_: true``) called with the
    parameter groups / the optimizer. Groups: ``parts`` (part trunks) at the base rate,
    ``classifier`` at ``head_lr_mult`` x base, ``localisation`` (trunk + head) at
    ``loc_lr_mult`` x base.
    """

    def __init__(
        self,
        num_classes: int,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: str = "epoch",
        loc_lr_mult: float = 1e-4,
        head_lr_mult: float = 1.0,
        label_smoothing: float = 0.0,
        channels_last: bool = False,
        compile: str | None = None,
        compile_backend: str = "inductor",
        **net_kwargs: Any,
    ) -> None:
        """``net_kwargs`` are :class:`STCNN`'s arguments (backbone, num_transformers, ...).

        ``channels_last``, ``compile`` and ``compile_backend`` change speed, not results;
        they take effect in :meth:`configure_model` and :meth:`on_after_batch_transfer`.
        """
        super().__init__()
        # The partials stay out of the checkpoint: Lightning reloads it with
        # torch.load(weights_only=True), which accepts plain values only.
        self.save_hyperparameters(logger=False, ignore=["optimizer", "scheduler"])
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        if scheduler_interval not in SCHEDULER_INTERVALS:
            raise ConfigError(
                f"model.scheduler_interval={scheduler_interval!r}: expected "
                f"{' or '.join(SCHEDULER_INTERVALS)}"
            )
        check_value("model.loc_lr_mult", loc_lr_mult)
        check_value("model.head_lr_mult", head_lr_mult)
        check_value("model.label_smoothing", label_smoothing)
        validate_speed_levers(channels_last, compile, compile_backend)
        self.net = STCNN(num_classes=num_classes, **net_kwargs)
        num_transformers = self.net.num_transformers
        top_k = [1] + ([5] if num_classes > 5 else [])
        for stage in STAGES:  # attributes train_metrics, val_metrics, test_metrics
            accuracy: dict[str, Metric | MetricCollection] = {
                ("acc" if k == 1 else f"acc_top{k}"): MulticlassAccuracy(
                    num_classes, top_k=k, average="micro"
                )
                for k in top_k
            }
            setattr(self, f"{stage}_metrics", MetricCollection(accuracy, prefix=f"{stage}/"))
            if stage != "train":
                setattr(self, f"{stage}_mean_loss", MeanMetric())
            if num_transformers:
                setattr(self, f"{stage}_theta", ThetaStats(num_transformers))

    def configure_model(self) -> None:
        """Apply the speed levers once, before Lightning moves the model to its device.

        channels_last converts the weights (``.to(device)`` keeps the format). compile uses
        ``nn.Module.compile`` per trunk (localisation and part networks, ``dynamic=False``):
        state-dict keys stay unchanged, so checkpoints load either way; trunks of the same
        input size share a graph, which inductor compiles once; and ``F.affine_grid`` stays
        eager (it fails to compile once a last partial batch makes shapes symbolic).
        """
        if getattr(self, "_levers_applied", False):  # fit, then test: once is enough
            return
        self._levers_applied = True
        if self.hparams.get("channels_last"):
            self.to(memory_format=torch.channels_last)
        mode = self.hparams.get("compile")
        if mode is not None:
            kwargs: dict[str, Any] = {"backend": self.hparams["compile_backend"], "dynamic": False}
            if mode != "default":
                kwargs["mode"] = mode
            trunks = [self.net.loc_trunk] if self.net.loc_trunk is not None else []
            for trunk in [*trunks, *self.net.parts]:
                trunk.compile(**kwargs)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """With ``channels_last``, the input images in that format too (on the device)."""
        if self.hparams.get("channels_last"):
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        return batch

    def forward(self, image: Tensor) -> Tensor:
        return self.net(image).logits

    def _step(self, batch: dict[str, Tensor], stage: str) -> tuple[Tensor, Tensor | None]:
        out = self.net(batch["image"])
        loss = F.cross_entropy(
            out.logits, batch["label"], label_smoothing=self.hparams["label_smoothing"]
        )
        batch_size = batch["label"].shape[0]
        on_step = stage == "train"
        if on_step:
            self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True,
                     batch_size=batch_size)  # fmt: skip
        else:  # an image-weighted mean over all ranks, even when their shares differ
            mean_loss: MeanMetric = getattr(self, f"{stage}_mean_loss")
            mean_loss.update(loss.detach(), weight=batch_size)
            self.log(f"{stage}/loss", mean_loss, on_epoch=True, prog_bar=True)
        metrics: MetricCollection = getattr(self, f"{stage}_metrics")
        metrics.update(out.logits.detach(), batch["label"])
        if stage == "test":
            self._collect_predictions(batch, out.logits.detach())
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=True, batch_size=batch_size)
        if out.theta is not None:
            if stage != "train":
                # Boxes and parts are used for evaluation only, never for the loss.
                # (Datasets without them, the digits, have no attention metrics.)
                attention: AttentionMetrics | None = getattr(self, f"{stage}_attention", None)
                if attention is not None and "bbox" in batch:
                    attention.update(out.theta.detach(), batch["bbox"], batch["parts"])
            getattr(self, f"{stage}_theta").update(out.theta)
        return loss, out.theta

    def setup(self, stage: str) -> None:
        """Attention metrics need the dataset's part names, known once data is attached."""
        n = self.net.num_transformers
        if not n or hasattr(self, "test_attention"):
            return
        names = datamodule_part_names(getattr(self.trainer, "datamodule", None))
        for s in ("val", "test"):
            setattr(self, f"{s}_attention", AttentionMetrics(n, names).to(self.device))

    def _log_epoch_metrics(self, stage: str) -> None:
        """Log and reset the epoch-level transformer statistics and attention metrics."""
        stats: ThetaStats | None = getattr(self, f"{stage}_theta", None)
        if stats is not None:
            if stats.update_called:
                self.log_dict({f"{stage}/{k}": v for k, v in stats.compute().items()})
            stats.reset()
        attention: AttentionMetrics | None = getattr(self, f"{stage}_attention", None)
        if attention is not None:
            if attention.update_called:
                self.log_dict({f"{stage}/{k}": v for k, v in attention.compute().items()})
            attention.reset()

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss, theta = self._step(batch, "train")
        # One host sync per step: a diverged run stops before a NaN update is checkpointed.
        finite = torch.isfinite(loss)
        if theta is not None:
            finite = finite & torch.isfinite(theta).all()
        if not finite:
            raise DivergenceError(self._divergence(loss, theta))
        return loss

    def _divergence(self, loss: Tensor, theta: Tensor | None) -> str:
        """Why training stopped, blaming the learning rate of the parameters that broke.

        The parameters after the last update tell: non-finite localisation weights alone point
        at ``model.loc_lr_mult``, anything else at the base rate. Whether a good checkpoint is
        left to resume from depends on whether one was saved before this step.
        """
        where = f"at epoch {self.current_epoch}, step {self.global_step}"
        loc = {id(p) for p in self.net.localisation_parameters()}
        broken = [n for n, p in self.named_parameters() if not torch.isfinite(p).all()]
        only_loc = bool(broken) and all(
            id(p) in loc for n, p in self.named_parameters() if n in broken
        )
        if theta is not None and only_loc:
            what, fix = "the localisation network diverged", "a lower model.loc_lr_mult"
        elif theta is not None and not torch.isfinite(theta).all() and torch.isfinite(loss):
            what, fix = "the transformer parameters are non-finite", "a lower model.loc_lr_mult"
        else:
            what = f"training diverged (train/loss={loss.item()})"
            fix = "a lower model.optimizer.lr or trainer.gradient_clip_val"
        saved = any(
            getattr(cb, "last_model_path", "") or getattr(cb, "best_model_path", "")
            for cb in self.trainer.checkpoint_callbacks
        )
        kept = (
            "the last good checkpoint is kept"
            if saved
            else "no checkpoint was saved before it, so the run starts over"
        )
        return f"{what} {where}: {kept}; try {fix}"

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def on_test_epoch_start(self) -> None:
        """Start a test epoch with no predictions (``test_predictions`` is set at its end)."""
        self._test_outputs: list[Tensor] = []
        self.test_predictions: dict[str, np.ndarray] | None = None

    def _collect_predictions(self, batch: dict[str, Tensor], logits: Tensor) -> None:
        """Keep (image_id, label, top-1, label-in-top-5) per test image, as int64 rows.

        Batches without ``image_id`` (a dataset that has none) keep nothing.
        """
        if "image_id" not in batch:
            return
        if not hasattr(self, "_test_outputs"):  # test_step called outside a test epoch
            self._test_outputs = []
        label = batch["label"]
        k = min(5, logits.shape[1])
        top5 = (logits.topk(k, dim=1).indices == label[:, None]).any(dim=1)
        self._test_outputs.append(
            torch.stack([batch["image_id"], label, logits.argmax(dim=1), top5.long()], dim=1)
        )

    def _gather_predictions(self) -> None:
        """All ranks' rows -> ``test_predictions`` (numpy columns, one row per image id).

        Under DDP each rank holds its own share of the images (none repeated, see
        ``CUBDataModule._eval_sampler``); ``all_gather`` needs equal shapes, so the shares are
        padded with id -1 rows, dropped again after the gather. Rows are also kept once per
        image id, whatever sampler produced them.
        """
        outputs = getattr(self, "_test_outputs", None)
        if not outputs:
            return
        rows = torch.cat(outputs)
        if self.trainer.world_size > 1:
            counts = self.all_gather(torch.tensor(rows.shape[0], device=rows.device))
            assert isinstance(counts, Tensor)  # a tensor gathers to a tensor
            pad = rows.new_full((int(counts.max()) - rows.shape[0], rows.shape[1]), -1)
            gathered = self.all_gather(torch.cat([rows, pad]))
            assert isinstance(gathered, Tensor)
            rows = gathered.reshape(-1, rows.shape[1])
            rows = rows[rows[:, 0] >= 0]
        table = rows.cpu().numpy()
        _, first = np.unique(table[:, 0], return_index=True)
        table = table[np.sort(first)]
        self.test_predictions = {
            "image_id": table[:, 0],
            "label": table[:, 1],
            "pred": table[:, 2],
            "correct_top5": table[:, 3],
        }
        self._test_outputs = []

    def on_train_epoch_end(self) -> None:
        self._log_epoch_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")
        self._gather_predictions()

    def param_groups(self) -> list[dict[str, Any]]:
        """Parameter groups with learning rates relative to the optimizer's base ``lr``."""
        base_lr = self._base_lr()
        loc = list(self.net.localisation_parameters())
        head = list(self.net.classifier_parameters())
        taken = {id(p) for p in loc + head}
        parts = [p for p in self.net.parameters() if id(p) not in taken]
        groups = [
            {"name": "parts", "params": parts, "lr": base_lr},
            {"name": "classifier", "params": head, "lr": base_lr * self.hparams["head_lr_mult"]},
        ]
        if loc:
            groups.append(
                {"name": "localisation", "params": loc, "lr": base_lr * self.hparams["loc_lr_mult"]}
            )
        return groups

    def _base_lr(self) -> float:
        base_lr = getattr(self.optimizer_factory, "keywords", {}).get("lr")
        if base_lr is None:
            raise ConfigError("model.optimizer.lr: expected a base learning rate (missing)")
        return base_lr

    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise ConfigError("model.optimizer: missing (expected a partial, e.g. torch.optim.SGD)")
        optimizer = self.optimizer_factory(params=self.param_groups())
        if self.scheduler_factory is None:
            return optimizer
        interval = self.hparams.get("scheduler_interval", "epoch")
        kwargs = self._schedule_kwargs(interval, optimizer)
        scheduler = self.scheduler_factory(optimizer=optimizer, **kwargs)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": interval},
        }

    def _schedule_kwargs(self, interval: str, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """What a schedule that sets the LR itself (``OneCycleLR``) needs from the fit.

        ``total_steps``, when the schedule takes it and was not given one: the trainer's own
        count of optimizer steps in the whole fit (epochs x batches), which the config cannot
        know before the data is read. ``max_lr``, when given as one number: that number for
        the base groups, scaled for each group as its ``lr`` is (``loc_lr_mult``,
        ``head_lr_mult``), so the multipliers hold under the schedule too.
        """
        factory = self.scheduler_factory
        if not isinstance(factory, functools.partial):
            return {}
        accepted = inspect.signature(factory.func).parameters
        kwargs: dict[str, Any] = {}
        if (
            interval == "step"
            and "total_steps" in accepted
            and "total_steps" not in factory.keywords
        ):
            kwargs["total_steps"] = int(self.trainer.estimated_stepping_batches)
        max_lr = factory.keywords.get("max_lr")
        if isinstance(max_lr, int | float):
            base_lr = self._base_lr()
            kwargs["max_lr"] = [max_lr * g["lr"] / base_lr for g in optimizer.param_groups]
        return kwargs
