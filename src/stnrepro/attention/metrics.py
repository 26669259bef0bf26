"""Where do the transformers look, and do they find the bird?

The paper's qualitative claim for the 2xST-CNN (one transformer on the head, one on the body,
learned from class labels alone) is made measurable here. CUB's bird boxes and part points
are used for *evaluation only*: nothing in this module feeds back into training.

Coordinates: everything is in the normalised frame of the network input (``align_corners
=False``: the image spans ``[-1, 1]`` and -1/+1 are the outer pixel edges), the frame in which
the data module returns ``bbox`` and ``parts`` and in which
:func:`~stnrepro.models.samplers.crop_boxes` turns theta into a box. Crop boxes are
clipped to the image before they are compared with anything: what lies outside is border
padding, not bird (a no-op for the bounded attention transform, whose crop never leaves
the image).

Metrics per transformer ``i`` (:class:`AttentionMetrics`):

- ``st{i}/iou``: mean IoU of the crop box with the ground-truth bird box;
- ``st{i}/hit_center``: fraction of images whose bird-box centre lies inside the crop;
- ``st{i}/hit_<part>``: for each annotated part, the fraction of its *visible* instances
  whose point lies inside the crop (closed box: a point on the edge counts);
- ``st{i}/hit_head`` / ``st{i}/hit_body``: the same pooled over the parts of a group (every
  visible (image, part) pair of the group counts once), see :func:`part_groups`.

Images without a box (NaN) are skipped for ``iou``/``hit_center``; invisible parts are
skipped for the part rates. A rate with nothing to count is NaN (the run record stores None).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from stnrepro.models.samplers import crop_boxes

__all__ = [
    "BODY_PARTS",
    "GROUPS",
    "HEAD_PARTS",
    "AttentionMetrics",
    "box_iou",
    "datamodule_part_names",
    "normalise_part_name",
    "part_groups",
    "points_in_boxes",
]

#: Base part names (side prefix removed) in the head group: CUB's crown, forehead, nape, eyes,
#: beak, and the synthetic dataset's ``head``. ``throat`` and the legs are in neither group:
#: the issue's grouping leaves them out (the throat sits between head and breast, the legs
#: below the body), but each still gets its own ``hit_<part>`` rate.
HEAD_PARTS: frozenset[str] = frozenset(
    {"crown", "forehead", "nape", "eye", "eyes", "beak", "bill", "head"}
)
#: Base part names in the body group: CUB's back, breast, belly, wings, tail, synthetic ``body``.
BODY_PARTS: frozenset[str] = frozenset({"back", "breast", "belly", "wing", "wings", "tail", "body"})
GROUPS: dict[str, frozenset[str]] = {"head": HEAD_PARTS, "body": BODY_PARTS}
_SIDES = ("left_", "right_", "near_", "far_")
_RESERVED = frozenset(GROUPS) | {"center"}


# --------------------------------------------------------------------------- part names


def normalise_part_name(name: str) -> str:
    """``"left eye"`` -> ``"left_eye"``: lower case, runs of non-alphanumerics become ``_``."""
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")


def _base_name(key: str) -> str:
    for side in _SIDES:
        if key.startswith(side):
            return key[len(side) :]
    return key


def part_groups(part_names: Sequence[str]) -> dict[str, list[int]]:
    """Part indices per metric key: ``head``, ``body``, then one entry per part.

    Group entries are always present (possibly empty). Individual keys are the normalised
    names (``"left eye"`` -> ``left_eye``); a part whose name clashes with a group or with
    ``center`` (the synthetic dataset has parts called ``head`` and ``body``) gets the suffix
    ``_part`` (``head_part``), and later duplicates a numeric suffix, so no key is ambiguous.
    """
    groups: dict[str, list[int]] = {name: [] for name in GROUPS}
    individual: dict[str, list[int]] = {}
    for j, raw in enumerate(part_names):
        key = normalise_part_name(raw) or f"part{j}"
        base = _base_name(key)
        for group, members in GROUPS.items():
            if base in members:
                groups[group].append(j)
        if key in _RESERVED:
            key = f"{key}_part"
        unique, k = key, 2
        while unique in individual or unique in groups:
            unique, k = f"{key}_{k}", k + 1
        individual[unique] = [j]
    return {**groups, **individual}


def datamodule_part_names(datamodule: object) -> list[str]:
    """The part names of a CUB-layout data module (``[]`` when it has none or is absent)."""
    index = getattr(datamodule, "index", None) if datamodule is not None else None
    return list(getattr(index, "part_names", None) or [])


# --------------------------------------------------------------------------- geometry


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Elementwise IoU of ``(..., 4)`` boxes ``x0, y0, x1, y1`` (broadcast); 0 for empty unions."""
    lo = torch.maximum(a[..., :2], b[..., :2])
    hi = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (hi - lo).clamp_min(0).prod(dim=-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp_min(0).prod(dim=-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp_min(0).prod(dim=-1)
    union = area_a + area_b - inter
    return torch.where(union > 0, inter / union.clamp_min(torch.finfo(union.dtype).tiny), 0.0)


def points_in_boxes(points: Tensor, boxes: Tensor) -> Tensor:
    """Whether ``(..., 2)`` points lie in ``(..., 4)`` boxes (closed, broadcast): bool (...)."""
    x, y = points[..., 0], points[..., 1]
    return (x >= boxes[..., 0]) & (x <= boxes[..., 2]) & (y >= boxes[..., 1]) & (y <= boxes[..., 3])


# --------------------------------------------------------------------------- metric


class AttentionMetrics(Metric):
    """Per-transformer localisation quality against boxes and parts (DDP-safe sums/counts).

    ``update(theta (B, N, 2, 3), bbox (B, 4), parts (B, P, 3))`` with ``P == len(part_names)``
    (P = 0 is allowed: no part rates); ``compute()`` returns the dict described in the module
    docstring. All states are float64 sums reduced with ``sum`` across processes.
    """

    full_state_update = False
    higher_is_better = True
    # The states (add_state in __init__).
    iou_sum: Tensor
    center_hits: Tensor
    box_count: Tensor
    part_hits: Tensor
    part_count: Tensor

    def __init__(self, num_transformers: int, part_names: Sequence[str] = ()) -> None:
        super().__init__()
        if num_transformers < 1:
            raise ValueError(f"num_transformers={num_transformers}: expected >= 1")
        self.num_transformers = int(num_transformers)
        self.part_names = [str(n) for n in part_names]
        self.groups = part_groups(self.part_names)
        n, p = self.num_transformers, len(self.part_names)
        f64 = torch.float64
        self.add_state("iou_sum", torch.zeros(n, dtype=f64), dist_reduce_fx="sum")
        self.add_state("center_hits", torch.zeros(n, dtype=f64), dist_reduce_fx="sum")
        self.add_state("box_count", torch.zeros((), dtype=f64), dist_reduce_fx="sum")
        self.add_state("part_hits", torch.zeros(n, p, dtype=f64), dist_reduce_fx="sum")
        self.add_state("part_count", torch.zeros(p, dtype=f64), dist_reduce_fx="sum")

    def update(self, theta: Tensor, bbox: Tensor, parts: Tensor) -> None:
        """Accumulate one batch (all inputs in the normalised image frame)."""
        if theta.ndim != 4 or theta.shape[1:] != (self.num_transformers, 2, 3):
            raise ValueError(
                f"theta: expected (B, {self.num_transformers}, 2, 3), got {tuple(theta.shape)}"
            )
        if parts.ndim != 3 or parts.shape[1:] != (len(self.part_names), 3):
            raise ValueError(
                f"parts: expected (B, {len(self.part_names)}, 3) for part names "
                f"{self.part_names}, got {tuple(parts.shape)}"
            )
        crops = crop_boxes(theta.detach().double()).clamp(-1.0, 1.0)  # (B, N, 4)
        bbox = bbox.detach().double().to(crops.device)
        parts = parts.detach().double().to(crops.device)

        valid = torch.isfinite(bbox).all(dim=-1)  # (B,)
        if valid.any():
            gt = bbox[valid].unsqueeze(1)  # (b, 1, 4)
            c = crops[valid]
            self.iou_sum += box_iou(c, gt).sum(0)
            centre = (gt[..., :2] + gt[..., 2:]) / 2  # (b, 1, 2)
            self.center_hits += points_in_boxes(centre, c).double().sum(0)
            self.box_count += valid.sum()

        if parts.shape[1]:
            visible = (parts[..., 2] > 0) & torch.isfinite(parts[..., :2]).all(dim=-1)  # (B, P)
            inside = points_in_boxes(parts[:, None, :, :2], crops[:, :, None, :])  # (B, N, P)
            self.part_hits += (inside & visible[:, None, :]).double().sum(0)
            self.part_count += visible.double().sum(0)

    def compute(self) -> dict[str, Tensor]:
        """Rates per transformer; keys ``st{i}/iou``, ``st{i}/hit_center``, ``st{i}/hit_*``."""
        nan = torch.tensor(math.nan, dtype=torch.float64, device=self.iou_sum.device)
        out: dict[str, Tensor] = {}
        for i in range(self.num_transformers):
            has_box = self.box_count > 0
            out[f"st{i}/iou"] = torch.where(has_box, self.iou_sum[i] / self.box_count, nan)
            out[f"st{i}/hit_center"] = torch.where(
                has_box, self.center_hits[i] / self.box_count, nan
            )
            for key, idx in self.groups.items():
                if not idx:
                    continue  # a group with no annotated part is not a metric
                count = self.part_count[idx].sum()
                hits = self.part_hits[i, idx].sum()
                out[f"st{i}/hit_{key}"] = torch.where(count > 0, hits / count, nan)
        return {k: v.float() for k, v in out.items()}
