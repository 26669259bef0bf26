"""The paper's bird classifier: the baseline CNN (N = 0) and the ST-CNN with N transformers.

N = 0: ``logits = fc(dropout(avgpool(trunk(image))))`` at the full input size.

N >= 1: one localisation trunk sees the whole image and a shared head predicts N transforms;
each transformer's ``crop_size`` crop goes to its own part trunk (separate weights, all
initialised from the same weights); the N pooled descriptors are concatenated -> dropout ->
one linear classifier. With image 448 and crop 224 the part networks cost what they cost
at 224 px, as in the paper.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor, nn

from stnrepro.errors import ConfigError
from stnrepro.models.backbones import backbone_spec, build_trunks, feature_map_size
from stnrepro.models.samplers import check_sampler
from stnrepro.models.spatial_transformer import TRANSFORMS, SpatialTransformer


class STCNNOutput(NamedTuple):
    """``logits`` (B, num_classes); ``theta`` (B, N, 2, 3), or None for the baseline CNN."""

    logits: Tensor
    theta: Tensor | None


def validate_model_args(
    backbone: str,
    num_transformers: int,
    image_size: int,
    crop_size: int,
    transform: str,
    fixed_scale: float | None,
    init_scale: float,
    scale_bounds: tuple[float, float],
    dropout: float,
    sampler: str = "grid_sample",
) -> None:
    """Refuse impossible settings before anything is built, one line naming the key."""
    spec = backbone_spec(backbone)
    if not isinstance(num_transformers, int) or num_transformers < 0:
        raise ConfigError(
            f"model.num_transformers={num_transformers!r}: expected an integer >= 0 "
            "(0 = baseline CNN)"
        )
    if image_size < spec.min_input_size:
        raise ConfigError(
            f"data.image_size={image_size}: backbone {backbone} needs at least "
            f"{spec.min_input_size} px"
        )
    if num_transformers > 0:
        if crop_size < spec.min_input_size:
            raise ConfigError(
                f"model.crop_size={crop_size}: backbone {backbone} needs at least "
                f"{spec.min_input_size} px"
            )
        if crop_size > image_size:
            raise ConfigError(
                f"model.crop_size={crop_size}: expected at most data.image_size={image_size} "
                "(a crop cannot be larger than the image it is taken from)"
            )
    if transform not in TRANSFORMS:
        raise ConfigError(f"model.transform={transform!r}: expected one of {', '.join(TRANSFORMS)}")
    if fixed_scale is not None and not 0 < fixed_scale <= 1:
        raise ConfigError(
            f"model.fixed_scale={fixed_scale}: expected a float in (0, 1] or null (learned scale)"
        )
    lo, hi = scale_bounds
    if not 0 < lo < hi <= 1:
        raise ConfigError(f"model.scale_bounds={list(scale_bounds)}: expected 0 < lo < hi <= 1")
    if not lo < init_scale < hi and not (transform == "attention" and fixed_scale is not None):
        raise ConfigError(
            f"model.init_scale={init_scale}: expected inside model.scale_bounds ({lo}, {hi})"
        )
    if not 0 <= dropout < 1:
        raise ConfigError(f"model.dropout={dropout}: expected a float in [0, 1)")
    check_sampler(sampler, transform)


class STCNN(nn.Module):
    """Baseline CNN or ST-CNN: (B, 3, image_size, image_size) -> :class:`STCNNOutput`."""

    def __init__(
        self,
        num_classes: int,
        backbone: str = "small",
        pretrained: bool = False,
        num_transformers: int = 0,
        image_size: int = 224,
        crop_size: int = 224,
        transform: str = "attention",
        fixed_scale: float | None = 0.5,
        init_scale: float = 0.5,
        scale_bounds: tuple[float, float] = (0.25, 1.0),
        loc_hidden: int = 128,
        dropout: float = 0.5,
        sampler: str = "grid_sample",
    ) -> None:
        super().__init__()
        scale_bounds = (float(scale_bounds[0]), float(scale_bounds[1]))  # may come as a list
        validate_model_args(
            backbone, num_transformers, image_size, crop_size, transform, fixed_scale,
            init_scale, scale_bounds, dropout, sampler,
        )  # fmt: skip
        self.num_transformers = num_transformers
        channels = backbone_spec(backbone).channels
        # Localisation trunk + N part trunks, all from the same (pretrained) weights.
        trunks = build_trunks(backbone, pretrained, count=max(1, num_transformers + 1))
        self.loc_trunk: nn.Module | None = None
        self.transformer: SpatialTransformer | None = None
        if num_transformers == 0:
            self.parts = nn.ModuleList(trunks[:1])
        else:
            self.loc_trunk = trunks[0]
            self.parts = nn.ModuleList(trunks[1:])
            self.transformer = SpatialTransformer(
                channels,
                feature_map_size(self.loc_trunk, image_size),
                num_transformers,
                crop_size,
                transform=transform,  # type: ignore[arg-type]
                fixed_scale=fixed_scale,
                init_scale=init_scale,
                scale_bounds=scale_bounds,
                hidden=loc_hidden,
                sampler=sampler,
            )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels * len(self.parts), num_classes)

    def localise(self, image: Tensor) -> Tensor:
        """Transform parameters theta (B, N, 2, 3) for an image batch (ST-CNN only)."""
        if self.transformer is None or self.loc_trunk is None:
            raise RuntimeError("the baseline CNN (num_transformers=0) has no transformers")
        return self.transformer(self.loc_trunk(image))

    def crops(self, image: Tensor, theta: Tensor | None = None) -> list[Tensor]:
        """What each part network sees: N tensors (B, 3, crop, crop); [image] for the CNN."""
        if self.transformer is None:
            return [image]
        return self.transformer.crops(image, self.localise(image) if theta is None else theta)

    def forward(self, image: Tensor) -> STCNNOutput:
        theta = None if self.transformer is None else self.localise(image)
        inputs = self.crops(image, theta)
        descriptors = [
            self.pool(net(x)).flatten(1) for net, x in zip(self.parts, inputs, strict=True)
        ]
        logits = self.classifier(self.dropout(torch.cat(descriptors, dim=1)))
        return STCNNOutput(logits, theta)

    def localisation_parameters(self) -> Iterator[nn.Parameter]:
        """The localisation trunk and head: trained with their own (small) learning rate."""
        for module in (self.loc_trunk, self.transformer):
            if module is not None:
                yield from module.parameters()

    def classifier_parameters(self) -> Iterator[nn.Parameter]:
        """The new linear classifier (the only layer never pretrained)."""
        yield from self.classifier.parameters()
