"""Crop samplers: the reference and two fast ones, all computing the same function.

Coordinate convention (PyTorch ``F.affine_grid``/``F.grid_sample`` with
``align_corners=False``): an image spans ``[-1, 1]`` in x (left to right) and y (top to
bottom), and -1/+1 are the outer *edges* of the border pixels, not their centres. A theta
``[[a, b, tx], [c, d, ty]]`` maps each output location ``(x_o, y_o) in [-1, 1]^2`` to the
input location ``(a x_o + b y_o + tx, c x_o + d y_o + ty)``; the identity theta therefore
reproduces the input exactly at equal size, and for the attention transform
``[[s, 0, tx], [0, s, ty]]`` the crop is the square centred at ``(tx, ty)`` whose side is
``s`` times the image side. Samples outside the image take the nearest border pixel
(``padding_mode="border"``): zero padding plus mean/std normalisation is known to pull
transformers outwards (see the project README). :func:`crop_corners`, :func:`crop_boxes` and
:func:`outside_fraction` describe a crop in the same frame.

Samplers (``sampler=``, :data:`SAMPLERS`, dispatched by :func:`sample_crops`):

``grid_sample`` (the reference, :func:`sample`)
    ``F.affine_grid`` + ``F.grid_sample`` (bilinear, ``padding_mode="border"``): general (any
    affine theta), but ``F.affine_grid`` breaks ``torch.compile`` with symbolic shapes, and
    ``grid_sample`` reads a full (B, S, S, 2) grid that is redundant for attention crops
    ``[[s_x, 0, t_x], [0, s_y, t_y]]`` (the paper's CUB transform, ``s_x = s_y = s``).

``analytic``
    The grid is built by broadcasting per-axis coordinates (no ``F.affine_grid``) and the N
    transformers of a batch are sampled by ONE ``grid_sample`` call (the N grids are stacked
    along the output height, so the image is never repeated N times). Same sample locations
    as the reference up to float rounding, for ANY affine theta; gradients w.r.t. image and
    every theta entry are the ``grid_sample``/``affine_grid`` ones. Traceable by
    ``torch.compile`` with symbolic shapes.

``roi_align`` (only for *diagonal* thetas, ``theta[..., 0, 1] == theta[..., 1, 0] == 0``)
    ``torchvision.ops.roi_align(aligned=True, sampling_ratio=1)``: each output bin gets ONE
    bilinear sample at its centre. With ``aligned=True`` the sample of bin ``j`` of a box
    ``[x1, x2]`` (pixel-edge coordinates) lies at pixel coordinate
    ``x1 + (j + 0.5) (x2 - x1) / S - 0.5``; the reference samples output column ``j`` at
    normalised ``x = s_x ((2j + 1) / S - 1) + t_x``, i.e. pixel coordinate
    ``(x + 1) W / 2 - 0.5``. Equating the two gives the box
    ``x1 = (t_x - s_x + 1) W / 2``, ``x2 = (t_x + s_x + 1) W / 2`` (and likewise in y with H):
    simply the crop's square in pixel-edge coordinates.

    torchvision's ``roi_align`` backward returns NO gradient for the boxes (its registered
    autograd formula returns ``None`` for ``rois``; checked in ``tests/test_samplers.py``),
    so plain ``roi_align`` would silently leave the localisation network untrained. Here it
    is wrapped in an autograd Function: forward = ``roi_align``; backward w.r.t. the image =
    torchvision's ``_roi_align_backward`` (the exact adjoint of the forward); backward w.r.t.
    theta = ``aten.grid_sampler_2d_backward`` on the analytic grid with only the grid gradient
    requested (the exact gradient of the reference, and no atomics into an image gradient that
    the ST-CNN never needs), then the chain rule through the grid by per-axis sums.

Outside the image. Samples whose pixel coordinate lies in ``[-1, W]`` (``[-1, H]``), i.e. at
most half a pixel beyond the image edge, match ``padding_mode="border"`` in both fast paths
(roi_align clamps ``[-1, 0]`` to pixel 0 and ``[W-1, W]`` to pixel ``W-1``). Beyond that,
``analytic`` still matches (it IS ``grid_sample``), but ``roi_align`` returns 0 where the
reference repeats the border pixel.
With the project's bounded attention parameterisation (``t = (1 - s) tanh(raw)``) every crop
lies inside the image, so this never happens in training; use ``analytic`` for ``affine``
or unbounded parameters.

Precision: sample coordinates are always computed in float32 or wider, even when theta
arrives in bfloat16 (under bf16 autocast the localisation head outputs bf16; a bf16 grid would
misplace samples by up to ~0.8 px at 448 px), and the image is sampled in float32 (as autocast
does for grid_sample); float64 stays float64 (the exactness tests).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

from stnrepro.errors import ConfigError

__all__ = [
    "SAMPLERS",
    "analytic_attention_grid",
    "analytic_crops",
    "check_attention_theta",
    "check_sampler",
    "crop_boxes",
    "crop_corners",
    "crop_rois",
    "outside_fraction",
    "roi_align_crops",
    "sample",
    "sample_crops",
]

#: Sampler names accepted by :func:`sample_crops` (and ``model.sampler`` in the config).
SAMPLERS: tuple[str, ...] = ("grid_sample", "analytic", "roi_align")

_BILINEAR = 0  # aten grid_sampler interpolation_mode
_BORDER = 1  # aten grid_sampler padding_mode


def check_sampler(sampler: str, transform: str = "attention") -> None:
    """Refuse an unknown sampler, ``roi_align`` for a non-attention transform, or a fast
    sampler for a non-affine one (projective and tps warps are sampled by ``grid_sample``).

    The one place of this rule: the config check, :class:`SpatialTransformer` and
    :func:`sample_crops` all call it. The message names the config keys.
    """
    if sampler not in SAMPLERS:
        raise ConfigError(f"model.sampler={sampler!r}: expected one of {', '.join(SAMPLERS)}")
    if sampler == "roi_align" and transform != "attention":
        raise ConfigError(
            f"model.sampler=roi_align: needs model.transform=attention (got {transform!r}); "
            "use model.sampler=analytic or grid_sample for affine"
        )
    if sampler != "grid_sample" and transform not in ("attention", "affine"):
        raise ConfigError(
            f"model.sampler={sampler}: model.transform={transform} is sampled by grid_sample "
            "only (set model.sampler=grid_sample)"
        )


def _work_dtype(t: Tensor) -> torch.dtype:
    """float64 stays float64 (exactness tests); everything else is computed in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def sample(image: Tensor, theta: Tensor, size: int) -> Tensor:
    """The reference: one ``size`` x ``size`` crop per image, (B,C,H,W), (B,2,3) -> (B,C,S,S).

    ``F.affine_grid`` + ``F.grid_sample``, computed in float32 at least (float64 stays float64).
    """
    dtype = torch.promote_types(torch.promote_types(image.dtype, theta.dtype), torch.float32)
    shape = [image.shape[0], image.shape[1], size, size]
    grid = F.affine_grid(theta.to(dtype), shape, align_corners=False)
    return F.grid_sample(
        image.to(dtype), grid, mode="bilinear", padding_mode="border", align_corners=False
    )


def crop_corners(theta: Tensor) -> Tensor:
    """The crop's four corners (TL, TR, BR, BL) in input coordinates: (..., 2, 3) -> (..., 4, 2).

    The exact (possibly rotated or sheared) outline of an affine crop; for the attention
    transform it is the square :func:`crop_boxes` returns.
    """
    corners = theta.new_tensor(
        [[-1.0, -1.0, 1.0], [1.0, -1.0, 1.0], [1.0, 1.0, 1.0], [-1.0, 1.0, 1.0]]
    )
    return torch.einsum("...ij,kj->...ki", theta, corners)


def crop_boxes(theta: Tensor) -> Tensor:
    """Axis-aligned box ``(x0, y0, x1, y1)`` around each crop in input coordinates.

    (..., 2, 3) -> (..., 4). Exact for the attention transform; for a general affine theta
    it is the bounding box of the transformed output square.
    """
    pts = crop_corners(theta)  # (..., 4 corners, 2)
    return torch.cat([pts.amin(dim=-2), pts.amax(dim=-2)], dim=-1)


def outside_fraction(theta: Tensor, points: int = 16) -> Tensor:
    """Fraction of each crop's sample locations outside the image: (..., 2, 3) -> (...).

    The locations are the pixel centres of a ``points`` x ``points`` crop (the analytic grid),
    computed in float32 at least; the result has theta's dtype.
    """
    grid = analytic_attention_grid(theta, points)  # (..., P, P, 2)
    outside = (grid.abs() > 1).any(dim=-1).flatten(-2)
    return outside.to(theta.dtype).mean(dim=-1)


def check_attention_theta(theta: Tensor) -> None:
    """Raise ValueError unless theta (..., 2, 3) is diagonal (attention form, b = c = 0).

    Data-dependent (one host sync): callers that know the form statically (the
    ``SpatialTransformer`` with ``transform="attention"``) pass ``validate=False`` instead.
    """
    if theta.dim() < 2 or theta.shape[-2:] != (2, 3):
        raise ValueError(f"theta: expected shape (..., 2, 3), got {tuple(theta.shape)}")
    if theta.numel() == 0:
        return
    off = torch.stack([theta[..., 0, 1], theta[..., 1, 0]]).detach().abs().amax()
    if float(off) != 0.0:
        raise ValueError(
            "roi_align crops need attention thetas [[s_x, 0, t_x], [0, s_y, t_y]] (b = c = 0), "
            f"got an off-diagonal entry of magnitude {float(off):.3g}; use sampler='analytic' "
            "or 'grid_sample' for general affine transforms"
        )


def _axis(size: int, like: Tensor) -> Tensor:
    """Normalised output pixel centres ``(2k + 1) / size - 1``, k = 0..size-1 (like's dtype)."""
    k = torch.arange(size, device=like.device, dtype=like.dtype)
    return (2 * k + 1) / size - 1


def analytic_attention_grid(theta: Tensor, size: int) -> Tensor:
    """The ``F.affine_grid(theta, ..., align_corners=False)`` grid, without ``affine_grid``.

    (..., 2, 3) -> (..., size, size, 2), last axis (x, y) = ``(a u_j + b v_i + t_x,
    c u_j + d v_i + t_y)`` with ``u``, ``v`` the normalised output pixel centres, built by
    broadcasting per-axis coordinates; float32 (float64 for a float64 theta). Exact for any
    theta (the b, c terms are kept, so the gradient w.r.t. every entry is affine_grid's), and
    traceable by ``torch.compile`` with symbolic shapes.
    """
    th = theta.to(_work_dtype(theta))
    u = _axis(size, th)
    cols = u.view(size, 1, 1).expand(size, size, 1).transpose(0, 1)  # u_j at [i, j]
    rows = u.view(size, 1, 1).expand(size, size, 1)  # v_i at [i, j]
    lin = th[..., None, None, :, :]  # (..., 1, 1, 2, 3)
    return lin[..., 0] * cols + lin[..., 1] * rows + lin[..., 2]


def analytic_crops(image: Tensor, theta: Tensor, size: int) -> list[Tensor]:
    """N crops with one ``grid_sample`` call: (B,C,H,W), (B,N,2,3) -> N x (B,C,S,S).

    The N grids are stacked along the output height (B, N*S, S, 2) so that the image is not
    repeated per transformer; the crops are views of the (B, C, N*S, S) result.
    """
    b, n = theta.shape[:2]
    dtype = _work_dtype(image)
    grid = analytic_attention_grid(theta.to(dtype), size).reshape(b, n * size, size, 2)
    out = F.grid_sample(
        image.to(dtype), grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    return list(out.view(b, image.shape[1], n, size, size).unbind(2))


def crop_rois(theta: Tensor, height: int, width: int) -> Tensor:
    """``roi_align`` boxes (N*B, 5) for theta (B, N, 2, 3), rows ordered transformer-major.

    Row ``n * B + b`` = ``(b, x1, y1, x2, y2)`` in pixel-edge coordinates, with
    ``x1 = (t_x - s_x + 1) W / 2`` and ``x2 = (t_x + s_x + 1) W / 2`` (see module docstring).
    """
    th = theta.to(_work_dtype(theta))
    b, n = th.shape[:2]
    sx, tx = th[..., 0, 0], th[..., 0, 2]  # (B, N)
    sy, ty = th[..., 1, 1], th[..., 1, 2]
    half_w, half_h = width / 2.0, height / 2.0
    x1, x2 = (tx - sx + 1) * half_w, (tx + sx + 1) * half_w
    y1, y2 = (ty - sy + 1) * half_h, (ty + sy + 1) * half_h
    idx = torch.arange(b, device=th.device, dtype=th.dtype).view(b, 1).expand(b, n)
    rois = torch.stack([idx, x1, y1, x2, y2], dim=-1)  # (B, N, 5)
    return rois.transpose(0, 1).reshape(n * b, 5)


def _theta_grad_from_grid_grad(grad_grid: Tensor, size: int) -> Tensor:
    """Chain rule through the analytic grid: (B, N, S, S, 2) -> d loss / d theta (B, N, 2, 3).

    grid_x = s_x u_j + b v_i + t_x and grid_y = c u_j + s_y v_i + t_y (b = c = 0 at the
    point of evaluation), so each row of theta gets (sum g u_j, sum g v_i, sum g): exactly
    what ``affine_grid``'s backward gives for the reference path.
    """
    u = _axis(size, grad_grid)
    g_cols = grad_grid.sum(dim=-3)  # (B, N, S_j, 2): summed over rows i
    g_rows = grad_grid.sum(dim=-2)  # (B, N, S_i, 2): summed over columns j
    d_u = torch.einsum("bnjk,j->bnk", g_cols, u)  # coefficient of u_j, per output axis k
    d_v = torch.einsum("bnik,i->bnk", g_rows, u)  # coefficient of v_i
    d_t = g_cols.sum(dim=-2)
    return torch.stack([d_u, d_v, d_t], dim=-1)  # (B, N, 2 [x|y row], 3)


class _RoIAlignCrops(torch.autograd.Function):
    """roi_align forward; exact image and theta gradients (see module docstring)."""

    @staticmethod
    def forward(ctx, image: Tensor, theta: Tensor, size: int) -> Tensor:
        image = image.to(_work_dtype(image)).contiguous()
        rois = crop_rois(theta.to(image.dtype), image.shape[-2], image.shape[-1])
        ctx.save_for_backward(image, theta, rois)
        ctx.size = size
        return roi_align(image, rois, size, spatial_scale=1.0, sampling_ratio=1, aligned=True)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        image, theta, rois = ctx.saved_tensors
        size: int = ctx.size
        b, c, h, w = image.shape
        n = theta.shape[1]
        grad_out = grad_out.to(image.dtype).contiguous()
        grad_image = grad_theta = None
        if ctx.needs_input_grad[0]:
            grad_image = torch.ops.torchvision._roi_align_backward(
                grad_out, rois, 1.0, size, size, b, c, h, w, 1, True
            )
        if ctx.needs_input_grad[1]:
            grid = analytic_attention_grid(theta.to(image.dtype), size)
            grid = grid.reshape(b, n * size, size, 2)
            # (N*B, C, S, S) transformer-major -> (B, C, N*S, S), matching the stacked grid.
            g = grad_out.view(n, b, c, size, size).permute(1, 2, 0, 3, 4).reshape(b, c, -1, size)
            _, grad_grid = torch.ops.aten.grid_sampler_2d_backward(
                g, image, grid, _BILINEAR, _BORDER, False, [False, True]
            )
            grad_theta = _theta_grad_from_grid_grad(grad_grid.view(b, n, size, size, 2), size)
            grad_theta = grad_theta.to(theta.dtype)
        return grad_image, grad_theta, None


def roi_align_crops(image: Tensor, theta: Tensor, size: int, validate: bool = True) -> list[Tensor]:
    """N crops with one ``roi_align`` call: (B,C,H,W), (B,N,2,3) -> N x (B,C,S,S).

    Float32 output (float64 for a float64 image). Differentiable w.r.t. image AND theta
    (unlike plain ``roi_align``). Matches ``padding_mode="border"`` only for sample centres
    at most half a pixel outside the image (see module docstring); the project's bounded
    attention crops never leave the image.
    """
    if validate:
        check_attention_theta(theta)
    b, n = theta.shape[:2]
    out = _RoIAlignCrops.apply(image, theta, size)
    return list(out.view(n, b, image.shape[1], size, size).unbind(0))


def sample_crops(
    image: Tensor, theta: Tensor, size: int, sampler: str = "grid_sample", validate: bool = True
) -> list[Tensor]:
    """Dispatch on ``sampler`` (one of :data:`SAMPLERS`): (B,C,H,W), (B,N,2,3) -> N crops.

    ``validate`` checks (with a host sync) that roi_align gets attention thetas; callers that
    know the form statically pass False.
    """
    check_sampler(sampler)
    if sampler == "grid_sample":
        return [sample(image, theta[:, i], size) for i in range(theta.shape[1])]
    if sampler == "analytic":
        return analytic_crops(image, theta, size)
    return roi_align_crops(image, theta, size, validate)
