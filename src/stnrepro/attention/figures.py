"""Drawing where the transformers look: each image with its crops outlined, then the crops.

Kept apart from :mod:`stnrepro.attention.metrics` so that training (which computes the
metrics every validation epoch) does not import matplotlib; only the figure callback and
``stn-attention`` draw. Coordinates are those of :mod:`stnrepro.models.samplers`
(``align_corners=False``: the image spans ``[-1, 1]`` edge to edge).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib import patheffects
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Polygon, Rectangle
from torch import Tensor

from stnrepro.models.samplers import crop_corners

__all__ = ["TRANSFORMER_COLOURS", "render_attention_figure"]

#: One colour per transformer (matplotlib's tab10 order), shared by boxes and crop frames.
TRANSFORMER_COLOURS: tuple[str, ...] = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip


def _to_hwc(image: Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W, 3) for imshow; one channel (digits) is shown as grey."""
    image = image.detach().float().clamp(0, 1)
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    return image.permute(1, 2, 0).cpu().numpy()


def outline_polygons(outlines: Tensor) -> Tensor:
    """Polygons (B, N, P, 2) from theta (B, N, 2, 3) (the crop's 4 corners) or polygons."""
    outlines = outlines.detach().float().cpu()
    if outlines.shape[-2:] == (2, 3):
        # Corners, not crop_boxes: an affine crop is drawn with its true (rotated) outline.
        return crop_corners(outlines)
    return outlines


def render_attention_figure(
    images: Tensor,
    outlines: Tensor,
    crops: Sequence[Tensor],
    bbox: Tensor | None = None,
    titles: Sequence[str] | None = None,
    panel_inches: float = 1.8,
) -> Figure:
    """One row per image: the image with each crop outlined in its transformer's colour (the
    ground-truth box dashed white on black, if given), then the N crops framed in the same colours.

    ``images`` (B, C, H, W) and ``crops`` (N tensors (B, C, S, S)) are display images in
    [0, 1] (denormalised, C = 3 or 1); ``outlines`` is theta (B, N, 2, 3) or, for any warp,
    the input-frame polygon (B, N, P, 2) its output's border maps to
    (:meth:`~stnrepro.models.spatial_transformer.SpatialTransformer.outline`). Built with the
    object-oriented API on an Agg canvas, so it is safe in training processes without a
    display and never touches pyplot's global figure list. ``titles`` optionally labels each
    row (e.g. image ids).
    """
    b, n = images.shape[0], outlines.shape[1]
    if len(crops) != n:
        raise ValueError(f"crops: expected {n} tensors (one per transformer), got {len(crops)}")
    corners = outline_polygons(outlines)  # (B, N, P, 2)
    cols = 1 + n
    fig = Figure(figsize=(panel_inches * cols, panel_inches * b + 0.3), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(b, cols, squeeze=False)
    for r in range(b):
        ax = axes[r, 0]
        # extent puts the axes in the normalised frame: pixel edges at -1/+1 (align_corners=False)
        ax.imshow(_to_hwc(images[r]), extent=(-1, 1, 1, -1), interpolation="nearest")
        if bbox is not None and bool(torch.isfinite(bbox[r]).all()):
            x0, y0, x1, y1 = (float(v) for v in bbox[r])
            gt = Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="white", ls="--", lw=1.2)
            gt.set_path_effects([patheffects.withStroke(linewidth=2.6, foreground="black")])
            ax.add_patch(gt)
        for i in range(n):
            colour = TRANSFORMER_COLOURS[i % len(TRANSFORMER_COLOURS)]
            ax.add_patch(Polygon(corners[r, i].numpy(), closed=True, fill=False, ec=colour, lw=2))
        ax.set_xlim(-1, 1)
        ax.set_ylim(1, -1)
        if titles is not None:
            ax.set_ylabel(str(titles[r]), fontsize=7)
        for i in range(n):
            cax = axes[r, 1 + i]
            cax.imshow(_to_hwc(crops[i][r]), interpolation="nearest")
            colour = TRANSFORMER_COLOURS[i % len(TRANSFORMER_COLOURS)]
            for spine in cax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(3)
        for a in axes[r]:
            a.set_xticks([])
            a.set_yticks([])
    axes[0, 0].set_title("input (GT box dashed)" if bbox is not None else "input", fontsize=8)
    for i in range(n):
        axes[0, 1 + i].set_title(f"ST {i} crop", fontsize=8)
    fig.tight_layout(pad=0.3)
    return fig
