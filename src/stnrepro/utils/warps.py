"""Sampling grids of non-affine warps: homographies and thin-plate splines.

One geometry for the data (the paper's projective distortion) and the models (projective and
thin-plate-spline transformers). Frame: that of :mod:`stnrepro.models.samplers`
(``align_corners=False``): an image spans ``[-1, 1]`` edge to edge in x (left to right) and y
(top to bottom); output pixel ``k`` of ``S`` has its centre at ``(2k + 1) / S - 1``. A warp maps
each OUTPUT location to the INPUT location it samples, as ``F.affine_grid``'s theta does, and
the grids returned here go straight into ``F.grid_sample`` (last dim ``(x, y)``).

Thin-plate spline (Bookstein 1989): control points ``P_k`` fixed on a regular ``g x g`` grid of
the output frame; the warp is ``f(p) = a_0 + a_1 x + a_2 y + sum_k w_k U(|p - P_k|)`` with
``U(r) = r^2 log r^2`` and ``f(P_k) = T_k`` exactly (the targets ``T``, in the input frame). The
coefficients are linear in ``T``, so for a fixed output size the whole grid is ``M @ T`` with one
matrix ``M`` (S*S, K) computed once in float64 (:func:`tps_grid_matrix`); targets equal to the
control points give the identity grid.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "homography_from_points",
    "homography_grid",
    "pixel_centres",
    "tps_control_points",
    "tps_grid_matrix",
    "tps_matrix",
]


def pixel_centres(
    size: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> Tensor:
    """Output pixel centres (S*S, 2) as (x, y), row by row (y outer), in the frame above."""
    k = torch.arange(size, dtype=dtype, device=device)
    u = (2 * k + 1) / size - 1
    yy, xx = torch.meshgrid(u, u, indexing="ij")
    return torch.stack([xx, yy], -1).reshape(-1, 2)


def homography_from_points(src: Tensor, dst: Tensor) -> Tensor:
    """The 3x3 H (h33 = 1) with ``H src_k ~ dst_k`` for 4 point pairs: (..., 4, 2) -> (..., 3, 3).

    Solved in float64 at least (the 8x8 system loses digits in float32 for nearly
    degenerate quadrilaterals), returned in the dtype of ``dst``.
    """
    work = torch.float64
    x, y = src[..., 0].to(work), src[..., 1].to(work)
    u, v = dst[..., 0].to(work), dst[..., 1].to(work)
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    rows_u = torch.stack([x, y, one, zero, zero, zero, -u * x, -u * y], -1)
    rows_v = torch.stack([zero, zero, zero, x, y, one, -v * x, -v * y], -1)
    a = torch.cat([rows_u, rows_v], dim=-2)  # (..., 8, 8)
    b = torch.cat([u, v], dim=-1).unsqueeze(-1)  # (..., 8, 1)
    h = torch.linalg.solve(a, b).squeeze(-1)
    h = torch.cat([h, torch.ones_like(h[..., :1])], dim=-1)
    return h.view(*h.shape[:-1], 3, 3).to(dst.dtype)


def homography_grid(h: Tensor, size: int) -> Tensor:
    """Sampling grid (B, S, S, 2) of homographies h (B, 3, 3).

    Output pixel centres ``(x, y)`` map to input ``H [x, y, 1]`` dehomogenised; an affine h
    (last row 0, 0, 1) gives ``F.affine_grid``'s grid. A denominator within 1e-6 of zero (a
    point sent to infinity) is held at +-1e-6, so the grid stays finite.
    """
    pts = pixel_centres(size, h.dtype, h.device)
    pts = torch.cat([pts, torch.ones_like(pts[:, :1])], -1)  # (S*S, 3)
    out = torch.einsum("bij,pj->bpi", h, pts)
    z = out[..., 2:3]
    z = torch.where(z.abs() < 1e-6, torch.where(z < 0, -1e-6, 1e-6), z)
    return (out[..., :2] / z).view(h.shape[0], size, size, 2)


def tps_control_points(grid: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """A ``grid x grid`` regular lattice spanning [-1, 1]^2, (K, 2) as (x, y), y outer."""
    u = torch.linspace(-1.0, 1.0, grid, dtype=dtype)
    yy, xx = torch.meshgrid(u, u, indexing="ij")
    return torch.stack([xx, yy], -1).reshape(-1, 2)


def _radial(p: Tensor, q: Tensor) -> Tensor:
    """``U(|p_i - q_j|) = r^2 log r^2`` (0 at r = 0): (n, 2), (K, 2) -> (n, K)."""
    r2 = ((p[:, None, :] - q[None, :, :]) ** 2).sum(-1)
    return torch.where(r2 > 0, r2 * torch.log(r2.clamp_min(1e-300)), torch.zeros_like(r2))


def tps_matrix(control: Tensor, query: Tensor) -> Tensor:
    """``M`` (n, K) with ``f(query) = M @ T`` for the spline through ``f(control_k) = T_k``.

    Computed in float64: the (K+3)x(K+3) system ``[[U, P1], [P1^T, 0]]`` is solved once for
    the identity right-hand side, then ``[U(query), 1, x, y]`` times its first K columns.
    """
    c, q = control.double(), query.double()
    k = c.shape[0]
    p1 = torch.cat([torch.ones(k, 1, dtype=c.dtype), c], 1)  # (K, 3)
    system = torch.zeros(k + 3, k + 3, dtype=c.dtype)
    system[:k, :k] = _radial(c, c)
    system[:k, k:] = p1
    system[k:, :k] = p1.T
    inverse = torch.linalg.inv(system)[:, :k]  # (K+3, K): coefficients per unit target
    basis = torch.cat([_radial(q, c), torch.ones(q.shape[0], 1, dtype=c.dtype), q], 1)
    return basis @ inverse


def tps_grid_matrix(grid: int, size: int) -> Tensor:
    """``M`` (S*S, K) of a ``grid x grid`` spline over an ``S x S`` output, float64."""
    return tps_matrix(tps_control_points(grid), pixel_centres(size, torch.float64))
