"""The paper's classifiers: the baseline CNN (N = 0) and the ST-CNN with N transformers.

One family for both experiments: the birds (Table 3: Inception trunks, N = 0, 2, 4
attention transformers) and the distorted digits (Table 1: the FCN / CNN baselines and their
ST versions with one affine, projective or thin-plate-spline transformer at the input).

N = 0: ``logits = fc(dropout(avgpool(trunk(image))))`` at the full input size.

N >= 1: a localisation network sees the whole image and a shared head predicts N transforms;
each transformer's ``crop_size`` crop goes to its own part trunk (separate weights, all
initialised from the same weights); the N pooled descriptors are concatenated -> dropout ->
one linear classifier. With image 448 and crop 224 the part networks cost what they cost
at 224 px, as in the paper. The localisation network is ``localisation``:

- ``shared``: a copy of the backbone (the bird ST-CNN: another Inception, initialised from the
  same ImageNet weights), with the 1x1 conv -> fc -> fc head.
- ``digit``: the small net of the paper's MNIST ST-CNN (conv 5x5-20, pool, conv 5x5-20, pool,
  fc-20, fc-params; :data:`~stnrepro.models.backbones.DIGIT_LOC_WIDTHS`), whatever the
  backbone; the ST-FCN uses it too ([open]: the paper's ST-FCN localisation net is not known).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple, cast

import torch
from torch import Tensor, nn

from stnrepro.errors import ConfigError
from stnrepro.models.backbones import (
    backbone_spec,
    build_digit_localisation,
    build_trunks,
    check_widths,
    output_shape,
)
from stnrepro.models.samplers import check_sampler
from stnrepro.models.spatial_transformer import SpatialTransformer, Transform, check_transform
from stnrepro.utils.config_values import check_value

#: ``model.localisation`` values (see the module docstring).
LOCALISATIONS: tuple[str, ...] = ("shared", "digit")


class STCNNOutput(NamedTuple):
    """``logits`` (B, num_classes); ``theta`` (B, N, 2, 3), the warps' affine view
    (:meth:`SpatialTransformer.affine_view`), and ``warp`` the warps themselves (the same
    tensor for attention and affine), both None for the baseline CNN."""

    logits: Tensor
    theta: Tensor | None
    warp: Tensor | None = None


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
    localisation: str = "shared",
    warp_bound: float | None = None,
    tps_grid: int = 4,
    trunk_widths: object = None,
) -> None:
    """Refuse impossible settings before anything is built, one line naming the key."""
    spec = backbone_spec(backbone)
    check_widths(backbone, trunk_widths)
    if localisation not in LOCALISATIONS:
        raise ConfigError(
            f"model.localisation={localisation!r}: expected one of {', '.join(LOCALISATIONS)}"
        )
    check_value("model.num_transformers", num_transformers)
    for key, value in (("model.crop_size", crop_size), ("data.image_size", image_size)):
        check_value(key, value)
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
    check_transform(transform, warp_bound, tps_grid)
    check_value("model.fixed_scale", fixed_scale)
    lo, hi = scale_bounds
    if not 0 < lo < hi <= 1:
        raise ConfigError(f"model.scale_bounds={list(scale_bounds)}: expected 0 < lo < hi <= 1")
    if not lo < init_scale < hi and not (transform == "attention" and fixed_scale is not None):
        raise ConfigError(
            f"model.init_scale={init_scale}: expected inside model.scale_bounds ({lo}, {hi})"
        )
    check_value("model.dropout", dropout)
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
        localisation: str = "shared",
        warp_bound: float | None = None,
        tps_grid: int = 4,
        trunk_widths: list[int] | tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        scale_bounds = (float(scale_bounds[0]), float(scale_bounds[1]))  # may come as a list
        validate_model_args(
            backbone, num_transformers, image_size, crop_size, transform, fixed_scale,
            init_scale, scale_bounds, dropout, sampler, localisation, warp_bound, tps_grid,
            trunk_widths,
        )  # fmt: skip
        self.num_transformers = num_transformers
        spec = backbone_spec(backbone)
        self.in_channels = spec.in_channels
        widths = check_widths(backbone, trunk_widths)
        # Part trunks, plus a copy for a shared localisation: all from the same weights.
        own_loc = localisation == "shared" and num_transformers > 0
        part_size = image_size if num_transformers == 0 else crop_size
        trunks = build_trunks(
            backbone, pretrained, max(1, num_transformers + own_loc), part_size, widths
        )
        self.loc_trunk: nn.Module | None = None
        self.transformer: SpatialTransformer | None = None
        if num_transformers == 0:
            self.parts = nn.ModuleList(trunks[:1])
        else:
            self.loc_trunk = trunks[0] if own_loc else build_digit_localisation()
            self.parts = nn.ModuleList(trunks[1:] if own_loc else trunks)
            loc_shape = output_shape(self.loc_trunk, image_size, spec.in_channels)
            self.transformer = SpatialTransformer(
                loc_shape[0],
                (loc_shape[1], loc_shape[2]),
                num_transformers,
                crop_size,
                transform=cast(Transform, transform),  # checked by validate_model_args
                fixed_scale=fixed_scale,
                init_scale=init_scale,
                scale_bounds=scale_bounds,
                hidden=loc_hidden,
                sampler=sampler,
                warp_bound=warp_bound,
                tps_grid=tps_grid,
                head_conv=own_loc,
            )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        # The digit trunks' flattened size depends on the input size: measured once.
        descriptor = spec.channels or output_shape(self.parts[0], part_size, spec.in_channels)[0]
        self.classifier = nn.Linear(descriptor * len(self.parts), num_classes)

    def localise(self, image: Tensor) -> Tensor:
        """The transformers' warps for an image batch (ST-CNN only; theta (B, N, 2, 3) for
        attention and affine, see :mod:`~stnrepro.models.spatial_transformer`)."""
        if self.transformer is None or self.loc_trunk is None:
            raise RuntimeError("the baseline CNN (num_transformers=0) has no transformers")
        return self.transformer(self.loc_trunk(image))

    def crops(self, image: Tensor, warp: Tensor | None = None) -> list[Tensor]:
        """What each part network sees: N tensors (B, C, crop, crop); [image] for the CNN."""
        if self.transformer is None:
            return [image]
        return self.transformer.crops(image, self.localise(image) if warp is None else warp)

    def forward(self, image: Tensor) -> STCNNOutput:
        warp = None if self.transformer is None else self.localise(image)
        inputs = self.crops(image, warp)
        descriptors = [
            self.pool(net(x)).flatten(1) for net, x in zip(self.parts, inputs, strict=True)
        ]
        logits = self.classifier(self.dropout(torch.cat(descriptors, dim=1)))
        if self.transformer is None or warp is None:
            return STCNNOutput(logits, None, None)
        return STCNNOutput(logits, self.transformer.affine_view(warp), warp)

    def localisation_parameters(self) -> Iterator[nn.Parameter]:
        """The localisation trunk and head: trained with their own (small) learning rate."""
        for module in (self.loc_trunk, self.transformer):
            if module is not None:
                yield from module.parameters()

    def classifier_parameters(self) -> Iterator[nn.Parameter]:
        """The new linear classifier (the only layer never pretrained)."""
        yield from self.classifier.parameters()
