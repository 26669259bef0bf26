"""N parallel spatial transformers: regress bounded transform parameters and sample crops.

Theta is in the frame of :mod:`stnrepro.models.samplers` (``align_corners=False``: the
image spans ``[-1, 1]`` edge to edge, ``[[s, 0, tx], [0, s, ty]]`` is the square crop centred at
``(tx, ty)`` with side ``s`` times the image side); the crops are sampled there with the
chosen ``sampler`` (``grid_sample``, the reference; ``analytic``; ``roi_align``, attention
only), all computing the same function.

Parameterisations (all bounded, so a crop cannot run away):

- ``attention`` with a fixed scale (the paper's CUB setting, s = 0.5 recalled): 2 numbers
  per transformer, ``t = (1 - s) tanh(raw)``, so the crop always lies inside the image.
- ``attention`` with a learned scale: 3 numbers, ``s = lo + (hi - lo) sigmoid(raw_s)`` and
  ``t = (1 - s) tanh(raw_t)``: again always inside the image.
- ``affine``: 6 numbers, every entry of theta is ``tanh(raw)`` (in [-1, 1]).

Initial positions: the regression layer starts with zero weights and a bias that puts
transformer k at scale ``s0`` and centre ``r (cos a_k, sin a_k)`` with ``r = (1 - s0) / 2``
and ``a_k = -90 deg + k 360/N`` (clockwise from the top): N=1 is centred, N=2 is top and
bottom, N=4 is top, right, bottom, left. Identical starts would make the N branches
identical.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stnrepro.models.samplers import check_sampler, sample_crops

Transform = Literal["attention", "affine"]
TRANSFORMS: tuple[str, ...] = ("attention", "affine")


def attention_theta(scale: Tensor, tx: Tensor, ty: Tensor) -> Tensor:
    """Build ``[[s, 0, tx], [0, s, ty]]`` from (...,) tensors: returns (..., 2, 3)."""
    zero = torch.zeros_like(tx)
    row0 = torch.stack([scale, zero, tx], dim=-1)
    row1 = torch.stack([zero, scale, ty], dim=-1)
    return torch.stack([row0, row1], dim=-2)


def initial_centres(num_transformers: int, radius: float) -> list[tuple[float, float]]:
    """Distinct start positions on a circle, clockwise from the top (see module docstring)."""
    if num_transformers == 1:
        return [(0.0, 0.0)]
    angles = [-math.pi / 2 + 2 * math.pi * k / num_transformers for k in range(num_transformers)]
    # Rounded so that the exact axis positions (top, right, ...) have no 1e-17 residue.
    return [(round(radius * math.cos(a), 12), round(radius * math.sin(a), 12)) for a in angles]


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


class SpatialTransformer(nn.Module):
    """Localisation head and sampler for N transformers sharing one localisation trunk.

    The head follows the paper's appendix as we recall it: the trunk's last feature map ->
    1x1 conv(``hidden``) -> fc(``hidden``) -> fc(params x N).

    Shapes: ``features`` (B, C, h, w) from the localisation trunk, ``image`` (B, 3, H, W);
    :meth:`forward` returns theta (B, N, 2, 3); :meth:`crops` returns N tensors (B, 3, S, S).
    """

    def __init__(
        self,
        in_channels: int,
        feature_hw: tuple[int, int],
        num_transformers: int,
        crop_size: int,
        transform: Transform = "attention",
        fixed_scale: float | None = 0.5,
        init_scale: float = 0.5,
        scale_bounds: tuple[float, float] = (0.25, 1.0),
        hidden: int = 128,
        sampler: str = "grid_sample",
    ) -> None:
        super().__init__()
        check_sampler(sampler, transform)
        self.sampler = sampler
        self.num_transformers = num_transformers
        self.crop_size = crop_size
        self.transform = transform
        self.fixed_scale = fixed_scale
        self.scale_bounds = (float(scale_bounds[0]), float(scale_bounds[1]))
        if transform == "affine":
            self.num_params = 6
        else:
            self.num_params = 2 if fixed_scale is not None else 3
        self.conv = nn.Conv2d(in_channels, hidden, kernel_size=1)
        self.fc1 = nn.Linear(hidden * feature_hw[0] * feature_hw[1], hidden)
        self.fc2 = nn.Linear(hidden, self.num_params * num_transformers)
        s0 = fixed_scale if (transform == "attention" and fixed_scale is not None) else init_scale
        with torch.no_grad():
            self.fc2.weight.zero_()
            self.fc2.bias.copy_(self._initial_raw(s0).flatten())

    def _initial_raw(self, s0: float) -> Tensor:
        """Raw regression outputs that decode to the documented start positions."""
        centres = initial_centres(self.num_transformers, radius=(1 - s0) / 2)
        rows = []
        for cx, cy in centres:
            if self.transform == "affine":
                vals = [s0, 0.0, cx, 0.0, s0, cy]
                rows.append([math.atanh(v) for v in vals])
                continue
            row = [math.atanh(cx / (1 - s0)), math.atanh(cy / (1 - s0))]
            if self.fixed_scale is None:
                lo, hi = self.scale_bounds
                row.append(_logit((s0 - lo) / (hi - lo)))
            rows.append(row)
        return torch.tensor(rows, dtype=torch.float32)

    def regress(self, features: Tensor) -> Tensor:
        """Unbounded parameters: (B, C, h, w) -> (B, N, num_params)."""
        h = F.relu(self.conv(features))
        h = F.relu(self.fc1(h.flatten(1)))
        return self.fc2(h).view(-1, self.num_transformers, self.num_params)

    def decode(self, raw: Tensor) -> Tensor:
        """Bounded theta from raw parameters: (B, N, P) -> (B, N, 2, 3)."""
        if self.transform == "affine":
            return torch.tanh(raw).view(*raw.shape[:-1], 2, 3)
        if self.fixed_scale is not None:
            scale = raw.new_full(raw.shape[:-1], float(self.fixed_scale))
        else:
            lo, hi = self.scale_bounds
            scale = lo + (hi - lo) * torch.sigmoid(raw[..., 2])
        t = (1 - scale).unsqueeze(-1) * torch.tanh(raw[..., :2])
        return attention_theta(scale, t[..., 0], t[..., 1])

    def forward(self, features: Tensor) -> Tensor:
        """Transform parameters theta (B, N, 2, 3) from localisation features."""
        return self.decode(self.regress(features))

    def crops(self, image: Tensor, theta: Tensor) -> list[Tensor]:
        """One (B, 3, S, S) crop per transformer, S = ``crop_size``, with ``self.sampler``."""
        # roi_align implies attention (checked in __init__), so no per-batch theta check.
        return sample_crops(image, theta, self.crop_size, self.sampler, validate=False)
