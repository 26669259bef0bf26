"""N parallel spatial transformers: regress bounded transform parameters and sample crops.

Theta is in the frame of :mod:`stnrepro.models.samplers` (``align_corners=False``: the
image spans ``[-1, 1]`` edge to edge, ``[[s, 0, tx], [0, s, ty]]`` is the square crop centred at
``(tx, ty)`` with side ``s`` times the image side); the crops are sampled there with the
chosen ``sampler`` (``grid_sample``, the reference; ``analytic``; ``roi_align``, attention
only), all computing the same function.

What a transformer predicts (its *warp*; :meth:`SpatialTransformer.forward` returns it):
attention and affine give theta (B, N, 2, 3); ``projective`` gives a homography (B, N, 3, 3)
(h33 = 1); ``tps`` gives the input positions (B, N, K, 2) of a thin-plate spline's K = g x g
control points (:mod:`stnrepro.utils.warps`). Every warp maps OUTPUT locations to the INPUT
locations they sample. :meth:`SpatialTransformer.affine_view` turns any warp into a theta
(B, N, 2, 3), the least-squares affine fit of where it sends a lattice of output points (exact
for attention and affine): the statistics, the divergence check and the attention metrics use it.

Parameterisations (all bounded, so a crop cannot run away):

- ``attention`` with a fixed scale (the paper's CUB setting, s = 0.5 recalled): 2 numbers
  per transformer, ``t = (1 - s) tanh(raw)``, so the crop always lies inside the image.
- ``attention`` with a learned scale: 3 numbers, ``s = lo + (hi - lo) sigmoid(raw_s)`` and
  ``t = (1 - s) tanh(raw_t)``: again always inside the image.
- ``affine`` without ``warp_bound``: 6 numbers, every entry of theta is ``tanh(raw)`` (in
  [-1, 1]), starting at the initial positions below.
- With ``warp_bound`` b (the digit models; the transform starts at the identity, as in the
  paper's MNIST experiments): ``affine`` theta = ``I + b tanh(raw)`` (6 numbers);
  ``projective``: the four output corners' input positions are the corners plus
  ``b tanh(raw)`` (8 numbers) and the homography through them is solved (float64);
  ``tps``: each control point's input position is the point plus ``b tanh(raw)`` (2K numbers).
  A 90 deg rotation moves a corner by 2 (the image side), so b = 2 lets every transform undo
  the R distortion; a projective warp can still fold (three corners in a line), which shows as
  non-finite or huge values and stops training with a divergence error.

Initial positions: the regression layer starts with zero weights and a bias that puts
transformer k at scale ``s0`` and centre ``r (cos a_k, sin a_k)`` with ``r = (1 - s0) / 2``
and ``a_k = -90 deg + k 360/N`` (clockwise from the top): N=1 is centred, N=2 is top and
bottom, N=4 is top, right, bottom, left. Identical starts would make the N branches
identical. With ``warp_bound`` the bias is zero: every transformer starts at the identity.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stnrepro.errors import ConfigError
from stnrepro.models.samplers import check_sampler, crop_corners, sample_crops
from stnrepro.utils.config_values import check_value
from stnrepro.utils.warps import (
    homography_from_points,
    homography_grid,
    pixel_centres,
    tps_control_points,
    tps_grid_matrix,
    tps_matrix,
)

Transform = Literal["attention", "affine", "projective", "tps"]
TRANSFORMS: tuple[str, ...] = ("attention", "affine", "projective", "tps")
#: Transforms that exist only with ``warp_bound`` (they start at the identity).
IDENTITY_TRANSFORMS: tuple[str, ...] = ("projective", "tps")
#: Output corners (x, y) clockwise from the top left, the projective warp's 4 points.
CORNERS: tuple[tuple[float, float], ...] = ((-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0))
#: Points per side of the traced outline of a thin-plate-spline warp in figures.
_OUTLINE_STEPS = 8


def check_transform(transform: str, warp_bound: float | None, tps_grid: int) -> None:
    """model.transform / warp_bound / tps_grid: the one check (config and constructor)."""
    if transform not in TRANSFORMS:
        raise ConfigError(f"model.transform={transform!r}: expected one of {', '.join(TRANSFORMS)}")
    check_value("model.warp_bound", warp_bound)
    if transform in IDENTITY_TRANSFORMS and warp_bound is None:
        raise ConfigError(
            f"model.transform={transform}: needs model.warp_bound (a positive number: how far "
            "each point may move, in units of half the image side; 2.0 for the digit models)"
        )
    if transform == "attention" and warp_bound is not None:
        raise ConfigError(
            "model.warp_bound: applies to affine, projective and tps; attention is bounded by "
            "its scale (set model.warp_bound=null)"
        )
    if transform == "tps":
        check_value("model.tps_grid", tps_grid)


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


def affine_fit(points: Tensor, mapped: Tensor) -> Tensor:
    """Least-squares theta (..., 2, 3) with ``theta [p, 1] ~ mapped`` for points (n, 2).

    ``mapped`` (..., n, 2); exact when the map is affine (n >= 3 points not in a line).
    """
    design = torch.cat([points, torch.ones_like(points[:, :1])], 1).to(mapped.dtype)  # (n, 3)
    return (torch.linalg.pinv(design) @ mapped).transpose(-1, -2)


class SpatialTransformer(nn.Module):
    """Localisation head and sampler for N transformers sharing one localisation trunk.

    The head follows the paper's appendix as we recall it: the trunk's last feature map ->
    1x1 conv(``hidden``) -> fc(``hidden``) -> fc(params x N); without ``head_conv`` (the digit
    localisation net, whose trunk is already small) the 1x1 conv is left out.

    Shapes: ``features`` (B, C, h, w) from the localisation trunk, ``image`` (B, C', H, W);
    :meth:`forward` returns the warps (see the module docstring); :meth:`crops` returns N
    tensors (B, C', S, S).
    """

    # Buffers of the TPS transform, registered in __init__ only when transform == "tps".
    control: Tensor
    grid_matrix: Tensor
    outline_matrix: Tensor

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
        warp_bound: float | None = None,
        tps_grid: int = 4,
        head_conv: bool = True,
    ) -> None:
        super().__init__()
        check_transform(transform, warp_bound, tps_grid)
        check_sampler(sampler, transform)
        self.sampler = sampler
        self.num_transformers = num_transformers
        self.crop_size = crop_size
        self.transform = transform
        self.fixed_scale = fixed_scale
        self.scale_bounds = (float(scale_bounds[0]), float(scale_bounds[1]))
        self.warp_bound = None if warp_bound is None else float(warp_bound)
        self.num_params = {"affine": 6, "projective": 8}.get(transform, 0)
        if transform == "tps":
            control = tps_control_points(tps_grid)
            self.num_params = 2 * control.shape[0]
            # Buffers, not parameters, and not saved: they follow from tps_grid and crop_size.
            # Kept in float64 (cast per use), so that float64 checks are exact.
            self.register_buffer("control", control, persistent=False)
            self.register_buffer(
                "grid_matrix", tps_grid_matrix(tps_grid, crop_size), persistent=False
            )
            self.register_buffer("outline_matrix", self._outline_matrix(control), persistent=False)
        elif transform == "attention":
            self.num_params = 2 if fixed_scale is not None else 3
        if head_conv:
            self.conv: nn.Module = nn.Conv2d(in_channels, hidden, kernel_size=1)
            flat = hidden * feature_hw[0] * feature_hw[1]
        else:
            self.conv = nn.Identity()
            flat = in_channels * feature_hw[0] * feature_hw[1]
        self.fc1 = nn.Linear(flat, hidden)
        self.fc2 = nn.Linear(hidden, self.num_params * num_transformers)
        s0 = fixed_scale if (transform == "attention" and fixed_scale is not None) else init_scale
        with torch.no_grad():
            self.fc2.weight.zero_()
            if self.warp_bound is not None:
                self.fc2.bias.zero_()  # tanh(0) = 0: the identity
            else:
                self.fc2.bias.copy_(self._initial_raw(s0).flatten())

    @staticmethod
    def _outline_matrix(control: Tensor) -> Tensor:
        """Spline matrix for points along the output's border (clockwise from the top left)."""
        t = torch.linspace(-1.0, 1.0, _OUTLINE_STEPS + 1, dtype=torch.float64)[:-1]
        one = torch.ones_like(t)
        border = torch.cat(
            [
                torch.stack([t, -one], 1),
                torch.stack([one, t], 1),
                torch.stack([-t, one], 1),
                torch.stack([-one, -t], 1),
            ]
        )
        return tps_matrix(control, border)

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
        """Bounded warps from raw parameters: (B, N, P) -> the transform's warp shape."""
        if self.warp_bound is not None:
            # float32 at least (bf16 autocast gives a bf16 head): warps are coordinates.
            raw = raw.to(torch.promote_types(raw.dtype, torch.float32))
            step = self.warp_bound * torch.tanh(raw)
            if self.transform == "affine":
                eye = torch.eye(2, 3, dtype=raw.dtype, device=raw.device)
                return eye + step.view(*raw.shape[:-1], 2, 3)
            if self.transform == "projective":
                corners = raw.new_tensor(CORNERS)
                moved = corners + step.view(*raw.shape[:-1], 4, 2)
                return homography_from_points(corners.expand_as(moved), moved)
            return self.control.to(raw.dtype) + step.view(*raw.shape[:-1], -1, 2)
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
        """The warps (see the module docstring) from localisation features."""
        return self.decode(self.regress(features))

    def affine_view(self, warp: Tensor) -> Tensor:
        """Theta (B, N, 2, 3) of any warp: itself for attention/affine, else the LS fit."""
        if self.transform in ("attention", "affine"):
            return warp
        if self.transform == "tps":
            return affine_fit(self.control.to(warp.dtype), warp)  # targets of the control points
        points = pixel_centres(3, warp.dtype, warp.device)  # the 3x3 grid's pixel centres
        b, n = warp.shape[:2]
        mapped = homography_grid(warp.reshape(b * n, 3, 3), 3).reshape(b, n, 9, 2)
        return affine_fit(points.to(warp.dtype), mapped)

    def outline(self, warp: Tensor) -> Tensor:
        """Where the output's border lies in the input: (B, N, P, 2) polygons (for figures)."""
        if self.transform in ("attention", "affine"):
            return crop_corners(warp)
        if self.transform == "tps":
            return torch.einsum("pk,bnkc->bnpc", self.outline_matrix.to(warp.dtype), warp)
        corners = torch.tensor(CORNERS, dtype=warp.dtype, device=warp.device)
        homog = torch.cat([corners, torch.ones_like(corners[:, :1])], 1)
        out = torch.einsum("bnij,pj->bnpi", warp, homog)
        return out[..., :2] / out[..., 2:3]

    def crops(self, image: Tensor, warp: Tensor) -> list[Tensor]:
        """One (B, C, S, S) crop per transformer, S = ``crop_size``, with ``self.sampler``."""
        if self.transform in ("attention", "affine"):
            # roi_align implies attention (checked in __init__), so no per-batch theta check.
            return sample_crops(image, warp, self.crop_size, self.sampler, validate=False)
        b, n, s = image.shape[0], self.num_transformers, self.crop_size
        # Coordinates and samples in float32 at least (float64 stays float64), as the samplers.
        work = torch.float64 if image.dtype == torch.float64 else torch.float32
        flat = warp.reshape(b * n, *warp.shape[2:]).to(work)
        if self.transform == "projective":
            grid = homography_grid(flat, s)
        else:
            grid = torch.einsum("pk,bkc->bpc", self.grid_matrix.to(work), flat)
        grid = grid.view(b, n, s, s, 2)
        source = image.to(work)
        return [
            F.grid_sample(
                source, grid[:, i], mode="bilinear", padding_mode="border", align_corners=False
            ).to(image.dtype)
            for i in range(n)
        ]
