"""The per-channel normalisation ImageNet-pretrained trunks expect, and its inverse for display.

The one definition: the data pipeline normalises with it (:mod:`stnrepro.data.transforms`),
the Inception trunk converts from it to its own [-1, 1] input
(:mod:`stnrepro.models.backbones`), and figures undo it.
"""

from __future__ import annotations

import torch

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """Undo the ImageNet normalisation (for visualisation); works on ``(3,H,W)`` or ``(B,3,H,W)``.

    Not clamped: clamp to [0, 1] yourself before display if the model produced the tensor.
    """
    mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=images.device).view(3, 1, 1)
    return images * std + mean
