"""Anchor settings fitted to training boxes: score candidate (sizes, scales, ratios) by how many boxes the IoU
matcher can match well, on the anchor grid the model really uses at the input size.

A box counts as covered when its best anchor (anywhere on the P3-P7 grid) has IoU >= the matcher's
foreground threshold; the low-quality rule still gives every other box its best anchor, but as a weak
positive. The winner covers the most boxes; ties go to fewer anchors per location (a cheaper head), then to
the higher mean best IoU.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from detector.models.anchors import AnchorGrid, cell_anchors
from detector.models.matcher import batched_box_iou

__all__ = [
    "BASES",
    "RATIO_SETS",
    "SCALE_SETS",
    "AnchorCandidate",
    "best_anchor_ious",
    "candidate_grid",
    "fit_anchors",
    "pyramid_grid_sizes",
    "score_candidate",
]

BASES = (8.0, 12.0, 16.0, 24.0, 32.0)  # P3 size; each level doubles it (the one-size-per-level structure)
SCALE_SETS = ((1.0, 2 ** (1 / 3), 2 ** (2 / 3)), (1.0, 2**0.5), (1.0,))
RATIO_SETS = ((0.5, 1.0, 2.0), (1.0,), (0.75, 1.0, 1.33), (0.8, 1.0, 1.25))
LEVELS = 5  # P3..P7


@dataclass(frozen=True)
class AnchorCandidate:
    """One anchor setting: `sizes` (one per P3..P7), `scales` and `ratios`, as in `model.anchors`."""

    sizes: tuple[float, ...]
    scales: tuple[float, ...]
    ratios: tuple[float, ...]

    @property
    def anchors_per_location(self) -> int:
        return len(self.scales) * len(self.ratios)

    def override(self) -> str:
        """The command-line overrides that select this setting."""

        def values(xs: Sequence[float]) -> str:
            return "[" + ",".join(f"{x:.6g}" for x in xs) + "]"

        return (
            f"model.anchors.sizes={values(self.sizes)} model.anchors.scales={values(self.scales)} "
            f"model.anchors.ratios={values(self.ratios)}"
        )


def candidate_grid(
    bases: Sequence[float] = BASES,
    scale_sets: Sequence[Sequence[float]] = SCALE_SETS,
    ratio_sets: Sequence[Sequence[float]] = RATIO_SETS,
) -> list[AnchorCandidate]:
    """Every (base, scale set, ratio set); level l gets size base * 2^l."""
    if not bases or not scale_sets or not ratio_sets:
        raise ValueError("the anchor grid needs at least one base size, scale set and ratio set")
    if any(b <= 0 for b in bases):
        raise ValueError(f"anchor base sizes must be positive, got {list(bases)}")
    return [
        AnchorCandidate(tuple(float(b) * 2**level for level in range(LEVELS)), tuple(s), tuple(r))
        for b, s, r in itertools.product(bases, scale_sets, ratio_sets)
    ]


def pyramid_grid_sizes(size: int) -> list[tuple[int, int]]:
    """Feature-map sizes of P3..P7 for a square letterboxed input `size` (strides 8, 16, 32, then the two
    stride-2 3x3 convolutions of P6 and P7, which round up)."""
    if size <= 0 or size % 32:
        raise ValueError(f"input size must be a positive multiple of 32, got {size}")
    sides = [size // 8, size // 16, size // 32]
    sides += [math.ceil(sides[-1] / 2)]
    sides += [math.ceil(sides[-1] / 2)]
    return [(s, s) for s in sides]


def best_anchor_ious(boxes: torch.Tensor, candidate: AnchorCandidate, size: int) -> torch.Tensor:
    """Best IoU [N] of each box [N, 4] against every anchor of `candidate`'s grid at input `size`.

    Exact without the [N, A] IoU matrix: for two fixed box shapes the intersection shrinks as the centres move
    apart along either axis, so on a product grid the best anchor of each shape sits at the grid column and
    row nearest to the box centre (per level and cell shape, the grid of `AnchorGrid.grid`).
    """
    grid = AnchorGrid(list(candidate.sizes), list(candidate.scales), list(candidate.ratios))
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2  # [N, 2] (x, y)
    best = boxes.new_zeros(boxes.shape[0])
    for level_sizes, (gh, gw) in zip(grid.level_sizes, pyramid_grid_sizes(size), strict=True):
        cells = cell_anchors(level_sizes, grid.ratios)  # [K, 4] zero-centred, rounded as the model's
        stride = torch.tensor([size // gw, size // gh], dtype=boxes.dtype)
        limit = torch.tensor([gw - 1, gh - 1], dtype=boxes.dtype)
        cell_centre = (cells[:, :2] + cells[:, 2:]) / 2  # [K, 2]
        index = ((centre[:, None] - cell_centre[None]) / stride).round().clamp(min=0)
        shift = torch.minimum(index, limit) * stride  # [N, K, 2] nearest grid point per cell shape
        anchors = shift.repeat(1, 1, 2) + cells[None]  # [N, K, 4]
        iou = batched_box_iou(boxes[:, None], anchors)[:, 0]  # [N, K]
        best = torch.maximum(best, iou.amax(dim=1))
    return best


def score_candidate(
    boxes: np.ndarray | torch.Tensor, size: int, candidate: AnchorCandidate, fg_iou: float = 0.5
) -> dict:
    """Coverage of `boxes` [N, 4] (letterboxed pixels of a `size` x `size` input) by `candidate`'s grid:
    the share with best IoU >= `fg_iou`, the mean best IoU, and the anchor counts."""
    boxes_t = torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(-1, 4)
    if boxes_t.shape[0] == 0:
        raise ValueError("no boxes to fit anchors to")
    grid = AnchorGrid(list(candidate.sizes), list(candidate.scales), list(candidate.ratios))
    num_anchors = sum(gh * gw for gh, gw in pyramid_grid_sizes(size)) * grid.num_anchors_per_location
    best = best_anchor_ious(boxes_t, candidate, size)
    covered = int((best >= fg_iou).sum())
    return {
        "sizes": list(candidate.sizes),
        "scales": list(candidate.scales),
        "ratios": list(candidate.ratios),
        "anchors_per_location": candidate.anchors_per_location,
        "anchors": int(num_anchors),
        "boxes": int(best.shape[0]),
        "covered_boxes": covered,
        "covered": covered / int(best.shape[0]),
        "mean_best_iou": float(best.mean()),
        "override": candidate.override(),
    }


def fit_anchors(
    boxes: np.ndarray | torch.Tensor,
    size: int,
    candidates: Sequence[AnchorCandidate],
    fg_iou: float = 0.5,
) -> list[dict]:
    """`score_candidate` of every candidate, best first: most boxes covered, then fewer anchors per location,
    then higher mean best IoU (then the candidates' order)."""
    if not 0.0 < fg_iou <= 1.0:
        raise ValueError(f"the foreground IoU threshold must be in (0, 1], got {fg_iou}")
    scored = [score_candidate(boxes, size, c, fg_iou) for c in candidates]
    order = sorted(
        range(len(scored)),
        key=lambda i: (
            -scored[i]["covered_boxes"],
            scored[i]["anchors_per_location"],
            -scored[i]["mean_best_iou"],
            i,
        ),
    )
    return [scored[i] for i in order]
